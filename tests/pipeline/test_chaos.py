"""The chaos harness: seeded input and kill schedule, process supervision, per-run configs,
the comparison with the fault-free twin; a short chaos run on a broker of its own (kafka)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vistream.pipeline.chaos import (
    RunResult,
    Supervisor,
    _Killer,
    chaos_run,
    compare,
    run_config,
    source_topics,
    synthetic_frames,
)
from vistream.pipeline.config import load_config
from tests.conftest import kafka_bootstrap

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_frames_are_seeded_and_distinct():
    a = [f.data for f in synthetic_frames(10, seed=3)]
    b = [f.data for f in synthetic_frames(10, seed=3)]
    c = [f.data for f in synthetic_frames(10, seed=4)]
    assert a == b and a != c
    ids = [f.frame_id for f in synthetic_frames(10, seed=3)]
    assert len(set(ids)) == 10


def test_source_topics_are_read_and_never_written():
    cfg = load_config(ROOT / "configs" / "chaos-kafka.yaml")
    assert source_topics(cfg) == ["frames"]


def test_run_config_gives_each_process_its_broker_folders_and_metrics_port(tmp_path):
    cfg, specs, ports = run_config(ROOT / "configs" / "chaos-kafka.yaml", tmp_path,
                                   "127.0.0.1:40000")
    assert sorted(specs) == ["features#0", "index#0", "summary#0", "thumbs#0", "thumbs#1"]
    assert len(set(ports.values())) == len(specs)
    assert cfg.bus.bootstrap == "127.0.0.1:40000"
    assert cfg.stage("index").params["snapshot_dir"] == str(tmp_path / "out" / "index")
    assert cfg.stage("summary").params["out_dir"] == str(tmp_path / "out" / "summary")
    own = load_config(specs["thumbs#1"][specs["thumbs#1"].index("--config") + 1])
    assert own.stage("thumbs").metrics_port == ports["thumbs#1"]


class FakeSupervisor:
    def __init__(self) -> None:
        self.killed: list[str] = []

    def alive(self) -> list[str]:
        return ["a#0", "b#0", "c#0"]

    def kill(self, name: str) -> None:
        self.killed.append(name)

    def check(self) -> None:
        pass


def test_the_kill_schedule_is_seeded():
    def schedule(seed: int) -> list[str]:
        sup = FakeSupervisor()
        k = _Killer(sup, mean_gap=1.0, seed=seed)
        for _ in range(20):
            k.next_at = 0  # due now
            k.tick()
        return sup.killed

    assert schedule(1) == schedule(1)
    assert schedule(1) != schedule(2)
    assert set(schedule(1)) == {"a#0", "b#0", "c#0"}


def test_supervisor_restarts_a_killed_process_and_tells_kills_from_crashes(tmp_path):
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    sup = Supervisor({"s#0": sleep, "c#0": crash}, tmp_path, None)
    sup.start_all()
    try:
        sup.procs["c#0"].wait(30)
        sup.kill("s#0")
        sup.check()
        assert sup.kills == 1 and sup.restarts == 2 and sup.kills_by_stage == {"s": 1}
        assert sup.exits == [("c#0", 3)], "only the crash is an unexpected exit"
        assert sup.procs["s#0"].poll() is None, "the killed process runs again"
    finally:
        sup.stop_all(timeout=10)


def run(index: dict[str, str], rows: int, entries: set[str], dlq: int = 0) -> RunResult:
    return RunResult(frames=3, index={"index": index}, index_rows={"index": rows},
                     sinks={"sink": {f: {"frame_id": f} for f in entries}}, dead_letters=dlq,
                     drained=True)


def test_compare_reports_lost_duplicates_and_differences():
    frames = list(synthetic_frames(3, seed=0))
    ids = [f.frame_id for f in frames]
    full = {i: "ab" for i in ids}
    twin = run(full, 3, set(ids))
    same = compare(twin, run(dict(full), 3, set(ids)), frames, 1, 0)
    assert same["index_identical"] and same["sinks_identical"]
    assert same["lost"] == 0 and same["duplicated_in_index"] == 0

    bad = compare(twin, run({ids[0]: "ab", ids[1]: "ff"}, 3, set(ids[:2]), dlq=2), frames, 1, 0)
    assert not bad["index_identical"] and not bad["sinks_identical"]
    assert bad["lost"] == 1
    assert bad["duplicated_in_index"] == 1  # 3 rows for 2 frame ids
    assert bad["dead_letters"] == 2


@pytest.mark.kafka
def test_a_short_chaos_run_equals_its_fault_free_twin(tmp_path):
    """Thumbnail stage (2 replicas) and sink killed a few times in 20 s (about 2 min)."""
    kafka_bootstrap()  # the broker jars and Java are there when the shared broker is
    from vistream.pipeline.chaos import free_port

    cfg = tmp_path / "p.yaml"
    cfg.write_text("""name: chaos-test
bus: {backend: kafka, bootstrap: "127.0.0.1:9092", partitions: 2}
stages:
  - {name: thumbs, type: thumbnail, inputs: [frames], outputs: {frame_summary: summaries},
     replicas: 2, batch_size: 8, params: {width: 64}}
  - {name: sink, type: summary, inputs: [summaries], batch_size: 16,
     params: {out_dir: out/sink, contact_sheet_max: 4}}
""")
    report = chaos_run(cfg, minutes=20 / 60, seed=2, fps=6, kill_every=4, port=free_port(pair=True),
                       work_dir=tmp_path / "work")
    assert report["kills"] >= 1 and report["restarts"] == report["kills"]
    assert report["unexpected_exits"] == 0
    assert report["lost"] == 0 and report["dead_letters"] == 0
    assert report["sinks_identical"] and report["sink_entries"] == {"sink": 120}
    assert report["drained"]


def test_a_pipeline_not_on_kafka_is_refused_before_any_broker_starts(tmp_path, monkeypatch):
    from vistream.pipeline import broker
    from vistream.pipeline.config import ConfigError

    monkeypatch.setattr(broker, "start", lambda *a, **k: pytest.fail("no broker for this"))
    with pytest.raises(ConfigError, match="bus.backend: kafka"):
        chaos_run(ROOT / "configs" / "demo.yaml", minutes=0.1, work_dir=tmp_path)
