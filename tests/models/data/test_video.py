"""Tests for the seeded sample videos (models/data/scene.py, video.py): determinism, exact ground
truth, camera motion, writers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from vistream.models.data import scene
from vistream.models.data import video as video_mod
from vistream.models.data.scene import BACKGROUNDS
from vistream.models.data import (
    SceneSpec,
    generate,
    object_alpha,
    read_ground_truth,
    write_ground_truth,
    write_image_folder,
    write_video,
)

W, H, N = 160, 90, 10


def tiny(**kw) -> SceneSpec:
    base = {"width": W, "height": H, "n_frames": N, "n_objects": 3, "object_size": (8, 14),
            "background": "coffee", "pan_speed": 0.5, "noise_sigma": 2.0, "seed": 7}
    base.update(kw)
    return SceneSpec(**base)


def footprint(box: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel rows/cols [r0, r1) x [c0, c1) a box can touch."""
    x, y, w, h = box
    return math.floor(y), math.ceil(y + h), math.floor(x), math.ceil(x + w)


def test_shapes_and_types() -> None:
    video = generate(tiny())
    assert len(video) == video.n_frames == N
    assert video.size == (W, H) and video.fps == 25.0
    for frame in video.frames:
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    assert video.boxes.shape == (N, 3, 4)
    assert video.visible.shape == (N, 3) and video.visible.dtype == bool
    assert video.camera.shape == (N, 2)
    assert [o.id for o in video.objects] == [0, 1, 2]
    # small objects: well under 1 % of the default 640x360 frame
    assert 14 * 14 < 0.01 * 640 * 360


def test_deterministic_same_seed() -> None:
    spec = tiny(shake_frames=(4,), shapes=("disc", "square", "blob"))
    a, b = generate(spec), generate(spec)
    assert all(np.array_equal(fa, fb) for fa, fb in zip(a.frames, b.frames))
    assert np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.visible, b.visible)
    assert a.objects == b.objects
    c = generate(replace(spec, seed=8))
    assert not np.array_equal(a.boxes, c.boxes)
    assert not all(np.array_equal(fa, fc) for fa, fc in zip(a.frames, c.frames))


def test_first_objects_do_not_depend_on_object_count() -> None:
    a = generate(tiny(n_objects=2))
    b = generate(tiny(n_objects=4))
    assert np.array_equal(a.boxes, b.boxes[:, :2])
    assert a.objects == b.objects[:2]


