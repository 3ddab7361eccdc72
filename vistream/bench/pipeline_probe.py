"""Instruments of ``vistream bench pipeline`` (:mod:`vistream.bench.pipeline`).

* :class:`LoopSource`: a decoded clip replayed in a loop as a live source (no timestamps of its
  own, so :func:`pipeline.ingest.ingest` stamps each frame with the wall clock as it sends it).
* :class:`Tracker` with :class:`RecordingProducer`: every frame ingest sends (frame id, ingest
  time from the record's ``ts_ms`` header) and the wall-clock time it became searchable, found
  by asking the index (``GET /search/frame`` on Kafka, the live index itself on the memory
  bus) about the oldest frame not yet found, every ``tick`` seconds.
* :func:`cpu_seconds`: user + system CPU time of a process or of one thread, from /proc.
* :func:`bench_config`: the config under test made private to one run (topics and groups
  suffixed with a run id, no sources, no metrics port) for Kafka or for the memory bus.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vistream.pipeline.bus import Producer
from vistream.pipeline.config import PipelineConfig, parse_config
from vistream.pipeline.sources import FrameSource

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: str | Path) -> float | None:
    """utime + stime of ``/proc/<pid>/stat`` or ``/proc/<pid>/task/<tid>/stat``; None once
    the process or thread is gone."""
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # field 3 (state) onwards
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; not idle, not iowait) since boot,
    from /proc/stat: with the pipeline's own CPU it tells how much other work took."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user time
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


class LoopSource(FrameSource):
    """``frames`` images of ``clip``, looped; no timestamps (ingest stamps the send time)."""

    def __init__(self, clip: list[np.ndarray], frames: int, name: str = "bench-clip") -> None:
        super().__init__(name, fps=None, length=frames)
        self._clip = clip
        self._frames = frames

    def _read(self) -> tuple[np.ndarray, float | None]:
        if self._index >= self._frames:
            raise StopIteration
        return self._clip[self._index % len(self._clip)], None


class Tracker:
    """Frames sent, in send order, and when each became searchable (ms since the epoch).

    The poller asks about the oldest frame not yet found and walks forward while the answer is
    yes, then sleeps ``tick``. A frame that became searchable before an older one is therefore
    seen no earlier than the older one: latencies are upper bounds, with a resolution of
    ``tick`` (frames of one stream reach the index in order on one partition, so this is rare).
    """

    def __init__(self, searchable: Callable[[str], bool], tick: float = 0.02) -> None:
        self.searchable = searchable
        self.tick = tick
        self._lock = threading.Lock()
        self.frame_ids: list[str] = []
        self.sent_ms: list[int] = []
        self.found_ms: list[float] = []
        self.checks = 0
        self.error: BaseException | None = None

    def add(self, frame_id: str, ts_ms: int) -> None:
        with self._lock:
            self.frame_ids.append(frame_id)
            self.sent_ms.append(ts_ms)

    @property
    def sent(self) -> int:
        return len(self.frame_ids)

    @property
    def found(self) -> int:
        return len(self.found_ms)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                while self.found < self.sent and not stop.is_set():
                    self.checks += 1
                    if not self.searchable(self.frame_ids[self.found]):
                        break
                    self.found_ms.append(time.time() * 1000.0)
                stop.wait(self.tick)
        except BaseException as exc:  # noqa: BLE001 - reported by the bench, which stops
            self.error = exc

    def latencies_ms(self, start: int, end: int) -> np.ndarray:
        """Ingest-to-searchable of the found frames among sent frames [start, end)."""
        found = min(end, self.found)
        if found <= start:
            return np.zeros(0)
        return (np.asarray(self.found_ms[start:found])
                - np.asarray(self.sent_ms[start:found], np.float64))


class RecordingProducer(Producer):
    """Passes records on to ``inner`` and tells ``tracker`` each frame's id and ingest time."""

    def __init__(self, inner: Producer, tracker: Tracker) -> None:
        self.inner = inner
        self.tracker = tracker

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers=None) -> None:
        self.inner.send(topic, value, key, headers)
        h = {k: v for k, v in headers or ()}
        self.tracker.add(h["frame_id"].decode(), int(h["ts_ms"]))

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout)

    def close(self) -> None:
        self.inner.close()


def index_stage(cfg: PipelineConfig) -> str:
    """The config's one index (``hashing``) stage: the end of the path that is measured."""
    names = [s.name for s in cfg.stages if s.type == "hashing"]
    if len(names) != 1:
        raise ValueError(f"the benchmark needs exactly one index (type: hashing) stage in the "
                         f"config; it has {names or 'none'}")
    return names[0]


def bench_config(cfg: PipelineConfig, run: str, backend: str, bootstrap: str = "",
                 source: str = "bench") -> PipelineConfig:
    """``cfg`` for one run: every topic ``<name>.<run>``, every group ``bench-<run>-<stage>``
    (a rerun on the same broker starts from empty topics), no sources (the bench ingests),
    metrics off, on the ``backend`` bus. The memory bus wants a source entry to validate; it
    is never fed (the pipeline is started without sources)."""
    data = cfg.model_dump()
    rename = {t: f"{t}.{run}" for t in cfg.all_topics()}
    for s in data["stages"]:
        s["inputs"] = [rename[t] for t in s["inputs"]]
        s["outputs"] = {k: rename[t] for k, t in s["outputs"].items()}
        s["group"] = f"bench-{run}-{s['name']}"
        s["metrics_port"] = None
    data["topics"] = {rename[t]: n for t, n in cfg.topics.items() if t in rename}
    data["metrics"] = {"port": 0, "host": "127.0.0.1"}
    data["bus"] = {**data["bus"], "backend": backend}
    if bootstrap:
        data["bus"]["bootstrap"] = bootstrap
    data["sources"] = [{"source": source, "topic": f"frames.{run}"}] if backend == "memory" else []
    return parse_config(data, f"{cfg.name} (bench run {run})")


def input_topic(cfg: PipelineConfig, topic: str, run: str) -> str:
    """The run's name of ``topic``, which some stage of ``cfg`` must read."""
    if not any(topic in s.inputs for s in cfg.stages):
        raise ValueError(f"no stage of {cfg.name!r} reads topic {topic!r}")
    return f"{topic}.{run}"
