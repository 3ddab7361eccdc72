"""The demo's classed clip: digit sprites of held-out test digits, ground truth, sharp frames."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.models.data.classed import ClassedSpec, render_classed
from vistream.models.data.images import _digits_raw, split_indices

SPEC = ClassedSpec(seed=3, n_frames=24, width=160, height=120, n_classes=3, per_class=2)


@pytest.fixture(scope="module")
def clip():
    return render_classed(SPEC)


def test_seeded_and_shaped(clip):
    again = render_classed(SPEC)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames))
    assert len(clip.frames) == 24 and clip.frames[0].shape == (120, 160, 3)
    assert clip.boxes.shape == (24, 6, 4) and clip.present.shape == (24, 6)
    assert clip.ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert sorted(np.unique(clip.classes, return_counts=True)[1].tolist()) == [2, 2, 2]
    assert render_classed(ClassedSpec(seed=4, n_frames=24, width=160, height=120)
                          ).classes.tolist() != clip.classes.tolist()


def test_sprites_are_held_out_test_digits_of_their_class(clip):
    images, labels = _digits_raw()
    test = split_indices(labels)["test"]
    for sprite, c in zip(clip.sprites, clip.classes):
        hit = [i for i in test if np.array_equal(images[i], sprite)]
        assert hit and labels[hit[0]] == c
    assert len({s.tobytes() for s in clip.sprites}) == len(clip.sprites)


def test_ground_truth_boxes_lie_in_the_frame_and_cover_ink(clip):
    b = clip.boxes[clip.present]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 0] + b[:, 2] <= 160 + 1e-6).all() and (b[:, 1] + b[:, 3] <= 120 + 1e-6).all()
    assert (b[:, 2] >= 1).all() and (b[:, 3] >= 1).all()
    ids, boxes = clip.ground_truth(5)
    assert len(ids) == clip.present[5].sum() and boxes.shape == (len(ids), 4)


def test_sharp_frames_are_the_same_view_without_blur_and_noise(clip):
    sharp = clip.sharp(6)
    assert sharp.shape == clip.frames[6].shape and np.array_equal(sharp, clip.sharp(6))
    diff = np.abs(sharp.astype(int) - clip.frames[6].astype(int))
    assert 0 < diff.mean() < 40  # noise and blur, not another picture


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="n_classes"):
        ClassedSpec(n_classes=11)
    with pytest.raises(ValueError, match="per_class"):
        ClassedSpec(per_class=0)
    with pytest.raises(ValueError, match="24 frames"):
        ClassedSpec(n_frames=10)
