"""The multi-object baseline of ``vistream eval mot``: OpenCV's MOG2 background subtractor
(optionally on motion-compensated frames) + connected components + a SORT-style tracker
(Bewley et al., *Simple Online and Realtime Tracking*, ICIP 2016, arXiv 1602.00763).

Choices made
------------
* **Detector** (:class:`MogDetector`): ``cv2.createBackgroundSubtractorMOG2`` on the BGR frame,
  shadows off; the foreground mask is median-filtered (3x3: isolated noise pixels go, a 4 px
  target stays) and dilated once (3x3) so a blurred or noisy target does not fall apart, then
  ``cv2.connectedComponentsWithStats`` gives boxes (shrunk back by the dilation's pixel), kept
  when their area is within ``[min_area, max_area]`` px; at most ``max_detections`` (the
  largest) per frame, so that a frame the model gets wrong (a camera jump without
  compensation) cannot flood the tracker. With ``compensate=True`` the camera shift from
  :class:`vistream.models.tracking.motion.GlobalMotion` (the registration our tracker uses) is
  accumulated and every frame is translated back into the first frame's coordinates before
  MOG2 sees it; pixels that came from outside the frame are masked out (and a 4 px margin
  around them); detections are shifted back. Translation only, as the registration gives:
  rotation and zoom are left as residual motion. When the accumulated shift passes a quarter
  of the frame the model restarts from the current frame (its first ``warmup`` frames
  yield no detections), as it does on the first frame. With compensation SORT also runs in
  those stabilised coordinates (:class:`MogSort`; its tracks move with a restart), so its
  constant-velocity prediction does not have to absorb the camera's motion: the help our
  trackers get from the registration.
* **Tracker** (:class:`Sort`): as in the paper and its reference code: one constant-velocity
  Kalman filter per track on ``[cx, cy, area, aspect]`` with the paper's noise settings, the
  Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on IoU between predicted
  tracks and detections with a minimum IoU, a track is reported after ``min_hits``
  consecutive hits (or during the first ``min_hits`` frames), only on frames where it was
  matched, and deleted after ``max_age`` frames unmatched. Ids start at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from vistream.models.tracking.motion import GlobalMotion

__all__ = ["KalmanBox", "MogDetector", "MogSort", "MogSortParams", "Sort", "iou_matrix"]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), both x, y, w, h."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


# --------------------------------------------------------------------------- Kalman / SORT


class KalmanBox:
    """Constant-velocity Kalman filter of one box: state ``[cx, cy, s, r, vcx, vcy, vs]``
    (``s`` area, ``r`` aspect w/h, constant), as in SORT's reference code."""

    _F = np.eye(7)
    _F[0, 4] = _F[1, 5] = _F[2, 6] = 1.0
    _H = np.eye(4, 7)
    _R = np.diag([1.0, 1.0, 10.0, 10.0])
    _Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 1e-4])

    def __init__(self, box: np.ndarray) -> None:
        self.x = np.zeros(7)
        self.x[:4] = self._measure(box)
        self.P = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
        self.age = 0
        self.hits = 1
        self.hit_streak = 1
        self.time_since_update = 0

    @staticmethod
    def _measure(box: np.ndarray) -> np.ndarray:
        x, y, w, h = (float(v) for v in box)
        return np.array([x + w / 2, y + h / 2, w * h, w / max(h, 1e-6)])

    def box(self) -> np.ndarray:
        """The state as x, y, w, h."""
        s, r = max(self.x[2], 1e-6), max(self.x[3], 1e-6)
        w = np.sqrt(s * r)
        h = s / w
        return np.array([self.x[0] - w / 2, self.x[1] - h / 2, w, h])

    def predict(self) -> np.ndarray:
        if self.x[2] + self.x[6] <= 0:
            self.x[6] = 0.0
        self.x = self._F @ self.x
        self.P = self._F @ self.P @ self._F.T + self._Q
        self.age += 1
        if self.time_since_update > 0:
            self.hit_streak = 0
        self.time_since_update += 1
        return self.box()

    def update(self, box: np.ndarray) -> None:
        z = self._measure(box)
        y = z - self._H @ self.x
        S = self._H @ self.P @ self._H.T + self._R
        K = self.P @ self._H.T @ np.linalg.inv(S)
        self.x = self.x + K @ y
        self.P = (np.eye(7) - K @ self._H) @ self.P
        self.time_since_update = 0
        self.hits += 1
        self.hit_streak += 1


