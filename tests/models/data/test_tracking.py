import math

import numpy as np
import pytest

from vistream.models.data.tracking import (
    ATTRIBUTES,
    TrackingSpec,
    render,
    suite_specs,
)


def footprint_mask(shape, box, pad=0):
    x, y, w, h = box
    m = np.zeros(shape[:2], bool)
    r0, r1 = max(0, math.floor(y) - pad), min(shape[0], math.ceil(y + h) + pad)
    c0, c1 = max(0, math.floor(x) - pad), min(shape[1], math.ceil(x + w) + pad)
    if r0 < r1 and c0 < c1:
        m[r0:r1, c0:c1] = True
    return m


def boxes_touch(a, b, pad=2):
    return (a[0] - pad < b[0] + b[2] and b[0] - pad < a[0] + a[2]
            and a[1] - pad < b[1] + b[3] and b[1] - pad < a[1] + a[3])


def test_ground_truth_is_what_is_drawn():
    # occlusion bars and an illumination ramp on, blur and shake off: every pixel the
    # targets change must lie inside a ground-truth box footprint, and each visible,
    # unoccluded target must be drawn out to the edges of its box.
    spec = TrackingSpec(name="gt", seed=3, n_frames=24, n_targets=4, occlusion=True,
                        illumination=True, noise_sigma=4.0, shake=0, blur=False,
                        styles=("vivid", "bright", "twotone"))
    with_t = render(spec)
    without = render(spec, targets=False)
    assert with_t.frames[0].shape == (480, 640, 3)
    assert with_t.boxes.shape == (24, 4, 4)
    for t in range(0, 24, 2):
        diff = np.abs(with_t.frames[t].astype(int) - without.frames[t].astype(int)).sum(axis=2)
        inside = np.zeros(diff.shape, bool)
        for i in range(4):
            if with_t.visible[t, i]:
                inside |= footprint_mask(diff.shape, with_t.boxes[t, i])
        assert diff[~inside].max(initial=0) == 0, f"frame {t}: target pixels outside the boxes"
        for i in range(4):
            box = with_t.boxes[t, i]
            others = [j for j in range(4) if j != i and with_t.visible[t, j]
                      and boxes_touch(with_t.boxes[t, j], box)]
            if not with_t.visible[t, i] or others or with_t.occlusion[t, i] > 0:
                continue
            x, y, w, h = box
            if x < 0 or y < 0 or x + w > 640 or y + h > 480:
                continue
            m = footprint_mask(diff.shape, box)
            assert (diff * m).sum() > 0, f"target {i} not drawn at frame {t}"
            rows, cols = np.nonzero((diff > 0) & m)
            # the drawn extent reaches (within a pixel or two: soft blob edges, colours
            # that happen to equal the background) each edge of the box footprint
            tol = 2 if with_t.looks[i].shape == "blob" else 1
            assert rows.min() <= math.floor(y) + tol and rows.max() >= math.ceil(y + h) - 1 - tol
            assert cols.min() <= math.floor(x) + tol and cols.max() >= math.ceil(x + w) - 1 - tol


def test_shake_blur_stay_near_boxes_and_jumps_are_30_to_120_px():
    spec = TrackingSpec(name="sh", seed=5, n_frames=36, n_targets=2, shake=2, blur=True,
                        noise_sigma=2.0)
    a = render(spec)
    b = render(spec, targets=False)
    assert a.shake_frames
    steps = np.linalg.norm(np.diff(a.camera, axis=0), axis=1)
    jumps = steps[np.asarray(a.shake_frames) - 1]
    assert ((jumps >= 0.8 * 30 - 1) & (jumps <= 120 + 2)).all(), jumps
    assert np.median(np.delete(steps, np.asarray(a.shake_frames) - 1)) <= 1.01
    for t in range(0, 36, 2):
        diff = np.abs(a.frames[t].astype(int) - b.frames[t].astype(int)).sum(axis=2)
        inside = np.zeros(diff.shape, bool)
        for i in range(2):
            if a.visible[t, i]:
                inside |= footprint_mask(diff.shape, a.boxes[t, i], pad=9)  # blur kernels
        assert diff[~inside].max(initial=0) <= 3, t
    assert all("shake" in s and "blur" in s for s in a.attributes)


def test_render_is_deterministic_and_attributes_are_known():
    spec = suite_specs(3, 20, seed=1)[1]
    a, b = render(spec), render(spec)
    assert all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
    assert np.array_equal(a.boxes, b.boxes)
    for attrs, look in zip(a.attributes, a.looks):
        assert attrs <= set(ATTRIBUTES)
        assert 6 <= look.width <= 24 and 6 <= look.height <= 24
        assert ("tiny" in attrs) == (max(look.width, look.height) <= 10)
    specs = suite_specs(6, 20, seed=1)
    assert [s.shake > 0 for s in specs] == [True, False] * 3
    assert all(1 <= s.n_targets <= 4 for s in specs)


def test_spec_validation():
    with pytest.raises(ValueError):
        TrackingSpec(n_targets=5)
    with pytest.raises(ValueError):
        TrackingSpec(styles=("neon",))
    with pytest.raises(ValueError):
        TrackingSpec(background="no-such-photo")
