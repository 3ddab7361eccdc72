"""Running a pipeline config: one stage, or all of them.

* :func:`run_stage` runs one stage in this process (``vistream stage NAME``). On Kafka a user
  scales a stage out by starting more of these: they share a consumer group.
* :class:`InProcessPipeline` runs sources and stages as threads of one process over one bus;
  on the memory bus this is the only way (the bus lives in the process). :func:`run_in_process`
  (``vistream run``, ``vistream demo``) ends by itself once the sources are exhausted and
  every stage has drained its input; ``vistream serve --config`` keeps the index stage of
  :meth:`InProcessPipeline.serving` running under the query API.
* :func:`run_processes` (Kafka) starts one process per stage replica and one per source,
  restarts a stage process that crashes, and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vistream.pipeline.bus import Bus, TopicSpec, make_bus
from vistream.pipeline.config import PipelineConfig, StageSettings
from vistream.pipeline.ingest import IngestReport, ingest
from vistream.pipeline.metrics import serve_metrics
from vistream.pipeline.runner import DLQ_SUFFIX, RunnerStats, StageRunner
from vistream.pipeline.processes import stop_processes
from vistream.pipeline.shardrun import ShardHost, shard_bus, sharded_params
from vistream.stages.base import Stage, create_stage

log = logging.getLogger("vistream.app")


def bus_from_config(cfg: PipelineConfig) -> Bus:
    if cfg.bus.backend == "kafka":
        return make_bus("kafka", cfg.bus.bootstrap, **cfg.bus.kafka_options())
    return make_bus("memory", default_partitions=cfg.bus.partitions)


def create_topics(cfg: PipelineConfig, bus: Bus) -> None:
    specs = [TopicSpec(name, parts) for name, parts in cfg.all_topics().items()]
    dlqs = {i + DLQ_SUFFIX for s in cfg.stages for i in s.inputs}
    specs += [TopicSpec(name, 1) for name in sorted(dlqs)]
    bus.create_topics(specs)


def build_runner(cfg: PipelineConfig, settings: StageSettings, bus: Bus,
                 stage: Stage | None = None) -> StageRunner:
    if sharded_params(settings) is not None:
        raise ValueError(f"stage {settings.name!r} is a sharded index: it runs as its own "
                         f"processes (`vistream stage {settings.name}`), not in a stage runner")
    stage = stage or create_stage(settings.type, settings.params)
    return StageRunner(
        stage, bus, inputs=settings.inputs, routes=settings.outputs, group_id=settings.group_id,
        batch_size=settings.batch_size, poll_timeout=settings.poll_timeout,
        max_frame_bytes=settings.max_frame_bytes, name=settings.name)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask for a graceful stop (finish the batch, commit, close)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %s received: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_stage(cfg: PipelineConfig, name: str, stop: threading.Event,
              idle_timeout: float | None = None) -> RunnerStats:
    """One stage in this process until ``stop``; a sharded index stage runs as one
    :class:`~vistream.pipeline.shardrun.ShardHost` (a member of its group) instead."""
    settings = cfg.stage(name)
    sharded = sharded_params(settings)
    bus = shard_bus(cfg, sharded) if sharded is not None else bus_from_config(cfg)
    try:
        create_topics(cfg, bus)
        serve_metrics(settings.metrics_port if settings.metrics_port is not None
                      else cfg.metrics.port, cfg.metrics.host)
        if sharded is not None:
            return ShardHost(bus, settings, sharded).run(stop, idle_timeout)
        return build_runner(cfg, settings, bus).run(stop, idle_timeout=idle_timeout)
    finally:
        bus.close()


@dataclass
class PipelineReport:
    sources: list[IngestReport] = field(default_factory=list)
    stages: dict[str, RunnerStats] = field(default_factory=dict)
    stage_objects: dict[str, Stage] = field(default_factory=dict)
    seconds: float = 0.0


class InProcessPipeline:
    """Sources and stages of a config as threads of this process, over one bus.

    :func:`run_in_process` (``vistream run``, ``vistream demo``) calls :meth:`run`: until the
    sources are exhausted and every stage has drained its input. ``vistream serve --config``
    builds it with :meth:`serving`, calls :meth:`start`, answers queries from :attr:`index`,
    then :meth:`close`.

    ``stop`` (the caller's, e.g. set by a signal) stops the sources and ends :meth:`wait`;
    the stages themselves stop in :meth:`close`, after the wait, so that nothing read is lost.
    A thread that fails sets ``stop`` and lands in :attr:`errors` (:meth:`run` raises it;
    while serving it is logged, and the API goes on answering from the index as it stands).
    """

    def __init__(self, cfg: PipelineConfig, stages: list[StageSettings] | None = None, *,
                 bus: Bus | None = None, stop: threading.Event | None = None,
                 sources: bool = True, progress: bool = False) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.errors: list[BaseException] = []
        self.index_stage: str | None = None
        self.ingested: list[IngestReport] = []
        self.progress = progress
        self._t0 = time.monotonic()
        self._own_bus = bus is None
        self.bus = bus or bus_from_config(cfg)
        self._runners_stop = threading.Event()
        self._sources_done = threading.Event()
        self._reraise = False
        self._started = False
        self.runners: list[StageRunner] = []
        try:
            create_topics(cfg, self.bus)
            for s in cfg.stages if stages is None else stages:
                for _ in range(s.replicas):
                    self.runners.append(build_runner(cfg, s, self.bus))
                    self.runners[-1].open()  # join groups (load snapshots) before sources start
        except BaseException:
            self._release()
            raise
        self.threads = [threading.Thread(target=self._guard(r.run, self._runners_stop),
                                         name=f"stage-{r.name}", daemon=True)
                        for r in self.runners]
        if sources and cfg.sources:
            self.threads.append(threading.Thread(target=self._guard(self._feed), name="sources",
                                                 daemon=True))
        else:
            self._sources_done.set()

    @classmethod
    def serving(cls, cfg: PipelineConfig, stage_name: str,
                group: str | None = None) -> InProcessPipeline:
        """The index stage ``stage_name`` (one replica, consumer group ``group`` if given), for
        the query API to share its live index. On Kafka only that stage runs here, the others
        run as their own processes; on the memory bus (one process) every stage of the config
        runs here and its sources are fed once."""
        settings = cfg.stage(stage_name)
        if settings.type != "hashing":
            raise ValueError(f"stage {stage_name!r} is a {settings.type!r} stage; `serve` needs a "
                             "'hashing' (index) stage")
        # One replica: the API must see the whole index, not one member's share of it.
        update: dict[str, object] = {"replicas": 1}
        if group:
            update["group"] = group
        settings = settings.model_copy(update=update)
        memory = cfg.bus.backend == "memory"
        stages = ([settings if s.name == stage_name else s for s in cfg.stages] if memory
                  else [settings])
        pipeline = cls(cfg, stages, sources=memory)
        pipeline.index_stage = stage_name
        return pipeline

    @property
    def stage_objects(self) -> dict[str, Stage]:
        """Stage name -> the stage object of its first replica."""
        objects: dict[str, Stage] = {}
        for r in self.runners:
            objects.setdefault(r.name, r.stage)
        return objects

    @property
    def index(self):
        """The live index of the stage built by :meth:`serving`."""
        if self.index_stage is None:
            raise ValueError("no index stage is served: build the pipeline with serving()")
        return self.stage_objects[self.index_stage].index

    def _guard(self, fn, *args):
        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - raised by run(), logged otherwise
                if not self._reraise:
                    log.exception("%s failed", threading.current_thread().name)
                self.errors.append(exc)
                self.stop.set()
        return target

    def _feed(self) -> None:
        with self.bus.producer() as producer:
            for src in self.cfg.sources:
                self.ingested.append(ingest(src.source, producer, src.topic, src.stream_id,
                                            src.fps, src.quality, src.limit, self.progress,
                                            self.stop))
        self._sources_done.set()

    def start(self) -> InProcessPipeline:
        self._started = True
        for t in self.threads:
            t.start()
        return self

    def drained(self, idle: float = 0.5) -> bool:
        """Sources done, every stage idle for ``idle`` seconds and nothing left to read."""
        if not self._sources_done.is_set():
            return False
        now = time.monotonic()
        # Lag is read under the bus lock; idle time guards the gap between a poll and its produce.
        return (all(now - r.idle_since >= idle for r in self.runners)
                and all(r.lag() == 0 for r in self.runners))

    def wait(self, drain_idle: float = 0.5) -> None:
        """Block until drained or until ``stop`` is set."""
        while not self.stop.is_set() and not self.drained(drain_idle):
            time.sleep(0.05)

    def close(self, timeout: float = 60) -> None:
        """Stop the sources (sets ``stop``) and the stages: each finishes its batch and commits."""
        self.stop.set()
        self._runners_stop.set()
        for t in self.threads:
            if t.ident is not None:
                t.join(timeout=timeout)
        self._release()

    def _release(self) -> None:
        if not self._started:  # a started runner closes itself when its thread ends
            for r in self.runners:
                r.close()
        if self._own_bus:
            self.bus.close()

    def run(self, drain_idle: float = 0.5) -> PipelineReport:
        """Start, wait until drained (or stopped), close; re-raises a thread's failure."""
        self._reraise = True
        self.start()
        try:
            self.wait(drain_idle)
        finally:
            self.close()
        if self.errors:
            raise self.errors[0]
        return self.report()

    def report(self) -> PipelineReport:
        out = PipelineReport(sources=list(self.ingested), stage_objects=self.stage_objects,
                             seconds=time.monotonic() - self._t0)
        for r in self.runners:
            agg = out.stages.setdefault(r.name, RunnerStats())
            for k, v in vars(r.stats).items():
                setattr(agg, k, getattr(agg, k) + v)
        return out


def run_in_process(cfg: PipelineConfig, stop: threading.Event | None = None,
                   bus: Bus | None = None, progress: bool = True,
                   drain_idle: float = 0.5) -> PipelineReport:
    """Run sources and stages as threads. Returns when the sources are done and every stage
    has consumed everything (or when ``stop`` is set)."""
    serve_metrics(cfg.metrics.port, cfg.metrics.host)
    return InProcessPipeline(cfg, bus=bus, stop=stop, progress=progress).run(drain_idle)


def run_processes(cfg: PipelineConfig, config_path: str | Path, stop: threading.Event,
                  max_restarts: int = 5) -> int:
    """Kafka: one OS process per stage replica (and per source); returns an exit code."""
    if cfg.bus.backend != "kafka":
        raise ValueError("run_processes needs bus.backend: kafka")
    bus = bus_from_config(cfg)
    try:
        create_topics(cfg, bus)
    finally:
        bus.close()
    exe = [sys.executable, "-m", "vistream"]
    specs: dict[str, list[str]] = {}
    for s in cfg.stages:
        for r in range(s.replicas):
            specs[f"{s.name}#{r}"] = exe + ["stage", s.name, "--config", str(config_path)]
    for i, src in enumerate(cfg.sources):
        cmd = exe + ["ingest", src.source, "--topic", src.topic, "--quality", str(src.quality),
                     "--bootstrap", cfg.bus.bootstrap, "--no-progress"]
        if src.stream_id:
            cmd += ["--stream-id", src.stream_id]
        if src.fps:
            cmd += ["--fps", str(src.fps)]
        if src.limit:
            cmd += ["--limit", str(src.limit)]
        specs[f"source#{i}"] = cmd
    procs = {name: subprocess.Popen(cmd) for name, cmd in specs.items()}
    restarts = {name: 0 for name in specs}
    log.info("started %d processes", len(procs), extra={"processes": sorted(procs)})
    code = 0
    try:
        while not stop.is_set():
            for name, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                if name.startswith("source#"):
                    if rc != 0:
                        log.error("%s exited with %d", name, rc)
                        code = code or rc
                    del procs[name]
                elif restarts[name] < max_restarts:
                    restarts[name] += 1
                    log.warning("%s exited with %s; restarting (%d/%d)", name, rc,
                                restarts[name], max_restarts)
                    procs[name] = subprocess.Popen(specs[name])
                else:
                    log.error("%s keeps failing; giving up on it", name)
                    del procs[name]
                    code = code or (rc or 1)
            if not procs:
                break
            time.sleep(0.2)
    finally:
        stop_processes(procs.values(), timeout=30)
    return code