class Sort:
    """SORT: Kalman prediction, Hungarian assignment on IoU, min hits, max age."""

    def __init__(self, max_age: int = 3, min_hits: int = 3, iou_threshold: float = 0.3) -> None:
        self.max_age, self.min_hits, self.iou_threshold = max_age, min_hits, iou_threshold
        self.tracks: list[KalmanBox] = []
        self.ids: list[int] = []
        self.frame_count = 0
        self._next_id = 1

    def update(self, detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed one frame's detections (N, 4) x, y, w, h; return the reported boxes (float32)
        and their ids (int64)."""
        self.frame_count += 1
        dets = np.asarray(detections, np.float64).reshape(-1, 4)
        predicted = np.array([t.predict() for t in self.tracks]).reshape(-1, 4)
        keep = np.all(np.isfinite(predicted), axis=1)
        self.tracks = [t for t, k in zip(self.tracks, keep) if k]
        self.ids = [i for i, k in zip(self.ids, keep) if k]
        predicted = predicted[keep]
        matched_d: set[int] = set()
        if len(dets) and len(predicted):
            ious = iou_matrix(dets, predicted)
            rows, cols = linear_sum_assignment(-ious)
            for d, t in zip(rows, cols):
                if ious[d, t] >= self.iou_threshold:
                    self.tracks[t].update(dets[d])
                    matched_d.add(int(d))
        for d in range(len(dets)):
            if d not in matched_d:
                self.tracks.append(KalmanBox(dets[d]))
                self.ids.append(self._next_id)
                self._next_id += 1
        boxes, ids = [], []
        alive_t, alive_i = [], []
        for trk, tid in zip(self.tracks, self.ids):
            if trk.time_since_update < 1 and (trk.hit_streak >= self.min_hits
                                              or self.frame_count <= self.min_hits):
                boxes.append(trk.box())
                ids.append(tid)
            if trk.time_since_update <= self.max_age:
                alive_t.append(trk)
                alive_i.append(tid)
        self.tracks, self.ids = alive_t, alive_i
        return (np.array(boxes, np.float32).reshape(-1, 4), np.array(ids, np.int64))


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True)
class MogSortParams:
    """The baseline's knobs (the tuning grid of :mod:`vistream.models.tracking.mot` walks
    some of them)."""

    var_threshold: float = 16.0
    history: int = 200
    compensate: bool = True
    min_area: int = 9
    max_area: int = 80 * 80
    max_detections: int = 100
    warmup: int = 2
    max_age: int = 3
    min_hits: int = 3
    iou_threshold: float = 0.3


class MogDetector:
    """MOG2 + connected components, optionally on motion-compensated frames."""

    def __init__(self, params: MogSortParams | None = None) -> None:
        self.p = params or MogSortParams()
        self._motion = GlobalMotion() if self.p.compensate else None
        self._kernel = np.ones((3, 3), np.uint8)
        self._mog: cv2.BackgroundSubtractorMOG2 | None = None
        self._offset = np.zeros(2)
        self._since_reset = 0
        #: the reference moved by this much in the last ``detect`` (a restart), else zero
        self.rebased = np.zeros(2)

    @property
    def offset(self) -> np.ndarray:
        """Image position of the reference frame's origin: image = stabilised + offset."""
        return self._offset.copy()

    def _restart(self) -> None:
        self._mog = cv2.createBackgroundSubtractorMOG2(
            history=self.p.history, varThreshold=self.p.var_threshold, detectShadows=False)
        self.rebased = self._offset.copy()
        self._offset[:] = 0.0
        self._since_reset = 0

    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) x, y, w, h (float32) of the moving blobs of ``frame``."""
        h, w = frame.shape[:2]
        self.rebased = np.zeros(2)
        if self._mog is None:
            self._restart()
        valid = None
        if self._motion is not None:
            m = self._motion.estimate(frame)
            self._offset += (m.dx, m.dy)
            if abs(self._offset[0]) > w / 4 or abs(self._offset[1]) > h / 4:
                self._restart()
            if self._offset.any():
                ox, oy = self._offset
                mat = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]])
                frame = cv2.warpAffine(frame, mat, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)
                valid = np.zeros((h, w), np.uint8)
                x0, y0 = int(max(0, np.ceil(-ox))) + 4, int(max(0, np.ceil(-oy))) + 4
                x1, y1 = int(min(w, np.floor(w - ox))) - 4, int(min(h, np.floor(h - oy))) - 4
                if x1 > x0 and y1 > y0:
                    valid[y0:y1, x0:x1] = 255
        assert self._mog is not None
        fg = self._mog.apply(frame)
        self._since_reset += 1
        if self._since_reset <= self.p.warmup:
            return np.zeros((0, 4), np.float32)
        fg = cv2.threshold(fg, 200, 255, cv2.THRESH_BINARY)[1]
        if valid is not None:
            fg = cv2.bitwise_and(fg, valid)
        fg = cv2.dilate(cv2.medianBlur(fg, 3), self._kernel)
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        stats = stats[1:]
        area = stats[:, cv2.CC_STAT_AREA]
        keep = np.flatnonzero((area >= self.p.min_area) & (area <= self.p.max_area))
        if len(keep) > self.p.max_detections:  # the largest ones
            keep = keep[np.argsort(-area[keep], kind="stable")[:self.p.max_detections]]
        boxes = stats[keep, :4].astype(np.float32)
        # undo the dilation's 1 px on each side (never below 1 px)
        boxes[:, 2:] = np.maximum(boxes[:, 2:] - 2, 1)
        boxes[:, :2] += 1
        if valid is not None:
            boxes[:, 0] += np.float32(self._offset[0])
            boxes[:, 1] += np.float32(self._offset[1])
        return boxes


class MogSort:
    """The baseline as one multi-object tracker: ``step(frame) -> (boxes, ids)``, the
    interface of our :class:`~vistream.models.tracking.multi.MultiTracker`."""

    def __init__(self, params: MogSortParams | None = None) -> None:
        self.params = params or MogSortParams()
        self.detector = MogDetector(self.params)
        self.sort = Sort(self.params.max_age, self.params.min_hits, self.params.iou_threshold)

    def step(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dets = self.detector.detect(frame_bgr)
        return self.track(dets, self.detector.offset, self.detector.rebased)

    def track(self, dets: np.ndarray, offset: np.ndarray, rebased: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """SORT on one frame's detections (image coordinates), given the detector's
        ``offset`` and ``rebased`` for that frame (so detections can be replayed)."""
        if not self.params.compensate:
            return self.sort.update(dets)
        # track in the stabilised frame, so the Kalman filters see no camera motion
        if np.any(rebased):
            for trk in self.sort.tracks:
                trk.x[:2] += rebased
        off = np.asarray(offset, np.float32)
        stab = dets.copy()
        stab[:, :2] -= off
        boxes, ids = self.sort.update(stab)
        boxes[:, :2] += off
        return boxes, ids
