"""Many small targets at once: discovery, one aggregation tracker per target, and a lifecycle.

:class:`MultiTracker` runs the :class:`~vistream.models.tracking.discovery.MotionDetector`
(or takes detections from the caller) and an
:class:`~vistream.models.tracking.aggregation.AggregationTracker` per target, with one camera
transform per frame (:class:`~vistream.models.tracking.discovery.Registration`) shared by all:
each tracker gets the camera's displacement *at its own position*, so rotation and zoom
reach it too.

Lifecycle, per frame
--------------------
1. every track's tracker updates; a tracker that reports ``lost`` makes its track **lost**
   (the tracker's own confidence is the first confirmation). A detector-started track that
   no detection has covered for ``max_unconfirmed`` frames is lost too: a tracker started
   on a poor box can lock onto background texture and stay confident there (a target that
   stops moving is lost this way as well, and re-acquired when it moves again). A lost
   track keeps running its tracker's own re-detection for ``self_search_frames`` frames,
   then only follows the camera (cheap) and waits to be re-acquired; after ``max_lost``
   lost frames in a row it **ends** (its id is never used again);
2. a detection is *covered* when a tracked track's box overlaps it (IoU > ``cover_iou``) or
   their centres are closer than ``max(cover_px, cover_factor * larger size)``; covered
   detections count as confirmations, one per tracked track, nearest pairs first (with
   ``confirm_overlap`` only one that overlaps the track's box). A covered detection that lies mostly
   outside the track's box, on an object whose extent overlaps the box by less than
   ``recentre_iou``, restarts the tracker there, same id (the tracker lags a fast large
   target, or slid inside a uniform one);
3. detections are widened to ``min_box`` px a side (a thin fragment of a faint object is a
   poor template); an uncovered detection is a candidate: its aggregation signature (the saliency-weighted
   colour histogram, computed by initialising a tracker on it) is compared with each lost
   track's signature by the Bhattacharyya coefficient. A lost track whose signature is
   similar enough (``reacquire_similarity`` within ``reacquire_radius`` + ``reacquire_speed``
   px per lost frame of where the camera moved it, ``reacquire_similarity_far`` anywhere),
   lost for at most ``reacquire_frames`` frames, and whose size is within
   ``reacquire_size_ratio`` is **re-acquired**: it keeps its id and continues on the fresh
   tracker. Otherwise the detection becomes a **new** track with the next id;
4. two tracked tracks on the same target (IoU > ``duplicate_iou``, or one box 70 % inside
   the other): the younger one is ended (stable ids favour the older);
5. a track the detector started must be confirmed (covered) ``confirm_hits`` times within its
   first ``confirm_window`` frames, or it is dropped as a false start (manual tracks are
   exempt).

``step`` returns the boxes and ids of the tracked (not lost) tracks; ``tracks`` holds all
live ones (tracked and lost) and ``events`` what happened in the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vistream.models.tracking.aggregation import AggregationParams, AggregationTracker
from vistream.models.tracking.discovery import (
    DiscoveryParams,
    MotionDetector,
    Registration,
    displacement,
    refine_box,
)
from vistream.models.tracking.motion import Motion

__all__ = ["MultiTracker", "MultiTrackerParams", "Track", "iou"]


@dataclass
class MultiTrackerParams:
    """Settings of :class:`MultiTracker` (pixels are full-resolution)."""

    #: run the motion detector (False: detections come from the caller, or none)
    detect: bool = True
    discovery: DiscoveryParams = field(default_factory=DiscoveryParams)
    tracker: AggregationParams = field(default_factory=AggregationParams)
    max_tracks: int = 32
    #: a lost track ends after this many lost frames in a row
    max_lost: int = 60
    #: lost tracks run their tracker's own re-detection for this many frames
    self_search_frames: int = 10
    #: coverage of a detection by a tracked track
    cover_iou: float = 0.1
    cover_px: float = 12.0
    cover_factor: float = 1.5
    #: re-acquisition of a lost track by signature (Bhattacharyya coefficient)
    reacquire_similarity: float = 0.7
    reacquire_similarity_far: float = 0.85
    reacquire_radius: float = 80.0
    #: the radius grows by this many px per frame lost (where the target may have gone)
    reacquire_speed: float = 0.0
    reacquire_size_ratio: float = 2.5
    #: a track lost longer than this is no longer re-acquired (it waits to end): an
    #: identity is kept only within a bounded time window
    reacquire_frames: int = 60
    #: two tracked tracks overlapping this much are one target
    duplicate_iou: float = 0.4
    #: a detector-started track needs confirm_hits coverages in its first confirm_window frames
    confirm_window: int = 15
    confirm_hits: int = 3
    #: a detector-started track not covered by a detection for this many frames is lost (it
    #: may have locked onto background; 0 = never): it waits for re-acquisition. 10 rather
    #: than 40: IDF1 0.67 vs 0.61 on eval mot's validation split
    max_unconfirmed: int = 10
    #: detections are widened to at least this many px a side before a tracker starts on them
    min_box: float = 6.0
    #: a new or re-acquired track's box is the object's extent by colour around the
    #: detection (:func:`~vistream.models.tracking.discovery.refine_box`)
    refine: bool = True
    #: a covered detection mostly outside its track's box restarts the tracker on the
    #: object's extent when that overlaps the track's box less than this (0 = never)
    recentre_iou: float = 0.5
    recentre_every: int = 5
    #: a track's detection (the nearest covered one, one per track) that overlaps the
    #: track's box by less than this restarts the tracker on the detection's box, same id,
    #: at most every ``reseat_every`` frames (0 = never): the detector's box is the whole
    #: object (:class:`~vistream.models.tracking.discovery.MotionDetector`'s extent); a
    #: tracker started on a part of it, or one sliding off, is put back
    reseat_iou: float = 0.0
    #: a detection confirms its track only when the two overlap (False: when it is near)
    confirm_overlap: bool = False
    reseat_every: int = 3


@dataclass
class Track:
    """One target: its tracker and lifecycle state."""

    track_id: int
    tracker: AggregationTracker
    manual: bool = False
    lost: bool = False
    lost_frames: int = 0
    age: int = 0
    hits: int = 1
    score: float = 1.0
    fresh: bool = True  # started on the current frame: no update this frame
    reacquired: int = 0
    unconfirmed: int = 0  # frames since a detection last covered it
    recentred: int = -1000  # age at the last recentring

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.tracker.box


def iou(a, b) -> float:
    """IoU of two x, y, w, h boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (aw * ah + bw * bh - inter))


