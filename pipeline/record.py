"""Record a frames topic into a video file (``vistream record TOPIC OUT.mp4``, ``make demo``).

It reads the topic from its oldest record with a consumer group of its own (nothing is
committed, so it never moves another reader), and stops at the *end of the topic*: the end
offsets taken when it starts, so a topic that is still written to does not keep it running
(``max_frames`` stops it earlier). Choices made:

* One stream per file: frames of ``stream_id``, or of the first stream met when none is given;
  frames of other streams are counted in ``other_streams``.
* Frames are written in sequence order through a reorder window of ``reorder`` frames
  (partitions interleave; a stage may re-emit a frame). A frame id seen again while still in
  the window replaces the earlier copy (the latest copy wins, as the annotate stage's redrawn
  frames want); a frame older than the last written one is counted in ``late`` and skipped.
* Size: the first frame's; a frame of another size is resized to it.
* Codec: ``mp4v`` for ``.mp4``/``.m4v``/``.mov``, falling back to MJPG in an ``.avi`` beside it
  when OpenCV cannot open that writer; MJPG for ``.avi``.
* A record that does not decode as a frame is counted in ``undecodable`` and skipped.
"""

from __future__ import annotations

import heapq
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vistream.pipeline.bus import Bus
from vistream.pipeline.wire import Record, decode_message
from vistream.stages.records import Frame, InvalidRecord

__all__ = ["RecordReport", "VideoSink", "record_topic"]

_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


@dataclass
class RecordReport:
    path: Path
    frames: int = 0
    stream_id: str | None = None
    late: int = 0
    replaced: int = 0
    undecodable: int = 0
    other_streams: int = 0
    size: tuple[int, int] | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class VideoSink:
    """A cv2.VideoWriter opened on the first frame (its size), with the .avi fallback."""

    def __init__(self, path: str | Path, fps: float = 25.0) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in _CODECS:
            raise ValueError(f"unsupported video extension {self.path.suffix!r}: use .mp4 or .avi")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, size: tuple[int, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        attempts = [(_CODECS[self.path.suffix.lower()], self.path)]
        if attempts[0][0] != "MJPG":
            attempts.append(("MJPG", self.path.with_suffix(".avi")))
        for fourcc, target in attempts:
            w = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), float(self.fps), size)
            if w.isOpened():
                self.writer, self.size, self.path = w, size, target
                return
            w.release()
            target.unlink(missing_ok=True)
        raise OSError(f"OpenCV could not open a video writer for {self.path}")

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self.writer is None:
            self._open((w, h))
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)  # type: ignore[union-attr]
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def _end_offsets(bus: Bus, topic: str) -> dict[int, int]:
    try:
        return bus.end_offsets(topic)
    except Exception as exc:  # an unknown topic: say so in one line
        raise ValueError(f"cannot read topic {topic!r}: {exc}") from exc


def record_topic(bus: Bus, topic: str, out: str | Path, *, fps: float = 25.0,
                 max_frames: int | None = None, stream_id: str | None = None,
                 reorder: int = 64, idle_timeout: float = 10.0, progress: bool = False,
                 group_id: str | None = None) -> RecordReport:
    """Write the frames of ``topic`` (as they stand now) to ``out``; see the module docstring.

    ``idle_timeout``: give up waiting for the rest of the topic after this many seconds
    without a record (a partition no consumer is assigned, a broker gone)."""
    if max_frames is not None and max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    if reorder < 1:
        raise ValueError("reorder must be at least 1")
    t0 = time.monotonic()
    ends = {p: o for p, o in _end_offsets(bus, topic).items() if o > 0}
    total = sum(ends.values())
    target = total if max_frames is None else min(max_frames, total)
    sink = VideoSink(out, fps)
    report = RecordReport(Path(out))
    heap: list[tuple[int, str]] = []
    window: dict[str, Frame] = {}
    last_seq = -1
    group = group_id or f"vistream-record-{uuid.uuid4().hex[:8]}"
    bar = tqdm(total=target, unit="frame", desc=f"record {topic}", disable=not progress,
               leave=False)

    def flush(keep: int) -> None:
        nonlocal last_seq
        while len(heap) > keep and (max_frames is None or sink.frames < max_frames):
            seq, fid = heapq.heappop(heap)
            frame = window.pop(fid)
            last_seq = seq
            try:
                image = frame.image  # decoded only now: the window holds encoded frames
            except InvalidRecord:
                report.undecodable += 1
                continue
            sink.write(image)
            bar.update(1)

    try:
        with bus.consumer([topic], group) as consumer:
            positions: dict[int, int] = {}
            idle_since = time.monotonic()
            while ends and any(positions.get(p, 0) < o for p, o in ends.items()):
                if max_frames is not None and sink.frames + len(heap) >= max_frames + reorder:
                    break
                records = consumer.poll(256, 0.2)
                if not records:
                    if time.monotonic() - idle_since > idle_timeout:
                        report.problems.append(f"no record for {idle_timeout:.0f} s before the "
                                               "end of the topic; stopped")
                        break
                    continue
                idle_since = time.monotonic()
                for r in records:
                    positions[r.partition] = max(positions.get(r.partition, 0), r.offset + 1)
                    if r.offset >= ends.get(r.partition, 0):
                        continue  # written after we started
                    last_seq = _take(r, report, heap, window, last_seq, stream_id)
                    stream_id = report.stream_id
                flush(reorder)
            flush(0)
    finally:
        bar.close()
        sink.close()
    report.path, report.frames, report.size = sink.path, sink.frames, sink.size
    report.seconds = time.monotonic() - t0
    return report


def _take(r: Record, report: RecordReport, heap: list, window: dict[str, Frame], last_seq: int,
          stream_id: str | None) -> int:
    """Put one record into the reorder window; returns the (unchanged) last written seq."""
    try:
        msg = decode_message(Record(r.topic, r.partition, r.offset, r.key, r.value, r.headers),
                             accept=("frame",))
        assert isinstance(msg, Frame)
    except (InvalidRecord, AssertionError):
        report.undecodable += 1
        return last_seq
    if report.stream_id is None:
        report.stream_id = stream_id or msg.stream_id
    if msg.stream_id != report.stream_id:
        report.other_streams += 1
        return last_seq
    if msg.seq <= last_seq:
        report.late += 1
        return last_seq
    if msg.frame_id in window:
        report.replaced += 1
    else:
        heapq.heappush(heap, (msg.seq, msg.frame_id))
    window[msg.frame_id] = msg
    return last_seq
