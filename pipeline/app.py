"""Running a pipeline config: one stage, or all of them.

* :func:`run_stage` runs one stage in this process (``vistream stage NAME``). On Kafka a user
  scales a stage out by starting more of these: they share a consumer group.
* :func:`run_in_process` runs sources and every stage as threads of one process over one bus;
  on the memory bus this is the only way (the bus lives in the process) and it ends by itself
  once the sources are exhausted and every stage has drained its input.
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
from vistream.stages.base import Stage, create_stage

log = logging.getLogger("vistream.app")


def bus_from_config(cfg: PipelineConfig) -> Bus:
    if cfg.bus.backend == "kafka":
        return make_bus("kafka", cfg.bus.bootstrap, max_message_bytes=cfg.bus.max_message_bytes)
    return make_bus("memory", default_partitions=cfg.bus.partitions)


def create_topics(cfg: PipelineConfig, bus: Bus) -> None:
    specs = [TopicSpec(name, parts) for name, parts in cfg.all_topics().items()]
    dlqs = {i + DLQ_SUFFIX for s in cfg.stages for i in s.inputs}
    specs += [TopicSpec(name, 1) for name in sorted(dlqs)]
    bus.create_topics(specs)


def build_runner(cfg: PipelineConfig, settings: StageSettings, bus: Bus,
                 stage: Stage | None = None) -> StageRunner:
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
    settings = cfg.stage(name)
    bus = bus_from_config(cfg)
    try:
        create_topics(cfg, bus)
        serve_metrics(settings.metrics_port if settings.metrics_port is not None
                      else cfg.metrics.port, cfg.metrics.host)
        return build_runner(cfg, settings, bus).run(stop, idle_timeout=idle_timeout)
    finally:
        bus.close()


@dataclass
class PipelineReport:
    sources: list[IngestReport] = field(default_factory=list)
    stages: dict[str, RunnerStats] = field(default_factory=dict)
    stage_objects: dict[str, Stage] = field(default_factory=dict)
    seconds: float = 0.0


def run_in_process(cfg: PipelineConfig, stop: threading.Event | None = None,
                   bus: Bus | None = None, progress: bool = True,
                   drain_idle: float = 0.5) -> PipelineReport:
    """Run sources and stages as threads. Returns when the sources are done and every stage
    has consumed everything (or when ``stop`` is set)."""
    stop = stop or threading.Event()
    own_bus = bus is None
    bus = bus or bus_from_config(cfg)
    report = PipelineReport()
    t0 = time.monotonic()
    create_topics(cfg, bus)
    serve_metrics(cfg.metrics.port, cfg.metrics.host)

    runners: list[StageRunner] = []
    for s in cfg.stages:
        for _ in range(s.replicas):
            runner = build_runner(cfg, s, bus)
            runner.open()  # join groups before sources start, so nothing is missed
            runners.append(runner)
            report.stage_objects.setdefault(s.name, runner.stage)
    errors: list[BaseException] = []
    sources_done = threading.Event()
    runner_stop = threading.Event()

    def guard(fn, *args):
        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # surface thread failures in the caller
                errors.append(exc)
                stop.set()
        return target

    def feed() -> None:
        with bus.producer() as producer:
            for src in cfg.sources:
                report.sources.append(ingest(src.source, producer, src.topic, src.stream_id,
                                             src.fps, src.quality, src.limit, progress, stop))
        sources_done.set()

    threads = [threading.Thread(target=guard(r.run, runner_stop), name=f"stage-{r.name}",
                                daemon=True) for r in runners]
    threads.append(threading.Thread(target=guard(feed), name="sources", daemon=True))
    for t in threads:
        t.start()
    try:
        while not stop.is_set():
            if sources_done.is_set() and _drained(runners, drain_idle):
                break
            time.sleep(0.05)
    finally:
        runner_stop.set()
        for t in threads:
            t.join(timeout=60)
        if own_bus:
            bus.close()
    if errors:
        raise errors[0]
    for r in runners:
        agg = report.stages.setdefault(r.name, RunnerStats())
        for k, v in vars(r.stats).items():
            setattr(agg, k, getattr(agg, k) + v)
    report.seconds = time.monotonic() - t0
    return report


def _drained(runners: list[StageRunner], idle: float) -> bool:
    now = time.monotonic()
    # Lag is read under the bus lock; idle time guards the gap between a poll and its produce.
    return all(now - r.idle_since >= idle for r in runners) and all(r.lag() == 0 for r in runners)


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
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in procs.values():
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
    return code
