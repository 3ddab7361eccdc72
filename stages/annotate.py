"""Annotate stage: frames + tracks + captions -> annotated frames (issue 24, item 2).

It takes frames (the ingested ones, or the deblur stage's output), the track stage's
``track_state`` records (or plain ``tracks`` records) and ``caption`` records, and emits one
annotated :class:`~vistream.stages.records.Frame` per frame: same frame id, stream, sequence
number and timestamp, re-encoded (JPEG at ``quality``), with

* each tracked target's box and id (a colour per id; a lost target's last box thin and grey,
  ``lost`` written beside it), from the frame's own track record;
* the caption of the frame, if it has one, at the bottom; it stays on the stream's following
  ``caption_frames`` frames (marked with the frame it came from), so a video shows it long
  enough to read;
* the stream id and sequence number at the top left.

Inputs arrive on different topics, so any of them may come late. Choices made:

* A frame waits (bounded) for its track record. It is drawn and emitted when that record
  arrives, or when a track record of a *later* frame of its stream arrives (the track stage
  works through a stream in order and writes nothing for a frame without targets, so no
  record will come), or when ``max_wait`` later frames of its stream have arrived, or when
  the wait cache is full (the oldest goes first). Nothing is dropped.
* At the end of a stream nothing comes to release its last frames when they have no targets:
  :meth:`AnnotateStage.flush` draws every frame still waiting (``vistream demo`` calls it once
  the clip is through and produces what it returns).
* A track record whose frame has not arrived waits (bounded, ``cache_frames``) for it.
* A caption or track record for a frame already emitted, while the frame is still cached,
  re-emits the frame with it (same frame id: a consumer keeps the latest copy, see
  ``vistream record``). Later than that it is counted in ``late`` and only shown on the
  following frames (captions).
* Idempotent by frame id: a redelivered frame is drawn again from what is known, identical.

Pure drawing with OpenCV; no model, no bus.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from vistream.stages.base import Stage, StageParams, register_stage
from vistream.stages.records import Caption, Frame, Message, Tracks, encode_image

__all__ = ["AnnotateParams", "AnnotateStage", "draw_annotations", "id_colour"]


class AnnotateParams(StageParams):
    tracks: bool = Field(True, description="wait for each frame's track record (false: draw "
                                           "frames as they come, with whatever is known)")
    max_wait: int = Field(8, ge=0, le=10_000, description="a frame waits for its track record "
                                                          "until this many later frames came "
                                                          "(at most cache_frames)")
    cache_frames: int = Field(64, ge=1, le=100_000,
                              description="frames (encoded) and early track records kept per "
                                          "stream")
    caption_frames: int = Field(25, ge=0, le=100_000,
                                description="a caption stays on this many following frames")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of annotated frames")
    thickness: int = Field(1, ge=1, le=16, description="box line width (px)")
    font_scale: float = Field(0.45, gt=0, le=8, description="text size (OpenCV font scale)")
    labels: dict[int, str] = Field(default_factory=dict,
                                   description="track id -> name written next to the id")


def id_colour(track_id: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per track id (golden-ratio hues)."""
    import cv2

    hue = int((track_id * 0.618033988749895 % 1.0) * 180)
    px = np.array([[[hue, 220, 255]]], np.uint8)
    b, g, r = (int(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


@dataclass
class _Track:
    ids: np.ndarray
    boxes: np.ndarray
    lost: np.ndarray


def _as_track(msg: Message) -> _Track:
    boxes = np.asarray(msg.boxes, np.float32).reshape(-1, 4)
    ids = np.asarray(getattr(msg, "target_ids", getattr(msg, "track_ids", ())),
                     np.int64).reshape(-1)
    lost = np.asarray(getattr(msg, "lost", np.zeros(len(boxes), bool)), bool).reshape(-1)
    n = min(len(boxes), len(ids), len(lost)) if len(lost) else min(len(boxes), len(ids))
    if len(lost) < n:
        lost = np.zeros(n, bool)
    return _Track(ids[:n], boxes[:n], lost[:n])


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float,
          colour: tuple[int, int, int]) -> None:
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), base = cv2.getTextSize(text, font, scale, 1)
    x, y = org
    y = max(y, h + 2)
    x = int(np.clip(x, 0, max(0, img.shape[1] - w - 1)))
    cv2.rectangle(img, (x - 1, y - h - 2), (x + w + 1, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y), font, scale, colour, 1, cv2.LINE_AA)