@pytest.mark.parametrize("shape", ["disc", "square", "blob"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ground_truth_matches_drawn_pixels(shape: str, seed: int) -> None:
    spec = tiny(shapes=(shape,), noise_sigma=0.0, seed=seed, n_frames=8, shake_frames=(5,),
                shake_px=20)
    video = generate(spec)
    background = generate(replace(spec, n_objects=0))
    assert np.array_equal(background.camera, video.camera)
    for t in range(spec.n_frames):
        changed = np.any(video.frames[t] != background.frames[t], axis=2)
        allowed = np.zeros_like(changed)
        for i in np.flatnonzero(video.visible[t]):
            r0, r1, c0, c1 = footprint(video.boxes[t, i])
            allowed[max(r0, 0):r1, max(c0, 0):c1] = True
        # nothing is drawn outside the ground-truth boxes
        assert not np.any(changed & ~allowed), f"frame {t}: pixels changed outside boxes"

        for i, obj in enumerate(video.objects):
            box = video.boxes[t, i]
            x, y, w, h = box
            inside = x >= 0 and y >= 0 and x + w <= W and y + h <= H
            if not inside:
                continue
            r0, r1, c0, c1 = footprint(box)
            others = [footprint(video.boxes[t, j]) for j in range(len(video.objects)) if j != i]
            if any(not (b[1] <= r0 or b[0] >= r1 or b[3] <= c0 or b[2] >= c1) for b in others):
                continue  # overlapping another object: skip the exact checks
            # the pixel at the box centre has exactly the object's colour
            cy, cx = int(y + h / 2), int(x + w / 2)
            assert tuple(int(v) for v in video.frames[t][cy, cx]) == obj.color
            # the drawn extent reaches within one pixel of every box edge
            rows, cols = np.nonzero(changed[r0:r1, c0:c1])
            assert rows.min() <= 1 and rows.max() >= (r1 - r0) - 2
            assert cols.min() <= 1 and cols.max() >= (c1 - c0) - 2


@pytest.mark.parametrize("shape", ["disc", "square", "blob"])
def test_object_alpha_support_fits_box(shape: str) -> None:
    obj = scene.SyntheticObject(id=0, shape=shape, color=(0, 0, 255), width=11, height=9)
    for box in [(3.0, 4.0, 11, 9), (3.3, 4.7, 11, 9), (10.9, 0.2, 11, 9)]:
        alpha, r0, c0 = object_alpha(obj, box)
        x, y, w, h = box
        assert (r0, c0) == (math.floor(y), math.floor(x))
        assert alpha.shape == (math.ceil(y + h) - r0, math.ceil(x + w) - c0)
        assert alpha.min() >= 0 and alpha.max() == pytest.approx(1.0)
        rows, cols = np.nonzero(alpha > 0)
        assert rows.min() <= 1 and rows.max() >= alpha.shape[0] - 2
        assert cols.min() <= 1 and cols.max() >= alpha.shape[1] - 2
    if shape == "square":  # exact area coverage
        alpha, _, _ = object_alpha(obj, (3.25, 4.5, 11, 9))
        assert alpha.sum() == pytest.approx(11 * 9)
        assert alpha[0, 0] == pytest.approx(0.75 * 0.5)


def test_visible_flag_matches_box_overlap() -> None:
    video = generate(tiny(n_objects=5, shake_frames=(3, 6), shake_px=60, n_frames=12))
    x, y, w, h = np.moveaxis(video.boxes, -1, 0)
    expected = (x < W) & (x + w > 0) & (y < H) & (y + h > 0)
    assert np.array_equal(video.visible, expected)
    # without shake, objects bounce and always stay fully inside the frame
    calm = generate(tiny(n_objects=5, n_frames=60, object_speed=(3.0, 4.0)))
    x, y, w, h = np.moveaxis(calm.boxes, -1, 0)
    assert calm.visible.all()
    assert (x >= -1e-9).all() and (y >= -1e-9).all()
    assert (x + w <= W + 1e-9).all() and (y + h <= H + 1e-9).all()


def test_shake_moves_background_by_exact_amount() -> None:
    spec = tiny(n_objects=0, noise_sigma=0.0, pan_speed=0.0, shake_frames=(5,), shake_px=50,
                shake_angle=0.0)
    video = generate(spec)
    f = video.frames
    assert np.array_equal(f[3], f[4])  # static camera between events
    assert np.array_equal(video.camera[5] - video.camera[4], [50.0, 0.0])
    # camera moved right by 50 px, so the content moved left by 50 px
    assert np.array_equal(f[5][:, : W - 50], f[4][:, 50:])
    assert not np.array_equal(f[5], f[4])
    assert np.array_equal(f[6], f[5])  # the jump persists

    down = generate(replace(spec, shake_angle=90.0, shake_px=20))
    assert np.array_equal(down.camera[5] - down.camera[4], [0.0, 20.0])
    assert np.array_equal(down.frames[5][: H - 20], down.frames[4][20:])


def test_shake_random_direction_has_given_length() -> None:
    spec = tiny(n_objects=0, noise_sigma=0.0, pan_speed=0.0, shake_frames=(2, 6), shake_px=30,
                width=320, height=180, background="astronaut")
    video = generate(spec)
    for k in (2, 6):
        jump = video.camera[k] - video.camera[k - 1]
        assert np.hypot(*jump) == pytest.approx(30.0)
        a = np.float32(cv2.cvtColor(video.frames[k - 1], cv2.COLOR_BGR2GRAY))
        b = np.float32(cv2.cvtColor(video.frames[k], cv2.COLOR_BGR2GRAY))
        (dx, dy), _ = cv2.phaseCorrelate(a, b)
        assert dx == pytest.approx(-jump[0], abs=0.75) and dy == pytest.approx(-jump[1], abs=0.75)


def test_objects_move_with_shake() -> None:
    spec = tiny(n_objects=4, shake_frames=(5,), shake_px=40, shake_angle=180.0, pan_speed=0.0,
                object_speed=(1.0, 2.0))
    video = generate(spec)
    jump = video.camera[5] - video.camera[4]
    assert np.allclose(jump, [-40.0, 0.0])
    step = video.boxes[5, :, :2] - video.boxes[4, :, :2]
    # displacement = own motion (<= 2 px, at most doubled by a bounce) minus the camera jump
    assert np.all(np.hypot(*(step + jump).T) <= 2 * 2.0 + 1e-9)


def test_pan_shifts_background_each_frame() -> None:
    video = generate(tiny(n_objects=0, noise_sigma=0.0, pan_speed=2.0, pan_angle=0.0))
    for t in range(1, N):
        assert np.array_equal(video.camera[t], [2.0 * t, 0.0])
        assert np.array_equal(video.frames[t][:, :-2], video.frames[t - 1][:, 2:])
    # fractional pans are rendered too (bilinear), still deterministic
    frac = tiny(n_objects=0, pan_speed=0.3, pan_angle=30.0)
    assert all(np.array_equal(a, b) for a, b in zip(generate(frac).frames, generate(frac).frames))


def test_noise_only_changes_with_sigma() -> None:
    clean = generate(tiny(noise_sigma=0.0))
    noisy = generate(tiny(noise_sigma=3.0))
    diff = np.abs(noisy.frames[0].astype(int) - clean.frames[0].astype(int))
    assert 1.0 < diff.mean() < 4.0
    assert np.array_equal(clean.boxes, noisy.boxes)


@pytest.mark.parametrize("name", BACKGROUNDS)
def test_bundled_backgrounds_load_offline(name: str) -> None:
    img = scene.load_background(name)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert min(img.shape[:2]) >= 100


def test_background_from_image_path(tmp_path) -> None:
    path = tmp_path / "bg.png"
    cv2.imwrite(str(path), np.full((50, 80, 3), (10, 20, 30), np.uint8))
    video = generate(tiny(background=str(path), n_objects=0, noise_sigma=0.0))
    assert tuple(video.frames[0][0, 0]) == (10, 20, 30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"background": "no-such-photo"},
        {"n_frames": 0},
        {"object_size": (10, 5)},
        {"object_size": (8, 60)},
        {"shake_frames": (0,)},
        {"shake_frames": (N,)},
        {"shapes": ("triangle",)},
        {"noise_sigma": -1.0},
        {"fps": 0.0},
    ],
)
def test_invalid_specs_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        tiny(**kwargs)


