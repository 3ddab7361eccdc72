import numpy as np
import pytest

from vistream.models.data.blur import (
    COLOURS,
    LEVELS,
    VOCAB,
    blur_image,
    convolve,
    decode_caption,
    encode_caption,
    eval_set,
    gopro_pairs,
    load_pair,
    make_sample,
    make_scene,
    motion_kernel,
)


@pytest.mark.parametrize("level", ["severe", "mild"])
def test_motion_kernels_are_normalised_and_non_negative(level):
    rng = np.random.default_rng(0)
    lo, hi = LEVELS[level]["ksize"]
    for _ in range(50):
        k = motion_kernel(rng, level)
        assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert lo <= k.shape[0] <= hi
        assert (k >= 0).all() and abs(float(k.sum()) - 1.0) < 1e-5
        # a camera path, not a delta: the mass is spread over many pixels
        assert (k > 0).sum() >= 4


def test_convolution_is_a_true_convolution():
    img = np.zeros((21, 21, 3), np.float32)
    img[10, 10] = 1
    k = np.zeros((5, 5), np.float32)
    k[0, 4] = 1  # convolution moves an impulse by (+(0-2), +(4-2)) = up 2, right 2
    out = convolve(img, k)
    assert out[8, 12, 0] == pytest.approx(1.0)


def test_blur_lowers_psnr_severe_more_than_mild():
    from vistream.models.deblur.evaluate import psnr

    sev = np.mean([psnr(s.sharp, s.blurred) for s in eval_set("severe", 8)])
    mild = np.mean([psnr(s.sharp, s.blurred) for s in eval_set("mild", 8)])
    assert sev < mild - 4 and sev < 25


def test_samples_are_seeded_and_captions_describe_the_objects():
    a, b = make_sample(42), make_sample(42)
    assert np.array_equal(a.blurred, b.blurred) and a.caption == b.caption
    assert not np.array_equal(make_sample(43).sharp, a.sharp)
    for seed in range(20):
        s = make_sample(seed)
        assert 1 <= len(s.objects) <= 3
        # one 5-word phrase per object, relations between neighbours
        assert len(s.caption) == 5 * len(s.objects) + len(s.objects) - 1
        colours = sorted(o.colour for o in s.objects)
        assert sorted(w for w in s.caption if w in {o.colour for o in s.objects}) == colours
        assert decode_caption(encode_caption(s.caption)) == s.caption
        assert all(w in VOCAB for w in s.caption)
        # the object pixels carry their palette colour in the sharp image
        o = s.objects[0]
        assert s.sharp[int(o.cy), int(o.cx)] == pytest.approx(np.array(COLOURS[o.colour]), abs=0.02)


def test_augmentation_turns_the_photo_and_leaves_held_out_scenes_alone(monkeypatch):
    import vistream.models.data.blur as data

    # a photo that brightens left to right and top to bottom shows which way a crop was turned
    ramp = np.linspace(0, 1, 400, dtype=np.float32)
    monkeypatch.setattr(data, "photo", lambda name: np.stack([ramp[None, :] + 0 * ramp[:, None],
                                                              ramp[:, None] + 0 * ramp[None, :],
                                                              np.zeros((400, 400), np.float32)], -1))

    def orientation(img):
        return (bool(img[:, -8:, 0].mean() > img[:, :8, 0].mean()),
                bool(img[-8:, :, 1].mean() > img[:8, :, 1].mean()),
                bool(abs(img[:, -8:, 0].mean() - img[:, :8, 0].mean()) > 0.1))  # red runs along x

    plain = {orientation(make_scene(np.random.default_rng(s), 64, 64)[0]) for s in range(12)}
    turned = {orientation(make_scene(np.random.default_rng(s), 64, 64, augment=True)[0]) for s in range(40)}
    assert plain == {(True, True, True)}
    assert len(turned) >= 6  # flips both ways, transposed or not



def test_held_out_scenes_are_those_scored_before_augmentation_existed():
    # captions and object centres of the first held-out scenes, read from the code before
    # augmentation was added (commit 41e9a2a): unaugmented scenes draw nothing new
    before = {
        "severe": [("big black square top left above small yellow circle bottom centre", [55.65, 19.28]),
                   ("small green circle bottom centre", [59.9])],
        "mild": [("small black triangle top left left_of big red triangle top centre above big white "
                  "triangle middle right", [50.02, 23.1, 75.32]),
                 ("small red circle middle left left_of big red triangle bottom centre below small red "
                  "square middle centre", [12.81, 40.2, 44.07])],
    }
    for level, scenes in before.items():
        now = [(" ".join(s.caption), [round(o.cx, 2) for o in s.objects]) for s in eval_set(level, 2)]
        assert now == scenes


def test_unseen_photo_set_uses_photos_training_never_sees():
    from vistream.models.data.blur import EVAL_SETS, PHOTOS, UNSEEN_PHOTOS

    level, photos = EVAL_SETS["severe-unseen"]
    assert level == "severe" and set(photos) == set(UNSEEN_PHOTOS) and not set(photos) & set(PHOTOS)
    unseen, seen = eval_set("severe-unseen", 3), eval_set("severe", 3)
    assert all(s.sharp.shape == (96, 96, 3) and s.caption for s in unseen)
    assert not any(np.array_equal(u.sharp, s.sharp) for u, s in zip(unseen, seen))
    with pytest.raises(ValueError, match="unknown evaluation set"):
        eval_set("blurry", 1)


def test_blur_adds_noise_of_the_level():
    rng = np.random.default_rng(1)
    img = np.full((64, 64, 3), 0.5, np.float32)
    out, k, sigma = blur_image(img, rng, "severe")
    assert LEVELS["severe"]["noise"][0] <= sigma <= LEVELS["severe"]["noise"][1]
    assert abs(float(out.std()) - sigma) < 0.3 * sigma


def test_gopro_layout_loader(tmp_path):
    import cv2

    for seq in ("GOPR0001", "GOPR0002"):
        for sub in ("blur", "sharp", "blur_gamma"):
            (tmp_path / seq / sub).mkdir(parents=True)
        for i in range(2):
            img = np.full((40, 60, 3), 40 * i, np.uint8)
            cv2.imwrite(str(tmp_path / seq / "blur" / f"{i:06d}.png"), img)
            cv2.imwrite(str(tmp_path / seq / "sharp" / f"{i:06d}.png"), img + 5)
    cv2.imwrite(str(tmp_path / "GOPR0001" / "blur" / "unpaired.png"), img)
    pairs = gopro_pairs(tmp_path)
    assert len(pairs) == 4 and all(b.name == s.name for b, s in pairs)
    assert all(b.parent.name == "blur" for b, _ in pairs)
    blurred, sharp = load_pair(*pairs[1], max_side=30)
    assert blurred.shape == (20, 30, 3) and sharp.dtype == np.float32
    with pytest.raises(FileNotFoundError):
        gopro_pairs(tmp_path / "GOPR0001" / "blur")