def _similarity(a: AggregationTracker, b: AggregationTracker) -> float:
    """Bhattacharyya coefficient of two trackers' foreground signatures (1 = identical)."""
    return float(np.sqrt(np.clip(a.h_fg, 0, None) * np.clip(b.h_fg, 0, None)).sum())


class MultiTracker:
    """Detector + one aggregation tracker per target + lifecycle (module docstring).

    ``step(frame_bgr)`` -> ((N, 4) float32 x, y, w, h, (N,) int64 ids) of the tracked
    targets in this frame. ``start(box)`` starts a target by hand (on the last frame seen,
    or on the next one before any frame), ``stop(track_id)`` ends one, ``reset()`` forgets
    everything.
    """

    def __init__(self, params: MultiTrackerParams | None = None) -> None:
        self.p = params or MultiTrackerParams()
        d = self.p.discovery
        self.registration = Registration(d.similarity, d.motion_downsample, d.motion_min_response)
        self.detector = MotionDetector(d, registration=self.registration) if self.p.detect else None
        self.reset()

    def reset(self) -> None:
        self.registration.reset()
        if self.detector is not None:
            self.detector.reset()
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._frame: np.ndarray | None = None
        self._pending: list[tuple[int, tuple[float, ...]]] = []
        self.frames = 0
        self.events: list[tuple[str, int]] = []
        self.transform = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.detections = np.zeros((0, 4), np.float32)

    # -- manual control -------------------------------------------------------------------
    def _new_tracker(self, image: np.ndarray, box) -> AggregationTracker:
        tr = AggregationTracker(self.p.tracker, motion=False)
        tr.init(image, tuple(float(v) for v in box))
        return tr

    def start(self, box, track_id: int | None = None, image: np.ndarray | None = None) -> int:
        """Start (or restart, when ``track_id`` is live) a target at ``box`` = x, y, w, h in
        ``image`` (default: the last frame seen; before any frame, the next one). Returns its
        id. A hand-started track is never dropped as a false start."""
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0) or not all(map(math.isfinite, (x, y, w, h))):
            raise ValueError(f"box must be finite with a positive size, got {box!r}")
        tid = self._next_id if track_id is None else int(track_id)
        if tid not in self.tracks and len(self.tracks) >= self.p.max_tracks:
            raise ValueError(f"already {self.p.max_tracks} tracks (max_tracks)")
        self._next_id = max(self._next_id, tid + 1)
        image = self._frame if image is None else image
        if image is None:
            self._pending.append((tid, (x, y, w, h)))
            return tid
        self.tracks[tid] = Track(tid, self._new_tracker(image, (x, y, w, h)), manual=True)
        self.events.append(("start", tid))
        return tid

    def stop(self, track_id: int) -> bool:
        """End a track; False when no such live track."""
        self._pending = [pt for pt in self._pending if pt[0] != track_id]
        if self.tracks.pop(int(track_id), None) is None:
            return False
        self.events.append(("stop", int(track_id)))
        return True

    # -- per frame ------------------------------------------------------------------------
    def step(self, frame_bgr: np.ndarray, detections: np.ndarray | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """Track into ``frame_bgr``. ``detections`` (M, 4): boxes found elsewhere (another
        detector, a detect stage), used before the motion detector's own (when it runs)."""
        self.frames += 1
        self.events = []
        a = self.registration.estimate(frame_bgr)
        self.transform = a
        dets = (np.zeros((0, 4), np.float32) if detections is None
                else np.asarray(detections, np.float32).reshape(-1, 4))
        if self.detector is not None:
            dets = np.concatenate([dets, self.detector.update(frame_bgr, transform=a)])
        self.detections = dets
        self._frame = frame_bgr
        for tid, box in self._pending:
            self.tracks[tid] = Track(tid, self._new_tracker(frame_bgr, box), manual=True)
            self.events.append(("start", tid))
        self._pending = []
        self._update_tracks(frame_bgr, a)
        self._use_detections(frame_bgr, dets, a)
        for t in self.tracks.values():  # all are at this frame now: the next one updates them
            t.fresh = False
        self._dedupe()
        self._expire()
        return self.output()

    def output(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and ids of the tracked (not lost) tracks, by id."""
        live = [t for _, t in sorted(self.tracks.items()) if not t.lost]
        if not live:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return (np.asarray([t.box for t in live], np.float32).reshape(-1, 4),
                np.asarray([t.track_id for t in live], np.int64))

    def _update_tracks(self, frame: np.ndarray, a: np.ndarray) -> None:
        for t in self.tracks.values():
            if t.fresh:
                t.fresh = False
                continue
            t.age += 1
            t.unconfirmed += 1
            tr = t.tracker
            dx, dy = displacement(a, tr.cx, tr.cy)
            mu = self.p.max_unconfirmed
            if mu and not t.manual and not t.lost and t.unconfirmed > mu:
                # no detection has covered it for a long time: it may follow background;
                # lost, it waits for a detection to re-acquire it by signature
                t.lost, t.lost_frames = True, self.p.self_search_frames
                self.events.append(("lost", t.track_id))
            if not t.lost or t.lost_frames < self.p.self_search_frames:
                out = tr.update(frame, motion=Motion(dx, dy, 1.0))
                lost, t.score = out.lost, out.score
            else:  # waiting for re-acquisition: follow the camera, nothing else
                tr.cx += dx
                tr.cy += dy
                lost, t.score = True, 0.0
            if lost:
                if not t.lost:
                    self.events.append(("lost", t.track_id))
                t.lost = True
                t.lost_frames += 1
            else:
                if t.lost:
                    self.events.append(("recovered", t.track_id))
                t.lost, t.lost_frames = False, 0

    def _covers(self, track_box, box) -> bool:
        x, y, w, h = (float(v) for v in track_box)
        bx, by, bw, bh = (float(v) for v in box)
        if not all(map(math.isfinite, (x, y, w, h))):
            return False
        d = math.hypot(x + w / 2 - bx - bw / 2, y + h / 2 - by - bh / 2)
        return d <= max(self.p.cover_px, self.p.cover_factor * max(w, h, bw, bh)) or (
            iou(track_box, box) > self.p.cover_iou)

    def _covering(self, box) -> Track | None:
        """The tracked track nearest to ``box`` among those that cover it."""
        bx, by, bw, bh = (float(v) for v in box)
        best, best_d = None, math.inf
        for t in self.tracks.values():
            if t.lost or not self._covers(t.box, box):
                continue
            x, y, w, h = t.box
            d = math.hypot(x + w / 2 - bx - bw / 2, y + h / 2 - by - bh / 2)
            if d < best_d:
                best, best_d = t, d
        return best

    def _use_detections(self, frame: np.ndarray, dets: np.ndarray, a: np.ndarray) -> None:
        """One detection per tracked track, nearest pairs first (a detection of a neighbour
        must not confirm a track whose own target was not detected); the rest go through
        :meth:`detection` (covered: ignored, else re-acquired or new)."""
        boxes = [self._widen(b) for b in dets]
        pairs = []
        for j, b in enumerate(boxes):
            bx, by, bw, bh = b
            for t in self.tracks.values():
                if t.lost or t.fresh or not self._covers(t.box, b):
                    continue
                x, y, w, h = t.box
                pairs.append((math.hypot(x + w / 2 - bx - bw / 2, y + h / 2 - by - bh / 2),
                              j, t.track_id))
        pairs.sort()
        taken_d: set[int] = set()
        taken_t: set[int] = set()
        for _, j, tid in pairs:
            if j in taken_d or tid in taken_t:
                continue
            taken_d.add(j)
            taken_t.add(tid)
            self._confirm(self.tracks[tid], frame, boxes[j])
        for j, box in enumerate(boxes):
            if j not in taken_d:
                self.detection(frame, box)

    def _confirm(self, t: Track, image: np.ndarray, box) -> None:
        """A detection covers tracked track ``t``: a confirmation; the tracker restarts on
        the detection when the two overlap by less than ``reseat_iou``."""
        p = self.p
        if p.confirm_overlap and iou(t.box, box) <= 0.0:
            return  # next to it, not on it: the tracker may have slid off its target
        t.hits += 1
        t.unconfirmed = 0
        if p.reseat_iou and t.age - t.recentred >= p.reseat_every and iou(t.box, box) < p.reseat_iou:
            try:
                t.tracker = self._new_tracker(image, box)
            except ValueError:
                return
            t.recentred = t.age
            self.events.append(("reseated", t.track_id))
            return
        self._recentre(t, image, box)

    def detection(self, image: np.ndarray, box, cover: np.ndarray | None = None,
                  cover_ids: np.ndarray | None = None) -> int | None:
        """Use one detection found in ``image``: covered by a live track (its id is
        returned and the track counts a confirmation), else the id of the lost track it
        re-acquires by signature, else the id of a new track; None when it cannot be used
        (degenerate box, ``max_tracks`` reached). ``cover``: (K, 4) boxes that cover instead
        of the live tracks' current boxes (a caller applying a detection on an older frame
        passes the tracks' boxes in that frame); a covered detection then returns -1 and
        counts as a confirmation of the covering track when ``cover_ids`` (the ids of the
        ``cover`` rows) names a live one."""
        box = self._widen(box)
        if cover is None:
            t = self._covering(box)
            if t is not None:
                self._confirm(t, image, box)
                return t.track_id
        else:
            rows = np.asarray(cover, np.float32).reshape(-1, 4)
            hit = [i for i, c in enumerate(rows) if self._covers(c, box)]
            if hit:
                if cover_ids is not None:
                    t = self.tracks.get(int(cover_ids[hit[0]]))
                    if t is not None and not t.lost:
                        t.hits += 1  # its detection of an older frame: no box to reseat
                        t.unconfirmed = 0
                return -1
        if self.p.refine:
            box = self._widen(refine_box(image, box, self.p.discovery.max_size))
        try:
            cand = self._new_tracker(image, box)
        except ValueError:
            return None
        owner = self._reacquire(cand, box)
        if owner is not None:
            owner.tracker = cand
            owner.lost, owner.lost_frames, owner.fresh = False, 0, True
            owner.reacquired += 1
            owner.hits += 1
            owner.unconfirmed = 0
            self.events.append(("reacquired", owner.track_id))
            return owner.track_id
        if len(self.tracks) >= self.p.max_tracks:
            return None
        tid = self._next_id
        self._next_id += 1
        self.tracks[tid] = Track(tid, cand)
        self.events.append(("new", tid))
        return tid

    def _recentre(self, t: Track, image: np.ndarray, box) -> None:
        """A covered detection mostly outside the track's box: the tracker may lag or have
        slid inside a large uniform object. When the object's extent around the detection
        (:func:`refine_box`) overlaps the track's box by less than ``recentre_iou`` (but
        does overlap it: a detection of a neighbour must not take the id), the tracker
        restarts there (same id). At most every ``recentre_every`` frames."""
        p = self.p
        if not p.recentre_iou or t.age - t.recentred < p.recentre_every:
            return
        tb = t.box
        bx, by, bw, bh = box
        iw = min(tb[0] + tb[2], bx + bw) - max(tb[0], bx)
        ih = min(tb[1] + tb[3], by + bh) - max(tb[1], by)
        if max(iw, 0.0) * max(ih, 0.0) >= 0.5 * bw * bh:
            return
        rb = self._widen(refine_box(image, box, p.discovery.max_size)) if p.refine else box
        overlap = iou(rb, tb)
        if overlap >= p.recentre_iou or overlap <= 0.05:
            return  # on it already, or another object (recentring would swap ids)
        try:
            t.tracker = self._new_tracker(image, rb)
        except ValueError:
            return
        t.recentred = t.age
        self.events.append(("recentred", t.track_id))

    def _widen(self, box) -> tuple[float, float, float, float]:
        """At least ``min_box`` px a side, same centre: a 5x2 px fragment of a larger,
        faint object makes a poor template."""
        x, y, w, h = (float(v) for v in box)
        m = self.p.min_box
        if w < m:
            x, w = x - (m - w) / 2, m
        if h < m:
            y, h = y - (m - h) / 2, m
        return (x, y, w, h)

    def _reacquire(self, cand: AggregationTracker, box) -> Track | None:
        p = self.p
        bx, by, bw, bh = (float(v) for v in box)
        cx, cy = bx + bw / 2, by + bh / 2
        best, best_s = None, -1.0
        for t in self.tracks.values():
            if not t.lost or t.lost_frames > p.reacquire_frames:
                continue
            tr = t.tracker
            ratio = max(tr.w, tr.h) / max(bw, bh)
            if not 1.0 / p.reacquire_size_ratio <= ratio <= p.reacquire_size_ratio:
                continue
            s = _similarity(cand, tr)
            radius = p.reacquire_radius + p.reacquire_speed * t.lost_frames
            near = math.hypot(tr.cx - cx, tr.cy - cy) <= radius
            need = p.reacquire_similarity if near else p.reacquire_similarity_far
            if s >= need and s > best_s:
                best, best_s = t, s
        return best

    def _same_target(self, a, b) -> bool:
        """Boxes that overlap by ``duplicate_iou``, or one mostly inside the other (two
        tracks started on two fragments of one faint object)."""
        if iou(a, b) > self.p.duplicate_iou:
            return True
        iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
        ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
        return iw > 0 and ih > 0 and iw * ih > 0.7 * min(a[2] * a[3], b[2] * b[3])

    def _dedupe(self) -> None:
        """Two tracked tracks on one target: the younger (higher id) goes, unless it was
        started by hand and the older was not (then the older goes); two hand-started
        tracks are both kept (the operator asked for both)."""
        live = sorted((t for t in self.tracks.values() if not t.lost), key=lambda t: t.track_id)
        gone: set[int] = set()
        for i, t in enumerate(live):
            for u in live[i + 1:]:
                if t.track_id in gone or u.track_id in gone or (t.manual and u.manual):
                    continue
                if self._same_target(t.box, u.box):
                    gone.add(t.track_id if u.manual else u.track_id)
        for tid in gone:
            del self.tracks[tid]
            self.events.append(("ended", tid))

    def _expire(self) -> None:
        p = self.p
        for tid, t in list(self.tracks.items()):
            false_start = (not t.manual and t.age == p.confirm_window
                           and t.hits < p.confirm_hits)
            if t.lost_frames > p.max_lost or false_start:
                del self.tracks[tid]
                self.events.append(("ended", tid))
