"""Track stage: small-object tracking per stream with the aggregation-signature tracker.

Records
-------
* :class:`~vistream.stages.records.TrackInit` (kind ``track_init``, in; defined in
  :mod:`vistream.stages.records` since the ``detect`` stage emits it): start, restart or stop
  targets of one stream: ``boxes[i]`` (x, y, w, h pixels) becomes target ``target_ids[i]``
  *in the frame* ``frame_id`` (sequence number ``seq`` when known, -1 otherwise);
  ``drop_ids`` stops targets; ``replace=True`` stops every target not listed. A *negative*
  target id is a detection (the ``detect`` stage's): see "Lifecycle" below. The detect
  stage, an operator (``vistream track start|stop``, ``POST /tracks``) or a test produces
  these. The existing :class:`~vistream.stages.records.Tracks` record is accepted
  too and read as a detection record (``track_ids`` -> target ids, no drops).
* :class:`TrackState` (kind ``track_state``, out): one record per frame of a stream with
  targets, keyed like every result by stream id and carrying the frame id; one row per
  target: ``target_ids``, ``boxes`` (x, y, w, h, float32; NaN when no position is known),
  ``scores`` in [0, 1] and ``lost``. One record per frame rather than one per target: it
  joins back to its frame by frame id exactly like ``Tracks`` does, and a consumer that is
  idempotent by frame id stays idempotent.
* For the features stage, two wirings (each a stage type of its own, because the config
  checks every type's outputs against its routes; plain ``track`` emits ``track_state``
  only):

  - ``track_boxes`` also emits the standard :class:`~vistream.stages.records.Tracks` record per
    frame (the tracked, not lost, targets: ``track_ids`` = target ids). The features stage
    with ``crops: true`` reads it next to the frame topic and cuts the crops itself from the
    frames it already decodes: no second JPEG per target. This is the recommended wiring.
  - ``track_crops`` also emits a crop :class:`~vistream.stages.records.Frame` per tracked target
    and frame, ``frame_id = f"{frame_id}#t{target_id}"``, same stream id, sequence number
    and timestamp as the source frame (box plus ``crop_margin`` context, optionally resized
    to ``crop_size``): any stage that takes frames can consume them; the crop's box is the
    TrackState row of that frame id and target id.

Lifecycle (:class:`~vistream.models.tracking.multi.MultiTracker`, one per stream)
---------------------------------------------------------------------------------
Ids are stable: a target keeps its id while it is tracked. A target whose tracker loses it
is reported ``lost`` (its box is the camera-compensated last position); after ``max_lost``
lost frames in a row it *ends*: it gets no more rows and its id is not reused. A detection
(negative target id) that no live target covers is compared by aggregation signature with
the lost targets: a match re-acquires the lost target, which keeps its id; otherwise it
starts a new target with the next free id. A detection is applied on its own frame: if that
frame was already processed, coverage is judged against the targets' boxes remembered for
that frame, and a new or re-acquired target catches up through the newer buffered frames.
With ``discover: true`` the stage runs the motion detector itself (no detect stage needed).

State, restarts and redelivery
------------------------------
Each stream has its own trackers (one per target), one camera-motion estimate per frame
shared by them, a ring of the last ``buffer_frames`` decoded frames, and the outputs of the
last ``remember_frames`` frames. All of it lives in the stage object and is lost on a
restart (or when a rebalance moves the stream to another replica). Then:

* the stage never invents a box. A target started by a :class:`TrackInit` is unknown after
  a restart and gets no rows until a new init record arrives; a target configured in the
  params (``targets``) has a box *for one frame* (``seq``, default 0): it starts when that
  frame is processed; if the stage first sees the stream after that frame, the target is
  reported every frame as ``lost`` with a NaN box and score 0 until an init record for it
  arrives;
* a redelivered frame (at-least-once delivery: same frame id again) is not tracked twice:
  its remembered outputs are emitted again, identical; a frame older than the last one
  processed and no longer remembered is skipped (counted in ``redeliveries``).

Init records and frames come from different topics, so either may arrive first:

1. the init's frame is in the buffer: the targets start on that frame and are brought up to
   date through the newer buffered frames (no rows are emitted for those again);
2. its frame has not arrived yet (``seq`` beyond the last processed one, or an unknown
   ``frame_id`` with ``seq = -1``): it waits for that frame; if a later frame arrives first
   (or ``buffer_frames`` frames pass for a ``seq = -1`` init), it is applied to that frame,
   with a warning;
3. its frame is older than the buffer: it is applied to the newest buffered frame, with a
   warning (the box may be a little stale: that is the caller's choice, made explicit).

For that the init topic must be keyed by stream id and have as many partitions as the
frame topic (co-partitioned), so one replica sees both halves of a stream.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vistream.models.tracking.aggregation import AggregationParams
from vistream.models.tracking.discovery import DiscoveryParams, Registration, displacement
from vistream.models.tracking.motion import Motion
from vistream.models.tracking.multi import MultiTracker, MultiTrackerParams
from vistream.stages.records import JPEG, PNG, Frame, Message, Result, TrackInit, Tracks
from vistream.stages.base import Stage, StageParams, register_stage
from vistream.stages.replay import FrameReplay

log = logging.getLogger("vistream.stages.track")

__all__ = ["TrackBoxesStage", "TrackCropStage", "TrackInit", "TrackParams", "TrackStage", "TrackState",
           "TrackTarget"]


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class TrackState(Result):
    """Targets of one stream in one frame; row i is target ``target_ids[i]``."""

    kind: ClassVar[str] = "track_state"
    seq: int = 0
    target_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    lost: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


# --------------------------------------------------------------------------- params


class TrackTarget(BaseModel):
    """A configured target: ``box`` (x, y, w, h) in the frame ``seq`` of ``stream``."""

    model_config = ConfigDict(extra="forbid")
    stream: str
    box: list[float] = Field(min_length=4, max_length=4)
    target_id: int = 0
    seq: int = Field(0, ge=0, description="sequence number of the frame the box belongs to")

    @field_validator("box")
    @classmethod
    def _positive(cls, box: list[float]) -> list[float]:
        if not (box[2] > 0 and box[3] > 0) or not all(math.isfinite(v) for v in box):
            raise ValueError(f"box must be finite with positive width and height, got {box}")
        return box


_LIFECYCLE = ("max_lost", "self_search_frames", "cover_iou", "cover_px", "cover_factor",
              "reacquire_similarity", "reacquire_similarity_far", "reacquire_radius",
              "reacquire_size_ratio", "duplicate_iou", "confirm_window", "confirm_hits",
              "max_unconfirmed", "reseat_iou", "reseat_every", "recentre_iou", "min_box",
              "refine", "reacquire_frames", "reacquire_speed", "confirm_overlap")


def _known_keys(value: dict[str, Any], known: Iterable[str], what: str) -> dict[str, Any]:
    """A typo in a nested settings dict is an error naming the known keys, not a silent no-op."""
    bad = sorted(set(value) - set(known))
    if bad:
        raise ValueError(f"unknown {what} settings {bad}; known: {sorted(known)}")
    return value


class TrackParams(StageParams):
    targets: list[TrackTarget] = Field(default_factory=list,
                                       description="boxes to start from, per stream and frame")
    buffer_frames: int = Field(8, ge=1, le=256,
                               description="recent frames kept per stream for late init records")
    remember_frames: int = Field(64, ge=1, le=100_000,
                                 description="outputs kept per stream to answer redeliveries")
    max_targets: int = Field(32, ge=1, le=1024, description="targets per stream")
    max_lost: int = Field(100, ge=1, le=100_000,
                          description="a target lost this many frames in a row ends")
    discover: bool = Field(False, description="run the motion detector in this stage too "
                                              "(no detect stage needed)")
    await_detections: int = Field(0, ge=0, le=100_000,
                                  description="hold a frame until its detection record "
                                              "(a detect stage with every_frame) arrives, "
                                              "while at most this many frames wait (0: never "
                                              "wait); frames arrive as fast as they are "
                                              "ingested, so allow the detect stage's lag")
    confirm: bool | None = Field(None, description="detections confirm the targets they "
                                 "cover; a detector-started target not confirmed for a while "
                                 "is lost (needs every frame's detections: discover, or a "
                                 "detect stage with reannounce_frames 1); default: discover")
    tracker: dict[str, Any] = Field(default_factory=dict,
                                    description="AggregationParams overrides")
    lifecycle: dict[str, Any] = Field(default_factory=dict,
                                      description=f"MultiTrackerParams overrides: {_LIFECYCLE}")
    discovery: dict[str, Any] = Field(default_factory=dict,
                                      description="DiscoveryParams overrides (discover: true)")
    crop_margin: float = Field(0.5, ge=0, le=10,
                               description="track_crops: context around the box, per side, "
                                           "as a share of the box size")
    crop_size: int | None = Field(None, ge=8, le=4096,
                                  description="track_crops: resize crops to NxN (default: as cut)")
    crop_format: str = Field("jpeg", pattern="^(jpeg|png)$")

    @field_validator("tracker")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _known_keys(value, AggregationParams.__dataclass_fields__, "tracker")

    @field_validator("lifecycle")
    @classmethod
    def _known_lifecycle(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _known_keys(value, _LIFECYCLE, "lifecycle")

    @field_validator("discovery")
    @classmethod
    def _known_discovery(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _known_keys(value, DiscoveryParams.__dataclass_fields__, "discovery")


    def multi_params(self) -> MultiTrackerParams:
        disc = dict(self.discovery)
        if "refs" in disc:
            disc["refs"] = tuple(disc["refs"])
        # A detect stage announces a mover once by default (it passed its persistence
        # filter there), not every frame: no confirmation by detections unless this stage
        # detects itself or is told that every frame's detections arrive (confirm).
        on = self.discover if self.confirm is None else self.confirm
        confirm = {} if on else {"confirm_hits": 0, "max_unconfirmed": 0}
        return MultiTrackerParams(detect=self.discover, discovery=DiscoveryParams(**disc),
                                  tracker=AggregationParams(**self.tracker),
                                  max_tracks=self.max_targets,
                                  **{"max_lost": self.max_lost, **confirm, **self.lifecycle})


# --------------------------------------------------------------------------- state


@dataclass
class _Pending:
    init: TrackInit
    frames_waited: int = 0


@dataclass
class StreamState:
    """Everything the stage keeps for one stream (lost on restart)."""

    multi: MultiTracker
    replay: FrameReplay
    buffer: deque = field(default_factory=deque)  # (seq, frame_id, image)
    pending: list[_Pending] = field(default_factory=list)
    configured: dict[int, TrackTarget] = field(default_factory=dict)  # not started yet
    frames: int = 0
    held: deque = field(default_factory=deque)  # frames waiting for their detections
    arrived: dict = field(default_factory=dict)  # frame ids whose detection record came

    @property
    def trackers(self) -> dict[int, Any]:
        """The live targets' trackers by target id (tracked and lost)."""
        return {tid: t.tracker for tid, t in self.multi.tracks.items()}


