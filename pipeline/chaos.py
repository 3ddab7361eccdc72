"""Chaos runs: a pipeline on Kafka whose stage processes are SIGKILLed at seeded random moments.

:func:`chaos_run` (``vistream chaos CONFIG --minutes N --seed S``) runs the pipeline of CONFIG
twice on a fresh broker of its own each time, over the same seeded input (synthetic frames fed
to the pipeline's source topic):

* the **fault-free twin**: every stage process (one per replica) starts, the frames go in as
  fast as the stages take them, the run ends once the pipeline has drained;
* the **chaos run**: the frames go in over ``minutes`` minutes while a seeded schedule SIGKILLs
  a random stage process every ``kill_every`` seconds on average (exponential gaps); a
  supervisor restarts each killed process at once, as ``vistream run`` does.

Both end the same way: wait until drained (every group has committed everything, every process
has caught up with its partitions, no record consumed for a few seconds), SIGTERM every stage
(a stateful stage writes its last snapshot), then read what the pipeline built: the index of
each ``hashing`` stage (its snapshot: frame id -> code, and metadata), the entries of each
``summary`` sink, and every dead-letter topic. The report compares the chaos run with its twin:
identical index and sink contents, frames lost (fed but missing from the index or sink: 0),
duplicated rows in the index (0), records in dead-letter topics (0), kills and restarts.

Each run gets its own broker (port ``port``, data in the work folder, removed afterwards), its
own copy of the config with ``bus.bootstrap``, ``out_dir``/``snapshot_dir`` parameters and a
metrics port per process rewritten, so runs never see each other's topics or files.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vistream.pipeline import broker
from vistream.pipeline.app import create_topics
from vistream.pipeline.bus import Bus, BusUnavailable, make_bus
from vistream.pipeline.config import ConfigError, PipelineConfig, load_config
from vistream.pipeline.runner import DLQ_SUFFIX
from vistream.pipeline.processes import stop_processes
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Frame

log = logging.getLogger("vistream.chaos")

#: parameters holding a stage's output folder: rewritten per run so runs stay apart
DIR_PARAMS = ("out_dir", "snapshot_dir")


# ----------------------------------------------------------------------------- input
def synthetic_frames(n: int, seed: int, streams: int = 2, h: int = 96, w: int = 128
                     ) -> Iterator[Frame]:
    """``n`` seeded frames over ``streams`` streams: a smooth background and a moving square."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (streams, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        s = i % streams
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (base[s, 0] + xx) % 256
        img[..., 1] = (base[s, 1] + yy) % 256
        img[..., 2] = base[s, 2]
        x, y = (i * 3 + 11 * s) % (w - 16), (i * 2 + 7 * s) % (h - 16)
        img[y:y + 16, x:x + 16] = rng.integers(0, 256, 3, dtype=np.uint8)
        yield Frame.from_image(img, f"cam{s}", i // streams, timestamp_ms=1_000 + 40 * i)


def source_topics(cfg: PipelineConfig) -> list[str]:
    """Topics stages read and no stage writes: where the input goes."""
    written = {t for s in cfg.stages for t in s.outputs.values()}
    return sorted({t for s in cfg.stages for t in s.inputs if t not in written})


# ----------------------------------------------------------------------------- processes
def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(pair: bool = False, count: int = 0) -> int:
    """A port nobody listens on now; with ``pair``, port+1 is free too (a broker's controller);
    with ``count``, the ``count`` ports from it are all free (a cluster: 2 per node)."""
    extra = max(count - 1, 1 if pair else 0)
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + extra <= 65535 and all(_bindable(port + i) for i in range(1, extra + 1)):
            return port


class Supervisor:
    """Stage processes by name (``stage#replica``): started, restarted when they exit, killed
    on request, stopped with SIGTERM at the end. Counts kills, restarts and unexpected exits."""

    def __init__(self, specs: dict[str, list[str]], log_dir: Path,
                 env: dict[str, str] | None) -> None:
        self.specs = specs
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.kills = 0
        self.kills_by_stage: dict[str, int] = {}
        self.restarts = 0
        self.exits: list[tuple[str, int]] = []  # exits nobody asked for
        self._killed: set[str] = set()
        log_dir.mkdir(parents=True, exist_ok=True)

    def _start(self, name: str) -> None:
        out = open(self.log_dir / f"{name.replace('#', '-')}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(self.specs[name], stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL, env=self.env)
        out.close()  # the child holds its own descriptor
        self.started_at[name] = time.monotonic()

    def start_all(self) -> None:
        for name in self.specs:
            self._start(name)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            self.kills += 1
            stage = name.split("#")[0]
            self.kills_by_stage[stage] = self.kills_by_stage.get(stage, 0) + 1
            self._killed.add(name)

    def check(self) -> None:
        """Restart every process that has exited (killed by us, or crashed)."""
        for name, p in list(self.procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            if name not in self._killed:
                self.exits.append((name, rc))
                log.warning("%s exited with %s; restarting", name, rc)
            self._killed.discard(name)
            self.restarts += 1
            self._start(name)

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def youngest(self) -> float:
        """Seconds since the most recent (re)start."""
        return time.monotonic() - max(self.started_at.values(), default=0.0)

    def stop_all(self, timeout: float = 60) -> dict[str, int | None]:
        return dict(zip(self.procs, stop_processes(self.procs.values(), timeout), strict=True))


def scrape(port: int, timeout: float = 1.0) -> dict[str, float] | None:
    """``{metric name: value summed over labels}`` from a process's /metrics, None if silent."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=timeout).read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("vistream_") and " " in line:
            name, _, value = line.rpartition(" ")
            key = name.split("{", 1)[0]
            try:
                out[key] = out.get(key, 0.0) + float(value)
            except ValueError:
                continue
    return out


# ----------------------------------------------------------------------------- configs
def run_config(cfg_path: Path, run_dir: Path, bootstrap: str) -> tuple[PipelineConfig,
                                                                      dict[str, list[str]],
                                                                      dict[str, int]]:
    """Per-process copies of the config in ``run_dir``: this run's broker, output folders in
    ``run_dir``, one metrics port per process. Returns the config, process commands, ports."""
    cfg = load_config(cfg_path)
    if cfg.bus.backend != "kafka":
        raise ConfigError(f"{cfg_path}: a chaos run needs bus.backend: kafka")
    data = cfg.model_dump(mode="json")
    data["bus"]["bootstrap"] = bootstrap
    data["sources"] = []
    data["metrics"] = {"port": 0, "host": "127.0.0.1"}
    for st in data["stages"]:
        for key in DIR_PARAMS:
            if st["params"].get(key):
                st["params"][key] = str(run_dir / "out" / st["name"])
    specs: dict[str, list[str]] = {}
    ports: dict[str, int] = {}
    for i, st in enumerate(data["stages"]):
        for r in range(st["replicas"]):
            name = f"{st['name']}#{r}"
            ports[name] = free_port()
            copy = json.loads(json.dumps(data))
            copy["stages"][i]["metrics_port"] = ports[name]
            path = run_dir / f"config-{st['name']}-{r}.yaml"
            path.write_text(yaml.safe_dump(copy, sort_keys=False))
            specs[name] = [sys.executable, "-m", "vistream", "stage", st["name"],
                           "--config", str(path), "--log-format", "json"]
    return load_config(run_dir / f"config-{data['stages'][0]['name']}-0.yaml"), specs, ports


# ----------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    frames: int
    index: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> frame id -> code
    index_rows: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> id -> entry
    dead_letters: int = 0
    kills: int = 0
    kills_by_stage: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    unexpected_exits: int = 0
    seconds: float = 0.0
    drained: bool = False


def feed(bus: Bus, topic: str, frames: list[Frame], seconds: float = 0.0,
         stop: threading.Event | None = None) -> int:
    """Produce ``frames`` to ``topic``, spread over ``seconds`` (0: at once); rides out an
    outage (records stay queued in the producer until the broker takes them)."""
    t0 = time.monotonic()
    with bus.producer() as p:
        for i, f in enumerate(frames):
            rec = encode_message(f)
            p.send(topic, rec.value, rec.key, rec.headers)
            due = t0 + seconds * (i + 1) / len(frames)
            while time.monotonic() < due and not (stop and stop.is_set()):
                try:
                    p.flush(timeout=min(max(due - time.monotonic(), 0.05), 1.0))
                    time.sleep(max(min(due - time.monotonic(), 0.2), 0))
                except BusUnavailable:
                    pass
        while True:
            try:
                p.flush(timeout=5)
                break
            except BusUnavailable:
                if stop and stop.is_set():
                    raise
    return len(frames)


def wait_drained(sup: Supervisor, ports: dict[str, int], bus: Bus, cfg: PipelineConfig,
                 timeout: float, quiet: float = 5.0,
                 tick: Callable[[], None] | None = None) -> bool:
    """Until every group committed everything, every live process caught up with its own
    partitions and no record was consumed for ``quiet`` seconds (True), or ``timeout``."""
    deadline = time.monotonic() + timeout
    last_total, stable_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        sup.check()
        if tick:
            tick()
        figures = [scrape(ports[n]) for n in sup.specs]
        total = sum(f.get("vistream_records_in_total", 0) for f in figures if f)
        if total != last_total or any(f is None for f in figures):
            last_total, stable_since = total, time.monotonic()
        elif (time.monotonic() - stable_since >= quiet and sup.youngest() >= quiet
              and all(f.get("vistream_consumer_lag", 0) == 0 for f in figures if f)
              and _groups_done(bus, cfg)):
            return True
        time.sleep(0.5)
    return False


def _groups_done(bus: Bus, cfg: PipelineConfig) -> bool:
    try:
        return all(bus.group_lag(s.group_id, s.inputs) == 0 for s in cfg.stages)
    except Exception as exc:  # broker busy: not yet
        log.debug("group lag unavailable: %s", exc)
        return False


def collect(cfg: PipelineConfig, bus: Bus, result: RunResult) -> None:
    """What the pipeline built: indexes (snapshots), sink entries, dead letters."""
    # heavy: the snapshot reader loads FAISS and the hash models; only a finished run needs it
    from vistream.models.hashing.snapshot import read_snapshot

    for st in cfg.stages:
        folder = st.params.get("snapshot_dir") or st.params.get("out_dir")
        if st.type == "hashing" and folder:
            _, snap = read_snapshot(folder, mmap=False)
            result.index_rows[st.name] = snap.n
            result.index[st.name] = {fid: snap.codes[i].tobytes().hex()
                                     for i, fid in enumerate(snap.frame_ids)}
        elif st.type == "summary" and folder:
            entries = {}
            for p in sorted((Path(folder) / "frames").glob("*.json")):
                e = json.loads(p.read_text())
                entries[e["frame_id"]] = e
            result.sinks[st.name] = entries
    dlqs = {t + DLQ_SUFFIX for s in cfg.stages for t in s.inputs}
    result.dead_letters = sum(sum(bus.end_offsets(t).values()) for t in sorted(dlqs))


def run_once(cfg_path: Path, run_dir: Path, frames: list[Frame], port: int,
             feed_seconds: float = 0.0, kill_every: float | None = None, seed: int = 0,
             drain_timeout: float = 300, progress: Callable[[str], None] | None = None
             ) -> RunResult:
    """One run on a fresh broker: start the stages, feed, (kill), drain, stop, collect."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    say = progress or (lambda _msg: None)
    result = RunResult(frames=len(frames))
    t0 = time.monotonic()
    with broker.running(port, run_dir / "broker") as info:
        cfg, specs, ports = run_config(cfg_path, run_dir, info.bootstrap)
        bus = make_bus("kafka", info.bootstrap, **cfg.bus.kafka_options())
        sup = Supervisor(specs, run_dir / "logs", {**os.environ})
        try:
            create_topics(cfg, bus)
            sup.start_all()
            say(f"{len(specs)} stage processes started")
            killer = _Killer(sup, kill_every, seed) if kill_every else None
            done = threading.Event()
            feeder = threading.Thread(target=lambda: (feed(bus, source_topics(cfg)[0], frames,
                                                           feed_seconds), done.set()),
                                      daemon=True)
            feeder.start()
            while not done.wait(0.2):
                sup.check()
                if killer:
                    killer.tick()
            say(f"{len(frames)} frames fed; draining")
            result.drained = wait_drained(sup, ports, bus, cfg, drain_timeout)
        finally:
            codes = sup.stop_all()
            result.kills, result.restarts = sup.kills, sup.restarts
            result.kills_by_stage = dict(sorted(sup.kills_by_stage.items()))
            result.unexpected_exits = len(sup.exits) + sum(1 for c in codes.values() if c)
        collect(cfg, bus, result)
        bus.close()
    shutil.rmtree(run_dir / "broker", ignore_errors=True)
    result.seconds = time.monotonic() - t0
    return result


class _Killer:
    """SIGKILLs a random live stage process at seeded exponential intervals."""

    def __init__(self, sup: Supervisor, mean_gap: float, seed: int) -> None:
        self.sup = sup
        self.rng = random.Random(seed)
        self.mean_gap = mean_gap
        self.next_at = time.monotonic() + self.rng.expovariate(1 / mean_gap)

    def tick(self) -> None:
        if time.monotonic() < self.next_at:
            return
        victims = sorted(self.sup.alive())
        if victims:
            victim = self.rng.choice(victims)
            log.info("chaos: SIGKILL %s", victim)
            self.sup.kill(victim)
            self.sup.check()
        self.next_at = time.monotonic() + self.rng.expovariate(1 / self.mean_gap)


# ----------------------------------------------------------------------------- the comparison
def chaos_run(config: str | Path, minutes: float = 5.0, seed: int = 0, fps: float = 4.0,
              kill_every: float = 10.0, port: int = 29592, work_dir: str | Path | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The chaos run and its fault-free twin over the same input; returns the report."""
    cfg = load_config(config)  # a bad config fails here, before any broker starts
    if cfg.bus.backend != "kafka" or not source_topics(cfg):
        raise ConfigError(f"{config}: a chaos run needs a pipeline on bus.backend: kafka whose "
                          "stages read a topic no stage writes (where the frames go)")
    work = Path(work_dir or Path("out") / "chaos")
    n = max(int(minutes * 60 * fps), 1)
    frames = list(synthetic_frames(n, seed))
    say = progress or (lambda _msg: None)
    say(f"fault-free twin: {n} frames")
    twin = run_once(Path(config), work / "twin", frames, port, progress=say)
    say(f"chaos run: {n} frames over {minutes} min, a kill every {kill_every} s on average")
    chaos = run_once(Path(config), work / "chaos", frames, port, feed_seconds=minutes * 60,
                     kill_every=kill_every, seed=seed, progress=say)
    return compare(twin, chaos, frames, minutes, seed)


def compare(twin: RunResult, chaos: RunResult, frames: list[Frame], minutes: float,
            seed: int) -> dict[str, Any]:
    fed = {f.frame_id for f in frames}
    lost: set[str] = set()
    duplicated = 0
    for name, idx in chaos.index.items():
        lost |= fed - set(idx)
        duplicated += chaos.index_rows[name] - len(idx)
    for entries in chaos.sinks.values():
        lost |= fed - set(entries)
    return {
        "minutes": minutes, "seed": seed, "frames": len(frames),
        "kills": chaos.kills, "kills_by_stage": chaos.kills_by_stage,
        "restarts": chaos.restarts,
        "unexpected_exits": chaos.unexpected_exits,
        "lost": len(lost), "duplicated_in_index": duplicated,
        "dead_letters": chaos.dead_letters, "twin_dead_letters": twin.dead_letters,
        "index_identical": chaos.index == twin.index,
        "index_rows": chaos.index_rows, "twin_index_rows": twin.index_rows,
        "sinks_identical": chaos.sinks == twin.sinks,
        "sink_entries": {k: len(v) for k, v in chaos.sinks.items()},
        "drained": chaos.drained and twin.drained,
        "seconds": {"twin": round(twin.seconds, 1), "chaos": round(chaos.seconds, 1)},
    }
