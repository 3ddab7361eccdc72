"""Detect stage: small moving objects become ``track_init`` records (issue 23, item 1).

Frames in, :class:`~vistream.stages.records.TrackInit` records out. Per stream a
:class:`~vistream.models.tracking.discovery.MotionDetector` (camera-motion compensated
three-frame differencing, size and persistence filters) finds the movers of each frame; a
mover is announced as a ``track_init`` whose target ids are **-1**: a detection, not an id.
The track stage owns the lifecycle (ids, lost, ended, re-acquisition by signature): it starts
a new target, re-acquires a lost one that keeps its id, or does nothing when a live target
already covers the box. So this stage never decides an id and needs no feedback to be
correct.

Choices made:

* **What is announced**: a confirmed mover (the detector's persistence filter: seen in k of
  the last n frames at consistent positions) is announced once, when first confirmed, and
  again every ``reannounce_frames`` frames while it is still seen and not known to be
  covered. Re-announcing is what lets a target the track stage lost be re-acquired.
* **Coverage** (optional, cuts traffic): wire the track stage's ``track_state`` (or
  ``tracks``) records into this stage too; a mover within a tracked target's box (IoU or
  centre distance, as in the lifecycle) of the latest such record of its stream is not
  announced. The state may be a few frames old; the track stage judges coverage again, so
  a stale state costs a redundant record, never a duplicate target.
* One record per frame with new movers (boxes of that frame, its frame id and ``seq``);
  none when nothing is new, or an empty one with ``every_frame`` (a track stage with
  ``await_detections`` then knows that the frame's detections are all there: it holds a
  frame until its record arrives, so detections are applied on their frame, in order,
  whichever stage runs ahead).
* Idempotent by frame id: a redelivered frame gets its remembered output again; an older
  frame no longer remembered is skipped.
* State (detector history, candidates) lives in the stage object and is lost on restart:
  the detector needs ``max(refs)`` frames again before it can report anything.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from vistream.stages.base import Stage, StageParams, register_stage
from vistream.stages.replay import FrameReplay
from vistream.stages.records import Frame, Message, TrackInit, Tracks

log = logging.getLogger("vistream.stages.detect")

__all__ = ["DetectParams", "DetectStage"]


class DetectParams(StageParams):
    discovery: dict[str, Any] = Field(default_factory=dict,
                                      description="DiscoveryParams overrides (refs, "
                                                  "min_threshold, persist_k, ...)")
    reannounce_frames: int = Field(30, ge=1, le=100_000,
                                   description="a mover still seen and not covered is "
                                               "announced again after this many frames")
    max_per_frame: int = Field(16, ge=1, le=1024, description="movers announced per frame")
    cover_px: float = Field(8.0, ge=0, description="centre distance that counts as covered "
                                                   "(at least the target's size)")
    remember_frames: int = Field(64, ge=1, le=100_000,
                                 description="outputs kept per stream to answer redeliveries")
    every_frame: bool = Field(False, description="one record per frame, an empty one when "
                                                 "nothing is announced (a track stage with "
                                                 "await_detections waits for it)")

    @field_validator("discovery")
    @classmethod
    def _known(cls, value: dict[str, Any]) -> dict[str, Any]:
        # the field names only: the models are imported in setup()
        known = {"similarity", "color", "refs", "min_threshold", "n_sigma", "max_foreground",
                 "min_size", "max_size", "min_area", "join_px", "persist_k", "persist_n",
                 "max_misses", "gate_px", "gate_factor", "max_candidates",
                 "motion_downsample", "motion_min_response", "edge_tolerance", "jump_px",
                 "box_level", "border", "early_refs", "strong_ratio", "strong_k",
                 "settle_after_jump", "extent_frames", "absorb_margin", "merge_gap",
                 "merge_size"}
        bad = sorted(set(value) - known)
        if bad:
            raise ValueError(f"unknown discovery settings {bad}; known: {sorted(known)}")
        return value


@dataclass
class _Stream:
    detector: Any
    replay: FrameReplay
    announced: dict[int, int] = field(default_factory=dict)  # candidate id -> seq
    covered: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    frames: int = 0


def _covered(box: np.ndarray, boxes: np.ndarray, cover_px: float) -> bool:
    x, y, w, h = (float(v) for v in box)
    for bx, by, bw, bh in boxes.tolist():
        if not all(map(math.isfinite, (bx, by, bw, bh))):
            continue
        d = math.hypot(bx + bw / 2 - x - w / 2, by + bh / 2 - y - h / 2)
        ix = min(x + w, bx + bw) - max(x, bx)
        iy = min(y + h, by + bh) - max(y, by)
        if d <= max(cover_px, bw, bh) or (ix > 0 and iy > 0):
            return True
    return False


@register_stage("detect")
class DetectStage(Stage):
    """Small moving objects -> ``track_init`` detections (target id -1); module docstring."""

    accepts = ("frame", "track_state", "tracks")
    emits: ClassVar[tuple[str, ...]] = ("track_init",)
    Params = DetectParams

    def __init__(self, params: DetectParams | None = None) -> None:
        super().__init__(params)
        self.streams: dict[str, _Stream] = {}
        self.redeliveries = 0
        self.announced = 0
        self._make = None

    def setup(self) -> None:
        # deferred: the detector loads OpenCV; listing stage types and validating configs
        # stays fast
        from vistream.models.tracking.discovery import DiscoveryParams, MotionDetector

        disc = dict(self.params.discovery)
        if "refs" in disc:
            disc["refs"] = tuple(disc["refs"])
        params = DiscoveryParams(**disc)
        self._make = lambda: MotionDetector(params)

    def summary(self) -> dict[str, Any]:
        return {"streams": {s: {"frames": st.frames, "candidates": len(st.detector.candidates)}
                            for s, st in self.streams.items()},
                "announced": self.announced, "redeliveries": self.redeliveries}

    def _stream(self, stream_id: str) -> _Stream:
        st = self.streams.get(stream_id)
        if st is None:
            if self._make is None:
                self.setup()
            st = self.streams[stream_id] = _Stream(self._make(),
                                                         FrameReplay(self.params.remember_frames))
        return st

    def process(self, batch: list[Message]) -> list[Message]:
        out: list[Message] = []
        for msg in batch:
            if isinstance(msg, Frame):
                out.extend(self._on_frame(msg))
            elif isinstance(msg, Tracks) or msg.kind == "track_state":
                boxes = np.asarray(msg.boxes, np.float32).reshape(-1, 4)
                lost = getattr(msg, "lost", None)
                if lost is not None:
                    boxes = boxes[~np.asarray(lost, bool)]
                self._stream(msg.stream_id).covered = boxes
            else:
                raise TypeError(f"detect stage cannot handle a {msg.kind!r} message")
        return out

    def _on_frame(self, frame: Frame) -> list[Message]:
        st = self._stream(frame.stream_id)
        again = st.replay.answer(frame)
        if again is not None:
            self.redeliveries += 1
            return again
        st.frames += 1
        boxes = st.detector.update(frame.image)
        new = []
        for box, cid in zip(boxes, st.detector.ids.tolist()):
            last = st.announced.get(cid)
            if last is not None and frame.seq - last < self.params.reannounce_frames:
                continue
            if _covered(box, st.covered, self.params.cover_px):
                st.announced[cid] = frame.seq  # a live target has it: look again later
                continue
            new.append(box)
            st.announced[cid] = frame.seq
            if len(new) >= self.params.max_per_frame:
                break
        live = {c.cid for c in st.detector.candidates}
        st.announced = {c: s for c, s in st.announced.items() if c in live}
        out: list[Message] = []
        if new or self.params.every_frame:
            self.announced += len(new)
            out.append(TrackInit(frame_id=frame.frame_id, stream_id=frame.stream_id,
                                 seq=frame.seq, boxes=np.asarray(new, np.float32).reshape(-1, 4),
                                 target_ids=np.full(len(new), -1, np.int64)))
        st.replay.record(frame, out)
        return out
