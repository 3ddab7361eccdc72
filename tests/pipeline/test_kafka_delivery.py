"""Delivery guarantees on the real broker: crash recovery, bare clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vistream.pipeline.bus import TopicSpec, make_bus
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Frame
from tests.conftest import kafka_bootstrap, random_image

pytestmark = [pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]


def stage_cmd(name: str, cfg: Path, idle_exit: float) -> list[str]:
    return [sys.executable, "-m", "vistream", "stage", name, "--config", str(cfg),
            "--idle-exit", str(idle_exit), "--log-format", "json"]


def total(bus, topic: str) -> int:
    return sum(bus.end_offsets(topic).values())


def read_all(bus, topic: str, timeout: float = 60) -> list:
    """Every record now in ``topic`` (up to its end offsets at the time of the call)."""
    end = total(bus, topic)
    out: list = []
    with bus.consumer([topic], f"reader-{time.monotonic_ns()}") as c:
        deadline = time.monotonic() + timeout
        while len(out) < end and time.monotonic() < deadline:
            out += c.poll(500, 0.5)
    assert len(out) == end, f"read {len(out)} of {end} records of {topic}"
    return out


def run_to_end(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def kill_mid_stream(cmd: list[str], bus, out_topic: str, n: int, env: dict) -> int:
    """Start a stage process, SIGKILL it once it has produced something, return that count."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while total(bus, out_topic) == 0:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "stage produced nothing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return total(bus, out_topic)


def test_sigkill_mid_stream_loses_nothing_and_sink_is_exactly_once(tmp_path, topic_name):
    bootstrap = kafka_bootstrap()
    n = 300
    frames, sums, sink_dir = topic_name, topic_name + "-sums", tmp_path / "sink"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
name: crash
bus: {{backend: kafka, bootstrap: "{bootstrap}", partitions: 2}}
stages:
  - {{name: thumbs, type: thumbnail, inputs: [{frames}], outputs: {{frame_summary: {sums}}},
      batch_size: 4, group: g-{topic_name}-thumbs}}
  - {{name: sink, type: summary, inputs: [{sums}], batch_size: 4, group: g-{topic_name}-sink,
      params: {{out_dir: "{sink_dir}"}}}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with make_bus("kafka", bootstrap) as bus:
        bus.create_topics([TopicSpec(frames, 2), TopicSpec(sums, 2)])
        with bus.producer() as p:
            for i in range(n):
                rec = encode_message(Frame.from_image(random_image(270, 480, i), f"cam{i % 3}", i))
                p.send(frames, rec.value, rec.key, rec.headers)
            p.flush()

        at_kill = kill_mid_stream(stage_cmd("thumbs", cfg, 4), bus, sums, n, env)
        assert at_kill < n, "the stage must die mid-stream for this test to mean anything"
        run_to_end(stage_cmd("thumbs", cfg, 4), env)
        out = read_all(bus, sums)
        ids = [dict(r.headers)["frame_id"].decode() for r in out]
        expected = {f"cam{i % 3}:{i:08d}" for i in range(n)}
        assert set(ids) == expected, "every frame reaches the output at least once"

        # The idempotent sink, killed and restarted too, ends with each frame exactly once.
        kill_sink_at = kill_mid_stream_sink(stage_cmd("sink", cfg, 4), sink_dir, env)
        assert kill_sink_at < len(expected)
        run_to_end(stage_cmd("sink", cfg, 4), env)
    entries = sorted(p.name for p in (sink_dir / "frames").glob("*.json"))
    assert len(entries) == n
    assert not list((sink_dir / "frames").glob("*.tmp*")), "no half-written entries"


def kill_mid_stream_sink(cmd: list[str], sink_dir: Path, env: dict) -> int:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    frames_dir = sink_dir / "frames"
    while not (frames_dir.exists() and any(frames_dir.glob("*.json"))):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return len(list(frames_dir.glob("*.json")))


def test_plain_jpeg_from_a_bare_kafka_client_is_processed(topic_name):
    from kafka import KafkaProducer
    from prometheus_client import CollectorRegistry

    from vistream.pipeline.metrics import StageMetrics
    from vistream.pipeline.runner import StageRunner
    from vistream.stages.thumbnail import ThumbnailStage

    bootstrap = kafka_bootstrap()
    jpeg = Frame.from_image(random_image(90, 160, 1), "x", 0).data
    raw = KafkaProducer(bootstrap_servers=bootstrap)  # no key, no headers: as kcat sends
    raw.send(topic_name, jpeg)
    raw.flush()
    raw.close()
    with make_bus("kafka", bootstrap) as bus:
        runner = StageRunner(ThumbnailStage(), bus, [topic_name],
                             {"frame_summary": topic_name + "-out"},
                             group_id=f"g-{topic_name}",
                             metrics=StageMetrics("bare", CollectorRegistry()))
        runner.run(threading.Event(), idle_timeout=2)
        out = read_all(bus, topic_name + "-out")
    assert len(out) == 1
    assert dict(out[0].headers)["frame_id"].decode() == f"{topic_name}/0/0"
    assert runner.stats.dead_lettered == 0