def draw_annotations(image: np.ndarray, track: _Track | None, caption: str | None,
                     header: str, thickness: int = 1, font_scale: float = 0.45,
                     labels: dict[int, str] | None = None) -> np.ndarray:
    """A copy of ``image`` (BGR) with boxes, ids, the caption and a header line."""
    import cv2

    img = image.copy()
    if track is not None:
        for tid, box, lost in zip(track.ids.tolist(), track.boxes, track.lost.tolist()):
            if not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
                continue
            x, y, w, h = (float(v) for v in box)
            p0, p1 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
            colour = (150, 150, 150) if lost else id_colour(tid)
            # a small target gets a box a few px larger, so the line does not hide it
            pad = 2 if max(w, h) < 16 else 0
            cv2.rectangle(img, (p0[0] - pad, p0[1] - pad), (p1[0] + pad, p1[1] + pad), colour,
                          1 if lost else thickness, cv2.LINE_AA)
            name = (labels or {}).get(tid)
            text = f"#{tid}" + (f" {name}" if name else "") + (" lost" if lost else "")
            _text(img, text, (p0[0] - pad, p0[1] - pad - 3), font_scale, colour)
    _text(img, header, (4, 4), font_scale, (255, 255, 255))
    if caption:
        _text(img, caption, (4, img.shape[0] - 6), font_scale, (80, 255, 255))
    return img


@dataclass
class _Stream:
    frames: OrderedDict = field(default_factory=OrderedDict)  # frame id -> Frame (waiting or sent)
    sent: set = field(default_factory=set)
    tracks: OrderedDict = field(default_factory=OrderedDict)  # frame id -> _Track
    captions: OrderedDict = field(default_factory=OrderedDict)  # frame id -> (seq, text)
    newest_track_seq: int = -1
    newest_frame_seq: int = -1


