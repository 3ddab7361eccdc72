"""Broker outages under a running pipeline (``vistream outage``, tests/pipeline/test_outage.py).

:func:`outage_run` starts a broker of its own, a thumbnail stage and an idempotent summary sink
as separate processes (``vistream stage``), and feeds frames at a steady rate while it stops
the broker (SIGTERM, a clean shutdown; SIGKILL with ``hard``) for each requested outage,
``gap`` seconds apart, and starts it again on the same data. A sampler scrapes each stage's
/metrics every 0.2 s. The report gives, per outage, how long the broker was away (stop to
answering again) and how many seconds after its return each stage consumed again (its
``vistream_records_in_total`` grew: a batch was processed, produced and committed); whether
each stage's ``vistream_broker_up`` gauge showed the outage; and over the whole run the frames
lost in the output topic, duplicates there (allowed: at least once), entries and duplicates at
the sink, the sink's absorbed redeliveries, the state-change log lines and tracebacks in the
stage logs, and stage processes that exited.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vistream.pipeline import broker, cluster
from vistream.pipeline.bus import Bus, TopicSpec, make_bus
from vistream.pipeline.chaos import Supervisor, feed, run_config, scrape, synthetic_frames

#: the seconds a broker restart takes here (JVM start, log recovery), for pacing the input
RESTART_ALLOWANCE = 15.0


def _base_config(run_dir: Path) -> Path:
    path = run_dir / "base.yaml"
    path.write_text("""name: outage
bus: {backend: kafka, bootstrap: "127.0.0.1:9092", partitions: 2}
stages:
  - {name: thumbs, type: thumbnail, inputs: [frames], outputs: {frame_summary: summaries},
      batch_size: 8, params: {width: 64}}
  - {name: sink, type: summary, inputs: [summaries], batch_size: 16,
      params: {out_dir: sink, contact_sheet_max: 16}}
""")
    return path


class _Sampler(threading.Thread):
    """Every 0.2 s: (time, {process: (records_in, broker_up)}) for each stage process."""

    def __init__(self, ports: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.samples: list[tuple[float, dict[str, tuple[float, float]]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            row = {}
            for name, port in self.ports.items():
                f = scrape(port, timeout=0.5)
                if f is not None:
                    row[name] = (f.get("vistream_records_in_total", 0.0),
                                 f.get("vistream_broker_up", 1.0))
            self.samples.append((time.monotonic(), row))

    def consumed_after(self, name: str, t: float) -> float | None:
        """Seconds from ``t`` until ``name`` consumed records, judged against its count at ``t``."""
        base = None
        for ts, row in self.samples:
            if name not in row:
                continue
            if ts <= t or base is None:
                base = row[name][0]
            elif row[name][0] > base:
                return ts - t
        return None

    def growth(self, name: str) -> list[float]:
        """The sample times at which ``name``'s count of records consumed had grown."""
        times, prev = [], None
        for ts, row in self.samples:
            if name in row:
                if prev is not None and row[name][0] > prev:
                    times.append(ts)
                prev = row[name][0]
        return times

    def saw_down(self, name: str, t0: float, t1: float) -> bool:
        return any(row[name][1] == 0 for ts, row in self.samples if t0 <= ts <= t1 and name in row)


def read_ids(bus: Bus, topic: str, timeout: float = 60) -> list[str]:
    """The ``frame_id`` header of every record now in ``topic``."""
    end = sum(bus.end_offsets(topic).values())
    ids: list[str] = []
    with bus.consumer([topic], f"outage-reader-{time.monotonic_ns()}") as c:
        deadline = time.monotonic() + timeout
        while len(ids) < end and time.monotonic() < deadline:
            ids += [dict(r.headers).get("frame_id", b"").decode() for r in c.poll(500, 0.5)]
    return ids


def _sink_dir(run_dir: Path) -> Path:
    return run_dir / "out" / "sink"  # where run_config puts the sink's out_dir


def _sink_entries(run_dir: Path) -> list[str]:
    return [json.loads(p.read_text())["frame_id"]
            for p in sorted((_sink_dir(run_dir) / "frames").glob("*.json"))]


