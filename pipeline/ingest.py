"""Ingest: read a video file, a camera or an image folder and produce frame records.

Each frame is JPEG-encoded (``quality``) into a :class:`~vistream.stages.records.Frame` keyed by the
stream id, so one stream stays ordered on one partition. The capture timestamp is the wall
clock when ingest started plus the frame's position in the source (for files), or the wall
clock at capture (cameras, folders). ``fps`` paces sending to that rate (a recorded video
replayed as if live); without it frames go as fast as they can be read and encoded.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vistream.pipeline.bus import Producer
from vistream.pipeline.sources import FrameSource, open_source
from vistream.pipeline.wire import frame_to_record
from vistream.stages.records import Frame, now_ms

log = logging.getLogger("vistream.ingest")

FLUSH_EVERY = 64


@dataclass
class IngestReport:
    source: str
    topic: str
    stream_id: str
    frames_sent: int
    bytes_sent: int
    skipped: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames_sent / self.seconds if self.seconds > 0 else 0.0


def default_stream_id(source: str | int) -> str:
    text = str(source)
    if text.isdigit() or text.startswith("camera:"):
        return "camera" + text.removeprefix("camera:")
    return Path(text).stem or "stream"


def ingest(
    source: str | int | Path | FrameSource,
    producer: Producer,
    topic: str = "frames",
    stream_id: str | None = None,
    fps: float | None = None,
    quality: int = 90,
    limit: int | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> IngestReport:
    """Send the frames of ``source`` (a path, a camera index or an opened source) to ``topic``.

    Raises :class:`vistream.pipeline.sources.SourceError` when the source cannot be read.
    """
    if not 1 <= quality <= 100:
        raise ValueError("JPEG quality must be between 1 and 100")
    if fps is not None and fps <= 0:
        raise ValueError("fps must be positive")
    src = source if isinstance(source, FrameSource) else open_source(source)
    stream = stream_id or default_stream_id(src.name)
    sent = nbytes = 0
    t0 = time.monotonic()
    start_ms = now_ms()
    with src:
        total = src.length if limit is None else min(limit, src.length or limit)
        bar = tqdm(total=total, unit="frame", desc=f"ingest {stream}", disable=not progress,
                   leave=False)
        try:
            for frame in src:
                if stop is not None and stop.is_set():
                    break
                if limit is not None and sent >= limit:
                    break
                if fps is not None:
                    # Pace against the schedule, not the previous frame, so jitter never adds up.
                    delay = t0 + sent / fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                ts = (start_ms + int(frame.timestamp * 1000)
                      if frame.timestamp is not None else now_ms())
                env = Frame.from_image(frame.image, stream, seq=frame.index, timestamp_ms=ts,
                                       quality=quality)
                rec = frame_to_record(env)
                producer.send(topic, rec.value, rec.key, rec.headers)
                sent += 1
                nbytes += len(rec.value)
                bar.update(1)
                if sent % FLUSH_EVERY == 0:
                    producer.flush()
            producer.flush()
        finally:
            bar.close()
        skipped = getattr(src, "skipped", 0)
        name = src.name
    report = IngestReport(name, topic, stream, sent, nbytes, skipped, time.monotonic() - t0)
    log.info("ingest finished", extra={"source": name, "topic": topic, "stream": stream,
                                       "frames": sent, "skipped": skipped,
                                       "seconds": round(report.seconds, 2)})
    return report
