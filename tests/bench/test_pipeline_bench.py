"""vistream bench pipeline: its run-private config, its probe, its verdicts, and short runs on
the memory bus and (marked kafka) on the broker `make test` starts."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import yaml

from tests.conftest import kafka_bootstrap
from vistream.bench import pipeline as bench
from vistream.bench.pipeline_probe import (
    LoopSource,
    RecordingProducer,
    Tracker,
    bench_config,
    cpu_seconds,
    host_busy_seconds,
    index_stage,
)
from vistream.pipeline.bus import make_bus
from vistream.pipeline.config import ConfigError, load_config, parse_config

SMALL = {
    "name": "small",
    "bus": {"backend": "kafka", "partitions": 1},
    "stages": [
        {"name": "thumbs", "type": "thumbnail", "inputs": ["frames"],
         "outputs": {"frame_summary": "summaries"}, "poll_timeout": 0.05},
        {"name": "features", "type": "features", "inputs": ["frames"],
         "outputs": {"features": "features"}, "poll_timeout": 0.05,
         "params": {"random_init": True, "batch_size": 16}},
        {"name": "index", "type": "hashing", "inputs": ["features", "summaries"],
         "poll_timeout": 0.05, "params": {"model": "lsh", "n_bits": 32, "background": False}},
    ],
}


def test_the_shipped_bench_config_has_one_index_fed_from_frames():
    cfg = load_config(bench.DEFAULT_CONFIG)
    assert index_stage(cfg) == "index"
    assert {s.name for s in cfg.stages if "frames" in s.inputs} >= {"thumbs", "features"}


def test_run_config_renames_topics_and_groups_and_keeps_the_wiring():
    cfg = parse_config(SMALL)
    run = bench_config(cfg, "abc", "kafka", "broker:1")
    assert run.bus.bootstrap == "broker:1" and run.sources == []
    assert set(run.all_topics()) == {"frames.abc", "summaries.abc", "features.abc"}
    assert {s.group_id for s in run.stages} == {f"bench-abc-{n}" for n in
                                                ("thumbs", "features", "index")}
    assert run.stage("index").inputs == ["features.abc", "summaries.abc"]
    mem = bench_config(cfg, "abc", "memory")
    assert mem.bus.backend == "memory" and mem.sources  # validates; never fed


def test_a_config_without_exactly_one_index_is_refused(tmp_path):
    data = dict(SMALL, stages=SMALL["stages"][:2])
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="exactly one index"):
        bench.bench_pipeline(path, kafka=False, quick=True, echo=lambda _: None)
    with pytest.raises(ConfigError):
        bench.bench_pipeline(tmp_path / "missing.yaml", kafka=False, echo=lambda _: None)


def test_tracker_finds_frames_in_order_and_measures_from_the_ingest_stamp():
    ready: set[str] = set()
    tracker = Tracker(lambda fid: fid in ready, tick=0.001)
    bus = make_bus("memory")
    producer = RecordingProducer(bus.producer(), tracker)
    from vistream.pipeline.ingest import ingest

    clip = [np.full((24, 32, 3), v, np.uint8) for v in (10, 200)]
    ingest(LoopSource(clip, 5), producer, "frames", "s", progress=False)
    assert tracker.sent == 5 and tracker.frame_ids[0] == "s:00000000"
    stop = threading.Event()
    t = threading.Thread(target=tracker.run, args=(stop,))
    t.start()
    try:
        ready.update(tracker.frame_ids[1:])  # the first is not searchable yet: nothing counts
        time.sleep(0.05)
        assert tracker.found == 0
        ready.add(tracker.frame_ids[0])
        deadline = time.monotonic() + 5
        while tracker.found < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    lat = tracker.latencies_ms(0, 5)
    assert tracker.found == 5 and lat.shape == (5,) and (lat >= 40).all()


def test_cpu_seconds_reads_this_process_and_none_for_a_gone_one():
    host = host_busy_seconds()
    busy = time.process_time()
    while time.process_time() - busy < 0.05:
        pass
    assert cpu_seconds("/proc/self/stat") >= 0.03
    assert cpu_seconds("/proc/999999999/stat") is None
    assert host_busy_seconds() - host >= 0.03  # the machine was busy at least with us


def _step(fps, sustained, ingest_fps=None, **stages):
    return {"fps": fps, "sustained": sustained, "ingest_fps": ingest_fps or fps,
            "stages": {n: dict(s) for n, s in stages.items()}}


def test_bottleneck_is_the_stage_that_fell_behind_else_the_busiest():
    a = {"cpu_cores": 0.9, "falls_behind": False, "lag_growth": 0.0}
    b = {"cpu_cores": 0.4, "falls_behind": True, "lag_growth": 0.3}
    steps = [_step(10, True, a=a, b=dict(b, falls_behind=False)), _step(20, False, a=a, b=b)]
    assert bench.bottleneck(steps, ["a", "b"]) == ("b", "lag")
    assert bench.bottleneck(steps[:1], ["a", "b"]) == ("a", "cpu")
    short = [_step(20, False, ingest_fps=12.0, a=a, b=b)]
    assert bench.bottleneck(short, ["a", "b"]) == ("ingest", "ingest fell short")


def test_settle_names_the_stages_that_did_not_read_everything():
    class Rig:
        def __init__(self, lags):
            self.seq = iter(lags)

        def lags(self):
            return next(self.seq)

    caught_up = Rig([{"a": 3, "b": 1}, {"a": 0, "b": 1}, {"a": 0, "b": 0}])
    assert bench._settle(caught_up, timeout=30) == []
    late = Rig([{"a": 0, "b": 7}] * 100)
    assert bench._settle(late, timeout=0.3) == ["b"]


@pytest.mark.slow
def test_quick_memory_bus_run_makes_every_frame_searchable(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    result = bench.bench_pipeline(path, rates=(5,), seconds=2, drain=20, kafka=False,
                                  echo=lambda _: None)
    (step,) = result["memory"]["steps"]
    assert step["frames"] == 10 and step["searchable"] == 10
    assert 0 < step["p50_ms"] <= step["p99_ms"]
    assert set(step["stages"]) == {"thumbs", "features", "index", "ingest+probe"}
    assert result["memory_sustained_fps"] in (0, 5) and result["kafka_sustained_fps"] is None
    assert result["bottleneck"] in ("thumbs", "features", "index", "ingest")
    json.dumps(result)


# Known intermittent defect (issues 24/28, open): now and then the features stage process starts,
# keeps two threads busy (about a core each) and produces nothing, so the warm-up never becomes
# searchable (seen once in a helper's bench run and once in CI on 2026-12-08; it passed in the
# CI run before). Suspects: the OpenMP team of the 1-bit kernel next to torch's threads. Until
# found, the test may fail; when it passes it checks the whole Kafka run.
@pytest.mark.kafka
@pytest.mark.xfail(reason="features process sometimes stalls at start (issue 24)", strict=False)
def test_cli_quick_run_on_the_broker_prints_the_figures(tmp_path):
    from typer.testing import CliRunner

    from vistream.cli.main import app

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    res = CliRunner().invoke(app, ["bench", "pipeline", "--config", str(path), "--quick",
                                   "--rates", "4", "--bootstrap", kafka_bootstrap(),
                                   "--no-memory"], env=dict(os.environ))
    assert res.exit_code == 0, res.output[-3000:]
    figures = json.loads(res.output.strip().splitlines()[-1])
    for key in ("kafka_sustained_fps", "memory_sustained_fps", "p50_ms", "p99_ms", "bottleneck"):
        assert key in figures
    (step,) = figures["kafka"]["steps"]
    assert step["searchable"] == step["frames"]
    assert figures["bottleneck"] in ("thumbs", "features", "index", "ingest")


def test_the_target_is_judged_at_its_own_rate():
    def step(fps, ok, p99):
        return {"fps": fps, "sustained": ok, "p99_ms": p99}

    kafka = {"sustained_fps": 40, "p50_ms": 90, "p99_ms": 700,
             "steps": [step(20, True, 200), step(25, True, 400), step(40, True, 700)]}
    out = bench._summary({"kafka": kafka})
    assert out["meets_target"] and out["p99_ms_at_target_fps"] == 400 and out["p99_ms"] == 700
    kafka["steps"][1]["p99_ms"] = 600
    assert not bench._summary({"kafka": kafka})["meets_target"]
    kafka["steps"] = kafka["steps"][:1]
    assert not bench._summary({"kafka": kafka})["meets_target"]