def _wait(sup: Supervisor, seconds: float, until: Callable[[], bool] | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.check()
        if until is not None and until():
            return True
        time.sleep(0.2)
    return until is None


def _crash_broker(port: int, data: Path) -> None:
    """SIGKILL the broker: no clean shutdown, its next start recovers its logs."""
    pid = broker.status(port, data).pid
    if pid:
        os.kill(pid, signal.SIGKILL)
    broker.stop(port, data)  # reaps it, removes the pid file


def _outages(sup: Supervisor, sampler: _Sampler, outages: list[float], gap: float, port: int,
             data: Path, say: Callable[[str], None], hard: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i, seconds in enumerate(outages):
        if i:
            _wait(sup, gap)
        t_stop = time.monotonic()
        if hard:
            _crash_broker(port, data)
        else:
            broker.stop(port, data)
        say(f"outage {i + 1}/{len(outages)}: broker stopped for {seconds:g} s")
        _wait(sup, seconds)
        broker.start(port, data)
        rows.append({"outage_s": seconds, "t_stop": t_stop, "t_back": time.monotonic()})
        say(f"broker back after {rows[-1]['t_back'] - t_stop:.1f} s")
    return rows


def outage_run(outages: list[float], gap: float = 5.0, frames: int = 200, port: int = 29692,
               work_dir: str | Path = "out/outage", seed: int = 0, hard: bool = False,
               progress: Callable[[str], None] | None = None, nodes: int = 1,
               kill_one: bool = False, feed_seconds: float | None = None) -> dict[str, Any]:
    """Outages of ``outages`` seconds under a running pipeline (``hard``: the broker is
    SIGKILLed instead of stopped cleanly); returns the report.

    ``nodes`` > 1 runs the pipeline on a KRaft cluster of that many nodes (pipeline/cluster.py,
    ports ``port`` .. ``port + 2 nodes - 1``); ``kill_one`` then replaces the outages by one
    SIGKILL, mid-stream, of the node leading the most partitions, which stays dead: the report
    adds ``kill`` (the node, the partitions it led, whether it was the active controller, and
    per stage the longest stall of its progress around the kill against the longest before)."""
    say = progress or (lambda _msg: None)
    if kill_one and nodes < 2:
        raise ValueError("kill_one needs a cluster: nodes >= 2 (3 for min.insync.replicas 2)")
    run_dir = Path(work_dir).resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    data = run_dir / "broker"
    info = broker.start(port, data) if nodes == 1 else cluster.start(nodes, port, data)
    expected = list(synthetic_frames(frames, seed))
    feed_s = feed_seconds or (30.0 if kill_one else 10 + sum(outages) + len(outages)
                              * RESTART_ALLOWANCE + gap * (len(outages) - 1) + 10)
    sup: Supervisor | None = None
    kill: dict[str, Any] | None = None
    try:
        cfg, specs, ports = run_config(_base_config(run_dir), run_dir, info.bootstrap)
        sup = Supervisor(specs, run_dir / "logs", None)
        bus = make_bus("kafka", info.bootstrap)
        bus.create_topics([TopicSpec("frames", 2), TopicSpec("summaries", 2),
                           TopicSpec("frames.dlq", 1), TopicSpec("summaries.dlq", 1)])
        sup.start_all()
        sampler = _Sampler(ports)
        sampler.start()
        feeder = threading.Thread(target=feed, args=(bus, "frames", expected, feed_s), daemon=True)
        feeder.start()
        say(f"{frames} frames over {feed_s:.0f} s; waiting for the stream to flow")
        _wait(sup, 120, lambda: len(_sink_entries(run_dir)) >= max(frames // 20, 1))
        if kill_one:
            rows = []
            _wait(sup, min(5.0, feed_s / 4))
            kill = _kill_leader(bus, nodes, port, data, say)
        else:
            rows = _outages(sup, sampler, outages, gap, port, data, say, hard)
        say("waiting for every frame at the sink")
        _wait(sup, 180 + feed_s, lambda: len(set(_sink_entries(run_dir))) >= frames)
        if kill is not None:
            kill["t_done"] = time.monotonic()
        feeder.join(timeout=30)
        time.sleep(1.0)
        sampler.stop.set()
        codes = sup.stop_all()
        ids = read_ids(bus, "summaries")
        bus.close()
    finally:
        if sup is not None:  # after a failure: leave no stage process behind
            sup.stop_all(timeout=10)
        if nodes == 1:
            broker.stop(port, data)
        else:
            cluster.stop(nodes, port, data)
    report = _report(outages, rows, sampler, sup, codes, ids, expected, run_dir)
    if kill is not None:
        report["kill"] = _stalls(kill, sampler)
        report["nodes"] = nodes
    return report


def _kill_leader(bus: Bus, nodes: int, port: int, data: Path,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """SIGKILL the node that leads the most partitions of the pipeline's topics."""
    led: dict[int, list[str]] = {}
    for (topic, part), leader in sorted(bus.partition_leaders(["frames", "summaries"]).items()):
        led.setdefault(leader, []).append(f"{topic}-{part}")
    node = max(sorted(led), key=lambda n: len(led[n]))
    controller = bus.controller_id()
    t_kill = time.monotonic()
    pid = cluster.kill_node(node, nodes, port, data)
    say(f"SIGKILLed node {node} (pid {pid}), leader of {', '.join(led[node])}"
        f"{' and the active controller' if controller == node else ''}")
    return {"node": node, "pid": pid, "led": led[node], "was_controller": controller == node,
            "t_kill": t_kill}


def _longest_gap(marks: list[float]) -> float | None:
    return max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=None)


def _stalls(kill: dict[str, Any], sampler: _Sampler) -> dict[str, Any]:
    """Per stage, from the samples of its records consumed: ``pause_s``, the longest stall
    from its last progress before the kill until every frame was at the sink (to the end when
    it made none after the kill); ``before_s``, the longest stall between its first progress
    and the kill, the normal cadence to compare with."""
    t_kill, t_done = kill.pop("t_kill"), kill.pop("t_done")
    pause, before = {}, {}
    for name in sampler.ports:
        grew = sampler.growth(name)
        pre = [t for t in grew if t <= t_kill]
        post = [t for t in grew if t_kill < t <= t_done] or [t_done]
        p = _longest_gap([pre[-1] if pre else t_kill, *post])
        b = _longest_gap(pre)
        pause[name] = None if p is None else round(p, 1)
        before[name] = None if b is None else round(b, 1)
    kill["pause_s"], kill["before_s"] = pause, before
    kill["pause_max_s"] = max((v for v in pause.values() if v is not None), default=None)
    return kill


def _report(outages: list[float], rows: list[dict[str, Any]], sampler: _Sampler,
            sup: Supervisor, codes: dict[str, int | None], ids: list[str], expected: list,
            run_dir: Path) -> dict[str, Any]:
    for r in rows:
        r["broker_away_s"] = round(r["t_back"] - r["t_stop"], 1)
        r["consuming_again_s"] = {}
        r["broker_up_gauge_dropped"] = {}
        for name in sampler.ports:
            s = sampler.consumed_after(name, r["t_back"])
            r["consuming_again_s"][name] = None if s is None else round(s, 1)
            r["broker_up_gauge_dropped"][name] = sampler.saw_down(name, r["t_stop"], r["t_back"])
        del r["t_stop"], r["t_back"]
    fed = {f.frame_id for f in expected}
    entries = _sink_entries(run_dir)
    summary = _sink_dir(run_dir) / "summary.json"
    logs = "".join(p.read_text(errors="replace") for p in sorted((run_dir / "logs").glob("*.log")))
    return {
        "outages": rows, "frames": len(fed),
        "lost": len(fed - set(ids)), "output_records": len(ids),
        "topic_duplicates": len(ids) - len(set(ids)),
        "sink_entries": len(entries), "sink_missing": len(fed - set(entries)),
        "sink_duplicates": len(entries) - len(set(entries)),
        "sink_redeliveries": (json.loads(summary.read_text()).get("redeliveries")
                              if summary.exists() else None),
        "log_lines": {"broker_unreachable": logs.count("broker unreachable"),
                      "broker_back": logs.count("broker reachable again"),
                      "tracebacks": logs.count("Traceback")},
        "exits": sup.exits + [(n, c) for n, c in codes.items() if c],
    }
