import cv2
import numpy as np
import pytest

from vistream.models.tracking.aggregation import (
    AggregationParams,
    AggregationTracker,
    GlobalMotion,
)
from vistream.models.data import SyntheticObject, composite, load_background

BG = None


def background() -> np.ndarray:
    global BG
    if BG is None:
        BG = cv2.resize(load_background("coffee"), (1000, 800), interpolation=cv2.INTER_CUBIC)
    return BG


def scene(origin, box, color=(40, 220, 60), shape="disc", draw=True, noise=3.0, seed=0):
    """640x480 view of a big photo at camera ``origin`` with a small target at ``box``."""
    ox, oy = origin
    frame = background()[oy:oy + 480, ox:ox + 640].astype(np.float32)
    if draw:
        obj = SyntheticObject(0, shape, color, int(box[2]), int(box[3]))
        composite(frame, obj, np.asarray(box, float))
    frame += np.random.default_rng(seed).normal(0, noise, frame.shape).astype(np.float32)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def jump_sequence(n=30, jump_at=12, jump=(70, -55), size=12, start=(300.0, 220.0)):
    """A 12 px target moving 1.5 px/frame; at ``jump_at`` the camera jumps by ``jump``
    (everything in view moves by -jump). Returns frames and ground-truth boxes."""
    frames, boxes = [], []
    cam = np.array([180, 160])
    pos = np.array(start, float)
    for t in range(n):
        if t == jump_at:
            cam = cam + np.asarray(jump)
            pos = pos - np.asarray(jump)
        pos = pos + [1.5, 0.6]
        box = (pos[0], pos[1], size, size)
        frames.append(scene(cam, box, seed=t))
        boxes.append(box)
    return frames, np.asarray(boxes)


def center_errors(tracker, frames, boxes):
    tracker.init(frames[0], boxes[0])
    errs, outs = [], []
    for f, b in zip(frames[1:], boxes[1:]):
        o = tracker.update(f)
        outs.append(o)
        c = np.array(o.box[:2]) + np.array(o.box[2:]) / 2
        errs.append(float(np.hypot(*(c - (b[:2] + b[2:] / 2)))))
    return np.asarray(errs), outs


def test_global_motion_measures_camera_shift():
    g = GlobalMotion()
    bg = background()
    g.estimate(bg[100:580, 100:740])
    for dx, dy in [(3, -2), (60, 45), (-110, 30)]:
        g.reset()
        g.estimate(bg[200:680, 200:840])
        m = g.estimate(bg[200 + dy:680 + dy, 200 + dx:840 + dx])
        # the camera moved by (dx, dy): the content moved by (-dx, -dy)
        assert abs(m.dx + dx) < 1.0 and abs(m.dy + dy) < 1.0 and m.response > 0.1


def test_tracks_through_a_sudden_camera_jump():
    frames, boxes = jump_sequence()
    errs, outs = center_errors(AggregationTracker(), frames, boxes)
    assert errs.max() < 4.0, errs.round(1)
    assert not any(o.lost for o in outs)
    assert min(o.score for o in outs) > 0.6


def test_recovers_after_a_jump_by_redetection_without_motion_estimate():
    # Without the camera-motion estimate the 90 px jump throws the target out of the search
    # window: the tracker must notice (low score / lost) and re-detect it in the frame.
    frames, boxes = jump_sequence(jump=(90, 40))
    errs, outs = center_errors(AggregationTracker(motion=False), frames, boxes)
    after = errs[12:]  # update index 11 is frame 12, the jump
    assert errs[:10].max() < 4.0
    assert after[2:].max() < 4.0, after.round(1)  # back on target within two frames
    assert not outs[-1].lost and outs[-1].score > 0.6


def test_confidence_drops_and_lost_is_flagged_when_the_target_vanishes():
    frames, boxes = jump_sequence(n=20, jump_at=99)
    tr = AggregationTracker()
    tr.init(frames[0], boxes[0])
    for f in frames[1:10]:
        o = tr.update(f)
    assert not o.lost and o.score > 0.7
    scores = []
    for t in range(10, 20):  # same scene, target removed
        o = tr.update(scene((180, 160), boxes[t], draw=False, seed=100 + t))
        scores.append(o.score)
    assert o.lost and max(scores[2:]) < tr.p.lost_threshold


def test_no_invented_match_for_a_target_out_of_view():
    # the camera swings 150 px right: the target, near the left edge, leaves the frame
    frames, boxes = jump_sequence(n=16, jump_at=8, jump=(150, 0), start=(60.0, 220.0))
    assert (boxes[8:, 0] + boxes[8:, 2] < 0).all()
    tr = AggregationTracker()
    tr.init(frames[0], boxes[0])
    outs = [tr.update(f) for f in frames[1:]]
    assert not any(o.lost for o in outs[:7])
    assert all(o.lost for o in outs[7:])
    assert all(o.box[0] + o.box[2] < 0 for o in outs[7:])  # follows the camera out of view


def test_large_target_uses_a_working_scale_and_scale_search_runs():
    frames, boxes = [], []
    for t in range(12):
        box = (200 + 2 * t, 150 + t, 80, 60)
        frames.append(scene((150, 150), box, shape="square", color=(20, 20, 230), seed=t))
        boxes.append(box)
    tr = AggregationTracker(AggregationParams(scale_step=1.05))
    errs, outs = center_errors(tr, frames, np.asarray(boxes, float))
    assert tr.k > 1 and errs.max() < 6.0
    assert 0.8 < outs[-1].box[2] / 80 < 1.25


def test_rejects_bad_input():
    tr = AggregationTracker()
    with pytest.raises(RuntimeError):
        tr.update(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        tr.init(np.zeros((48, 64, 3), np.uint8), (1, 1, 0, 5))
    with pytest.raises(ValueError):
        tr.init(np.zeros((48, 64), np.uint8), (1, 1, 5, 5))