def test_spec_defaults() -> None:
    spec = SceneSpec(shake_frames=[30, 10])
    assert (spec.width, spec.height, spec.n_frames, spec.fps, spec.n_objects) == (
        640, 360, 120, 25.0, 3)
    assert spec.shake_frames == (10, 30)
    assert json.loads(json.dumps(spec.to_dict()))["shake_frames"] == [10, 30]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_video_reads_back(tmp_path, suffix: str) -> None:
    video = generate(tiny())
    out = write_video(video, tmp_path / "sub" / f"clip{suffix}")
    assert out.exists() and out.stat().st_size > 0
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    assert len(frames) == N and frames[0].shape == (H, W, 3)
    # lossy codecs, but the content is close
    assert np.abs(frames[3].astype(int) - video.frames[3].astype(int)).mean() < 12


def test_write_video_falls_back_to_mjpg(tmp_path, monkeypatch) -> None:
    real_writer = cv2.VideoWriter
    mp4v = cv2.VideoWriter_fourcc(*"mp4v")

    def fake_writer(path, fourcc, fps, size):
        if fourcc == mp4v:
            return real_writer()  # never opened
        return real_writer(path, fourcc, fps, size)

    monkeypatch.setattr(cv2, "VideoWriter", fake_writer)
    out = write_video(generate(tiny()), tmp_path / "clip.mp4")
    assert out == tmp_path / "clip.avi"
    assert not (tmp_path / "clip.mp4").exists()
    assert video_mod._count_frames(out) == N


def test_write_video_rejects_unknown_extension(tmp_path) -> None:
    with pytest.raises(ValueError, match="extension"):
        write_video(generate(tiny(n_frames=2)), tmp_path / "clip.gif")


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_ground_truth_round_trip(tmp_path, suffix: str) -> None:
    video = generate(tiny(shake_frames=(3,), shake_px=70))
    path = write_ground_truth(video, tmp_path / f"gt{suffix}")
    boxes, visible = read_ground_truth(path)
    assert np.array_equal(boxes, video.boxes)
    assert np.array_equal(visible, video.visible)
    if suffix == ".json":
        doc = json.loads(path.read_text())
        assert doc["width"] == W and doc["n_frames"] == N
        assert doc["objects"][0]["color_bgr"] == list(video.objects[0].color)
        assert doc["spec"]["seed"] == 7


def test_write_image_folder(tmp_path) -> None:
    video = generate(tiny(n_frames=3))
    paths = write_image_folder(video, tmp_path / "frames")
    assert [p.name for p in paths] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    for p, frame in zip(paths, video.frames):
        assert np.array_equal(cv2.imread(str(p)), frame)  # PNG is lossless
    jpgs = write_image_folder(video, tmp_path / "jpg", ext="jpg", prefix="f", digits=3)
    assert jpgs[2].name == "f002.jpg" and cv2.imread(str(jpgs[2])).shape == (H, W, 3)


def test_cli_writes_outputs(tmp_path, capsys) -> None:
    rc = video_mod.main([
        "--out", str(tmp_path), "--width", "96", "--height", "64", "--frames", "4",
        "--size", "6", "10", "--shake", "2", "--shake-px", "10", "--format", "avi", "--images",
    ])
    assert rc == 0
    assert video_mod._count_frames(tmp_path / "synthetic.avi") == 4
    boxes, _ = read_ground_truth(tmp_path / "synthetic_gt.json")
    assert boxes.shape == (4, 3, 4)
    assert len(list((tmp_path / "synthetic_frames").glob("*.png"))) == 4
    assert "ground truth" in capsys.readouterr().out