@register_stage("annotate")
class AnnotateStage(Stage):
    """Frames + track records + captions -> annotated frames; see the module docstring."""

    accepts: ClassVar[tuple[str, ...]] = ("frame", "track_state", "tracks", "caption")
    emits: ClassVar[tuple[str, ...]] = ("frame",)
    Params = AnnotateParams

    def __init__(self, params: AnnotateParams | None = None) -> None:
        super().__init__(params)
        self.streams: dict[str, _Stream] = {}
        self.emitted = 0
        self.redrawn = 0
        self.late = 0

    def summary(self) -> dict[str, Any]:
        return {"emitted": self.emitted, "redrawn": self.redrawn, "late": self.late}

    def _stream(self, stream_id: str) -> _Stream:
        return self.streams.setdefault(stream_id, _Stream())

    def process(self, batch: list[Message]) -> list[Message]:
        out: dict[str, Frame] = {}  # a frame drawn twice in one batch is emitted once
        touched: set[str] = set()
        for msg in batch:
            st = self._stream(msg.stream_id)
            touched.add(msg.stream_id)
            if isinstance(msg, Frame):
                self._on_frame(st, msg, out)
            elif isinstance(msg, Caption):
                self._on_caption(st, msg, out)
            elif isinstance(msg, Tracks) or msg.kind == "track_state":
                self._on_track(st, msg, out)
            else:
                raise TypeError(f"the annotate stage does not take {msg.kind!r} records")
        for sid in touched:
            self._release(self.streams[sid], out)
        return sorted(out.values(), key=lambda f: (f.stream_id, f.seq))

    def flush(self) -> list[Frame]:
        """Draw every frame still waiting for a track record (the streams have ended)."""
        out: dict[str, Frame] = {}
        for st in self.streams.values():
            for fid, f in list(st.frames.items()):
                if fid not in st.sent:
                    self._draw(st, f, out)
        return sorted(out.values(), key=lambda f: (f.stream_id, f.seq))

    # -- inputs ---------------------------------------------------------------------------
    def _on_frame(self, st: _Stream, frame: Frame, out: dict[str, Frame]) -> None:
        p: AnnotateParams = self.params  # type: ignore[assignment]
        st.frames[frame.frame_id] = frame
        st.frames.move_to_end(frame.frame_id)
        st.newest_frame_seq = max(st.newest_frame_seq, frame.seq)
        if frame.frame_id in st.sent or not p.tracks or frame.frame_id in st.tracks:
            self._draw(st, frame, out)

    def _on_track(self, st: _Stream, msg: Message, out: dict[str, Frame]) -> None:
        p: AnnotateParams = self.params  # type: ignore[assignment]
        st.tracks[msg.frame_id] = _as_track(msg)
        st.tracks.move_to_end(msg.frame_id)
        while len(st.tracks) > p.cache_frames:
            st.tracks.popitem(last=False)
        seq = getattr(msg, "seq", None)
        frame = st.frames.get(msg.frame_id)
        if seq is None and frame is not None:
            seq = frame.seq
        if seq is not None:
            st.newest_track_seq = max(st.newest_track_seq, int(seq))
        if frame is not None:
            self._draw(st, frame, out)
        elif self._was_evicted(st, seq):
            self.late += 1

    def _on_caption(self, st: _Stream, msg: Caption, out: dict[str, Frame]) -> None:
        p: AnnotateParams = self.params  # type: ignore[assignment]
        frame = st.frames.get(msg.frame_id)
        seq = frame.seq if frame is not None else _seq_of(msg.frame_id)
        st.captions[msg.frame_id] = (seq, msg.text)
        while len(st.captions) > p.cache_frames:
            st.captions.popitem(last=False)
        if frame is not None and (frame.frame_id in st.sent or not p.tracks):
            self._draw(st, frame, out)
            for fid, f in st.frames.items():  # the following frames already drawn show it too
                if fid in st.sent and seq is not None and 0 < f.seq - seq <= p.caption_frames:
                    self._draw(st, f, out)
        elif frame is None and self._was_evicted(st, seq):
            self.late += 1

    # -- output ---------------------------------------------------------------------------
    def _was_evicted(self, st: _Stream, seq: int | None) -> bool:
        return (seq is not None and bool(st.frames)
                and seq < min(f.seq for f in st.frames.values()))

    def _release(self, st: _Stream, out: dict[str, Frame]) -> None:
        """Draw the waiting frames no track record will come for; bound the caches."""
        p: AnnotateParams = self.params  # type: ignore[assignment]
        for fid, f in list(st.frames.items()):
            if fid in st.sent:
                continue
            if (f.seq < st.newest_track_seq
                    or st.newest_frame_seq - f.seq >= max(p.max_wait, 1) or not p.tracks):
                self._draw(st, f, out)
        while len(st.frames) > p.cache_frames:
            fid, f = st.frames.popitem(last=False)
            if fid not in st.sent:
                self._draw(st, f, out)
            st.sent.discard(fid)

    def _caption_for(self, st: _Stream, frame: Frame) -> str | None:
        p: AnnotateParams = self.params  # type: ignore[assignment]
        own = st.captions.get(frame.frame_id)
        if own is not None:
            return own[1]
        best = None
        for seq, text in st.captions.values():
            if (seq is not None and 0 < frame.seq - seq <= p.caption_frames
                    and (best is None or seq > best[0])):
                best = (seq, f"{text} (frame {seq})")
        return None if best is None else best[1]

    def _draw(self, st: _Stream, frame: Frame, out: dict[str, Frame]) -> None:
        p: AnnotateParams = self.params  # type: ignore[assignment]
        img = draw_annotations(frame.image, st.tracks.get(frame.frame_id),
                               self._caption_for(st, frame), f"{frame.stream_id} #{frame.seq}",
                               p.thickness, p.font_scale, p.labels)
        if frame.frame_id in st.sent:
            self.redrawn += 1
        else:
            self.emitted += 1
            st.sent.add(frame.frame_id)
        out[frame.frame_id] = Frame(frame_id=frame.frame_id, stream_id=frame.stream_id,
                                    seq=frame.seq, timestamp_ms=frame.timestamp_ms,
                                    data=encode_image(img, frame.content_type, p.quality),
                                    content_type=frame.content_type)
        frame._image = None  # the cache keeps encoded bytes only; a redraw decodes again


def _seq_of(frame_id: str) -> int | None:
    """The sequence number in a ``stream:00000042`` frame id, if it has that form."""
    tail = frame_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None
