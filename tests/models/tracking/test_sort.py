"""The MOG2 + SORT baseline: IoU, the Kalman filter and the assignment on scripted boxes, and
the detector on a moving square (with and without camera motion)."""

import cv2
import numpy as np

from vistream.models.data.scene import load_background
from vistream.models.tracking.sort import KalmanBox, MogDetector, MogSortParams, Sort, iou_matrix


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [100, 100, 5, 5]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 1, 1]], float)
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    assert m[0, 0] == 1.0 and abs(m[0, 1] - 50 / 150) < 1e-12 and m[1].max() == 0.0
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_kalman_learns_constant_velocity():
    k = KalmanBox(np.array([10.0, 20.0, 8.0, 8.0]))
    for t in range(1, 15):
        k.predict()
        k.update(np.array([10.0 + 3 * t, 20.0 - 1 * t, 8.0, 8.0]))
    pred = k.predict()  # frame 15
    assert np.allclose(pred[:2], [55.0, 5.0], atol=0.5)
    assert np.allclose(pred[2:], [8.0, 8.0], atol=0.2)


def _scripted(t):
    """Two 10 px boxes moving right at 3 px/frame on two rows, and one moving left."""
    return np.array([[10.0 + 3 * t, 20.0, 10, 10], [10.0 + 3 * t, 80.0, 10, 10],
                     [200.0 - 3 * t, 140.0, 10, 10]])


def test_sort_keeps_ids_whatever_the_detection_order():
    rng = np.random.default_rng(0)
    sort = Sort(max_age=3, min_hits=3, iou_threshold=0.3)
    seen = {}
    for t in range(25):
        dets = _scripted(t)
        order = rng.permutation(3)
        boxes, ids = sort.update(dets[order])
        assert len(ids) == 3  # reported from frame 1 (frame_count <= min_hits), then by hits
        for b, i in zip(boxes, ids):
            row = int(np.argmin(np.abs(dets[:, 1] - (b[1] + b[3] / 2 - 5))))
            seen.setdefault(row, set()).add(int(i))
    assert all(len(v) == 1 for v in seen.values()) and len(set().union(*seen.values())) == 3


def test_sort_min_hits_max_age_and_a_new_id_after_a_long_gap():
    sort = Sort(max_age=2, min_hits=3, iou_threshold=0.3)
    box = lambda t: np.array([[10.0 + 2 * t, 10.0, 12, 12]])  # noqa: E731
    for t in range(5):  # the first min_hits frames report at once
        _, ids = sort.update(box(t))
        assert list(ids) == [1]
    for _ in range(5, 7):  # 2 missed frames (<= max_age): nothing reported, track kept
        assert len(sort.update(np.zeros((0, 4)))[1]) == 0
    _, ids = sort.update(box(7))  # coasted by its velocity, matched again: same id, but
    assert len(ids) == 0  # its hit streak restarts, so min_hits frames pass before it shows
    for t in range(8, 10):
        _, ids = sort.update(box(t))
    assert list(ids) == [1]
    for _ in range(4):  # a gap longer than max_age ends it
        sort.update(np.zeros((0, 4)))
    assert sort.tracks == []
    for t in range(20, 23):
        _, ids = sort.update(box(t))
    assert list(ids) == [2]


def _scene(t, shift=(0, 0)):
    """A photo, a red 10 px square moving 4 px/frame in it, the camera moved by ``shift``
    (rows, columns): the square moves with the scene."""
    bg = cv2.resize(load_background("coffee"), (640, 480), interpolation=cv2.INTER_AREA)
    x, y = 40 + 4 * t, 100
    bg[y:y + 10, x:x + 10] = (0, 0, 255)
    frame = np.roll(bg, shift, axis=(0, 1)).copy()
    return frame, np.array([x + shift[1], y + shift[0], 10, 10], float)


def test_detector_finds_the_moving_square_with_and_without_camera_motion():
    for compensate in (False, True):
        det = MogDetector(MogSortParams(compensate=compensate, history=20, warmup=2))
        hits = 0
        for t in range(25):
            shift = (t // 5 * 3, t // 5 * 2) if compensate else (0, 0)  # camera jumps
            frame, gt = _scene(t, shift)
            boxes = det.detect(frame)
            if t >= 5 and len(boxes) and iou_matrix(gt[None], boxes).max() > 0.3:
                hits += 1
            if t >= 5 and t % 5 > 1:  # a jump frame and the next may flood (registration error)
                assert len(boxes) <= 3, (compensate, t, boxes)
        assert hits >= 15, (compensate, hits)


def test_mogsort_keeps_one_id_through_camera_jumps_when_compensating():
    from vistream.models.tracking.sort import MogSort

    tracker = MogSort(MogSortParams(compensate=True, history=20, warmup=2, min_hits=2))
    ids_seen = set()
    for t in range(30):
        frame, gt = _scene(t, (t // 6 * 9, t // 6 * -7))  # jumps of (-7, 9) px every 6 frames
        boxes, ids = tracker.step(frame)
        if len(ids):
            best = iou_matrix(gt[None], boxes)[0]
            if best.max() > 0.3:
                ids_seen.add(int(ids[int(best.argmax())]))
    assert len(ids_seen) == 1


def test_replayed_detections_track_as_a_live_run():
    """The tuning grid replays cached detections through MogSort.track: same output."""
    from vistream.models.data.mot import MotSpec, render
    from vistream.models.tracking.sort import MogSort

    seq = render(MotSpec(seed=5, family="shake", n_frames=30, width=320, height=240))
    p = MogSortParams(history=20, var_threshold=100, compensate=True, min_hits=1)
    live, det, replay = MogSort(p), MogDetector(p), MogSort(p)
    for frame in seq.frames:
        a = live.step(frame)
        b = replay.track(det.detect(frame), det.offset, det.rebased)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