# --------------------------------------------------------------------------- stage


@register_stage("track")
class TrackStage(Stage):
    """Per-stream small-object tracking; see the module docstring for records and state."""

    accepts = ("frame", "track_init", "tracks")
    emits: ClassVar[tuple[str, ...]] = ("track_state",)
    Params = TrackParams
    crops: ClassVar[bool] = False
    boxes_record: ClassVar[bool] = False

    def __init__(self, params: TrackParams | None = None) -> None:
        super().__init__(params)
        self.streams: dict[str, StreamState] = {}
        self.redeliveries = 0
        self.late_inits = 0
        self.events: dict[str, int] = {}

    # -- helpers ------------------------------------------------------------------------
    def _stream(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            st = StreamState(multi=MultiTracker(self.params.multi_params()),
                             replay=FrameReplay(self.params.remember_frames),
                             buffer=deque(maxlen=self.params.buffer_frames))
            st.configured = {t.target_id: t for t in self.params.targets if t.stream == stream_id}
            self.streams[stream_id] = st
        return st

    def summary(self) -> dict[str, Any]:
        return {"streams": {s: {"frames": st.frames, "targets": sorted(st.multi.tracks),
                                "lost": sorted(t for t, tr in st.multi.tracks.items() if tr.lost),
                                "waiting": sorted(st.configured)}
                            for s, st in self.streams.items()},
                "redeliveries": self.redeliveries, "late_inits": self.late_inits,
                "events": dict(self.events)}

    def _count(self, events: list[tuple[str, int]]) -> None:
        for kind, _ in events:
            self.events[kind] = self.events.get(kind, 0) + 1

    # -- processing -----------------------------------------------------------------------
    def process(self, batch: list[Message]) -> list[Message]:
        out: list[Message] = []
        wait = self.params.await_detections
        for msg in batch:
            if isinstance(msg, Frame):
                if wait:
                    st = self._stream(msg.stream_id)
                    st.held.append(msg)
                    out.extend(self._release(st))
                else:
                    out.extend(self._on_frame(msg))
            elif isinstance(msg, TrackInit):
                self._on_init(msg)
                if wait and msg.frame_id:
                    st = self._stream(msg.stream_id)
                    st.arrived[msg.frame_id] = None
                    out.extend(self._release(st))
            elif isinstance(msg, Tracks):
                self._on_init(TrackInit(frame_id=msg.frame_id, stream_id=msg.stream_id, seq=-1,
                                        boxes=msg.boxes, target_ids=msg.track_ids))
            else:
                raise TypeError(f"track stage cannot handle a {msg.kind!r} message")
        return out

    def _release(self, st: StreamState) -> list[Message]:
        """Process the held frames, oldest first, whose detection record arrived (or that
        waited ``await_detections`` frames: the detect stage may be gone)."""
        out: list[Message] = []
        while st.held:
            f = st.held[0]
            if f.frame_id not in st.arrived and len(st.held) <= self.params.await_detections:
                break
            st.held.popleft()
            if f.frame_id not in st.arrived:
                self.late_inits += 1
                log.warning("no detection record for %s frame %s after %d frames: tracked "
                            "without", f.stream_id, f.frame_id, self.params.await_detections)
            st.arrived.pop(f.frame_id, None)
            out.extend(self._on_frame(f))
        while len(st.arrived) > 4 * self.params.await_detections + 64:  # records of frames
            del st.arrived[next(iter(st.arrived))]  # never seen here: forget the oldest
        return out

    def _start(self, st: StreamState, init: TrackInit, image: np.ndarray | None,
               cover: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
        """Apply an init record on ``image``; returns the ids of the targets (re)started.
        ``cover``: the targets' boxes and ids in ``image`` when it is an older frame
        (detections are judged against them, and confirm the target they cover)."""
        mt = st.multi
        if init.replace:
            keep = set(init.target_ids.tolist())
            for tid in [t for t in mt.tracks if t not in keep]:
                mt.stop(tid)
        for tid in init.drop_ids.tolist():
            mt.stop(int(tid))
            st.configured.pop(int(tid), None)
        started = []
        for box, tid in zip(init.boxes, init.target_ids.tolist()):
            tid = int(tid)
            if tid == TrackInit.NEW:  # by hand, the next free id
                started.append(mt.start(box, image=image))
                continue
            if tid < 0:  # a detection: the lifecycle decides (covered, re-acquired, new)
                before = {t: tr.tracker for t, tr in mt.tracks.items()}
                got = mt.detection(image, box, cover=None if cover is None else cover[0],
                                   cover_ids=None if cover is None else cover[1])
                if got is not None and got >= 0 and before.get(got) is not mt.tracks[got].tracker:
                    started.append(got)
                continue
            if tid not in mt.tracks and len(mt.tracks) >= self.params.max_targets:
                raise ValueError(f"stream {init.stream_id!r} already tracks "
                                 f"{self.params.max_targets} targets (max_targets)")
            mt.start(box, track_id=tid, image=image)
            st.configured.pop(tid, None)
            started.append(tid)
        self._count(mt.events)
        mt.events = []
        return started

    def _on_init(self, init: TrackInit) -> None:
        # Refused here, on arrival, so that the runner dead-letters the init record with its
        # reason; applied later, the error would take the frame it waited for with it.
        b = init.boxes
        if not np.isfinite(b).all() or (len(b) and not ((b[:, 2] > 0) & (b[:, 3] > 0)).all()):
            raise ValueError(f"track_init for {init.stream_id!r} frame {init.frame_id!r} has "
                             "a box that is not finite or not of positive size")
        st = self._stream(init.stream_id)
        if not len(init.boxes):  # stops only: nothing to place on a frame, apply now
            self._start(st, init, None)
            return
        buffered = [i for i, (seq, fid, _) in enumerate(st.buffer)
                    if fid == init.frame_id or (init.seq >= 0 and seq == init.seq)]
        if buffered:
            i = buffered[0]
            cover = self._remembered_boxes(st, st.buffer[i][1])
            started = self._start(st, init, st.buffer[i][2], cover=cover)
            self._catch_up(st, started, i)
            self._settle(st, started)
            return
        last = st.replay.last_seq
        unseen = last < 0 or (init.seq > last if init.seq >= 0 else True)
        if unseen:
            st.pending.append(_Pending(init))
            return
        # The frame is older than the buffer: apply on the newest frame we have.
        self.late_inits += 1
        log.warning("track_init for %s frame %s is older than the %d buffered frames: "
                    "applied to the newest frame %s", init.stream_id, init.frame_id,
                    len(st.buffer), st.buffer[-1][1] if st.buffer else "(none)")
        if st.buffer:
            self._settle(st, self._start(st, init, st.buffer[-1][2]))
        else:
            st.pending.append(_Pending(init))

    @staticmethod
    def _remembered_boxes(st: StreamState, frame_id: str
                          ) -> tuple[np.ndarray, np.ndarray] | None:
        """The tracked targets' boxes and ids output for ``frame_id`` (None: the newest
        frame, whose state is the trackers' own)."""
        if st.buffer and st.buffer[-1][1] == frame_id:
            return None
        states = [o for o in st.replay.outputs.get(frame_id, ()) if isinstance(o, TrackState)]
        if not states:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return (np.concatenate([o.boxes[~o.lost] for o in states]),
                np.concatenate([o.target_ids[~o.lost] for o in states]))

    def _catch_up(self, st: StreamState, ids: list[int], start: int) -> None:
        """Bring targets started on buffered frame ``start`` through the newer ones."""
        frames = list(st.buffer)[start:]
        trackers = [st.multi.tracks[t].tracker for t in ids if t in st.multi.tracks]
        if len(frames) < 2 or not trackers:
            return
        reg = Registration(st.multi.registration.similarity)
        reg.estimate(frames[0][2])
        for _, _, image in frames[1:]:
            a = reg.estimate(image)
            for tr in trackers:
                tr.update(image, motion=Motion(*displacement(a, tr.cx, tr.cy), 1.0))

    @staticmethod
    def _settle(st: StreamState, ids: list[int]) -> None:
        """Targets started on an already processed frame are up to date with the newest
        one: the next frame must update them (a target started on the frame being processed
        is not updated on it)."""
        for t in ids:
            if t in st.multi.tracks:
                st.multi.tracks[t].fresh = False

    def _due_inits(self, st: StreamState, frame: Frame, image: np.ndarray) -> np.ndarray:
        """Apply the init records due at this frame; returns the detections among them
        (negative ids), which the lifecycle takes after the trackers moved."""
        still: list[_Pending] = []
        dets = []
        for pend in st.pending:
            init = pend.init
            mine = init.frame_id == frame.frame_id or (init.seq >= 0 and init.seq == frame.seq)
            now = not init.frame_id and init.seq < 0  # "the next frame"
            overdue = (init.seq >= 0 and init.seq < frame.seq) or (
                init.seq < 0 and pend.frames_waited >= self.params.buffer_frames)
            if mine or now or overdue:
                if overdue and not (mine or now):
                    self.late_inits += 1
                    log.warning("track_init for %s frame %s never matched a frame: applied to "
                                "frame %s", init.stream_id, init.frame_id, frame.frame_id)
                neg = init.target_ids == TrackInit.DETECTION
                dets.append(init.boxes[neg])
                self._start(st, TrackInit(frame_id=init.frame_id, stream_id=init.stream_id,
                                          seq=init.seq, boxes=init.boxes[~neg],
                                          target_ids=init.target_ids[~neg],
                                          drop_ids=init.drop_ids, replace=init.replace), image)
            else:
                pend.frames_waited += 1
                still.append(pend)
        st.pending = still
        for tid, tgt in list(st.configured.items()):
            if tgt.seq == frame.seq:
                self._start(st, TrackInit(frame_id=frame.frame_id, stream_id=frame.stream_id,
                                          seq=frame.seq, boxes=np.asarray([tgt.box]),
                                          target_ids=np.asarray([tid])), image)
        return np.concatenate(dets) if dets else np.zeros((0, 4), np.float32)

    def _on_frame(self, frame: Frame) -> list[Message]:
        st = self._stream(frame.stream_id)
        again = st.replay.answer(frame)
        if again is not None:
            self.redeliveries += 1
            if not again:
                log.info("skipping %s: already past seq %d of stream %s", frame.frame_id,
                         st.replay.last_seq, frame.stream_id)
            return again
        image = frame.image
        st.frames += 1
        dets = self._due_inits(st, frame, image)
        mt = st.multi
        mt.step(image, detections=dets)
        self._count(mt.events)
        ids, boxes, scores, lost = [], [], [], []
        for tid, t in mt.tracks.items():
            ids.append(tid)
            boxes.append(t.box)
            scores.append(1.0 if t.fresh else t.score)
            lost.append(t.lost)
            t.fresh = False
        for tid, tgt in sorted(st.configured.items()):
            if tgt.seq < frame.seq:  # its frame is gone: waiting for an explicit init
                ids.append(tid)
                boxes.append((math.nan,) * 4)
                scores.append(0.0)
                lost.append(True)

        out: list[Message] = []
        if ids:
            order = np.argsort(ids, kind="stable")
            state = TrackState(
                frame_id=frame.frame_id, stream_id=frame.stream_id, seq=frame.seq,
                target_ids=np.asarray(ids, np.int64)[order],
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4)[order],
                scores=np.asarray(scores, np.float32)[order],
                lost=np.asarray(lost, bool)[order])
            out.append(state)
            if self.boxes_record:
                ok = ~state.lost
                out.append(Tracks(frame_id=frame.frame_id, stream_id=frame.stream_id,
                                  boxes=state.boxes[ok], track_ids=state.target_ids[ok],
                                  scores=state.scores[ok]))
            if self.crops:
                out.extend(self._crops(frame, image, state))

        st.buffer.append((frame.seq, frame.frame_id, image))
        st.replay.record(frame, out)
        return out

    def _crops(self, frame: Frame, image: np.ndarray, state: TrackState) -> list[Message]:
        import cv2

        H, W = image.shape[:2]
        out: list[Message] = []
        mg = self.params.crop_margin
        ctype = PNG if self.params.crop_format == "png" else JPEG
        for tid, box, is_lost in zip(state.target_ids, state.boxes, state.lost):
            if is_lost or not np.isfinite(box).all():
                continue
            x, y, w, h = (float(v) for v in box)
            x0 = max(0, int(math.floor(x - mg * w)))
            y0 = max(0, int(math.floor(y - mg * h)))
            x1 = min(W, int(math.ceil(x + w + mg * w)))
            y1 = min(H, int(math.ceil(y + h + mg * h)))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            crop = image[y0:y1, x0:x1]
            if self.params.crop_size:
                n = self.params.crop_size
                crop = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA
                                  if min(crop.shape[:2]) > n else cv2.INTER_LINEAR)
            out.append(Frame.from_image(crop, frame.stream_id, frame.seq,
                                        timestamp_ms=frame.timestamp_ms, content_type=ctype,
                                        frame_id=f"{frame.frame_id}#t{int(tid)}"))
        return out


@register_stage("track_crops")
class TrackCropStage(TrackStage):
    """The track stage that also emits a crop :class:`Frame` per tracked target."""

    emits: ClassVar[tuple[str, ...]] = ("track_state", "frame")
    crops: ClassVar[bool] = True


@register_stage("track_boxes")
class TrackBoxesStage(TrackStage):
    """The track stage that also emits the standard ``tracks`` record (tracked, not lost,
    targets) that the features stage crops from (``crops: true``)."""

    emits: ClassVar[tuple[str, ...]] = ("track_state", "tracks")
    boxes_record: ClassVar[bool] = True
