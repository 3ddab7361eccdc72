"""The command line as a user meets it: help, clear errors, whole runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from vistream.pipeline.bus import make_bus
from tests.conftest import kafka_bootstrap, random_image

ROOT = Path(__file__).resolve().parents[2]


def vistream(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vistream", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def image_folder(path: Path, n: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(path / f"img{i}.png"), random_image(72, 128, i))
    return path


def test_help_lists_the_commands():
    res = vistream("--help")
    assert res.returncode == 0
    for cmd in ("broker", "ingest", "run", "stage", "demo", "bench", "dlq", "check"):
        assert cmd in res.stdout


def test_bad_inputs_give_clear_errors(tmp_path):
    res = vistream("ingest", str(tmp_path / "nope.mp4"))
    assert res.returncode == 2 and "error:" in res.stderr and "nope.mp4" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{name: a, type: thumbnail, inputs: [f], batch_size: -1}]\n"
                   "bus: {backend: kafka}")
    res = vistream("check", str(bad))
    assert res.returncode == 2 and "stages[0].batch_size" in res.stderr
    assert "Traceback" not in res.stderr
    res = vistream("stage", "summary", "--config", str(ROOT / "configs" / "demo.yaml"))
    assert res.returncode == 2 and "memory bus" in res.stderr
    res = vistream("train", "deblur", "--generator", "32,48", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "C1,C2,BLOCKS" in res.stderr and "Traceback" not in res.stderr


def test_run_on_the_memory_bus_reports_a_summary(tmp_path):
    folder = image_folder(tmp_path / "imgs", 12)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
bus: {{backend: memory}}
sources: [{{source: "{folder}", topic: frames, stream_id: shop}}]
stages:
  - {{name: thumbs, type: thumbnail, inputs: [frames], outputs: {{frame_summary: sums}}}}
  - {{name: sink, type: summary, inputs: [sums], params: {{out_dir: "{tmp_path / 'out'}"}}}}
""")
    res = vistream("run", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "stage thumbs: in 12, out 12" in res.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["streams"]["shop"]["width"] == 128
    assert (tmp_path / "out" / "contact_sheet.png").exists()


def test_bench_bus_prints_json_last():
    res = vistream("bench", "bus", "--frames", "50", "--no-kafka")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["bench"] == "bus" and result["memory_fps"] > 0 and result["frames"] == 50


@pytest.mark.kafka
def test_ingest_folder_to_kafka(tmp_path, topic_name):
    bootstrap = kafka_bootstrap()
    folder = image_folder(tmp_path / "imgs", 7)
    res = vistream("ingest", str(folder), "--topic", topic_name, "--bootstrap", bootstrap,
                   "--stream-id", "lobby", "--quality", "70", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "sent 7 frames" in res.stdout
    with make_bus("kafka", bootstrap) as bus, bus.consumer([topic_name], "check") as c:
        recs = []
        deadline = time.monotonic() + 30
        while len(recs) < 7 and time.monotonic() < deadline:
            recs += c.poll(100, 0.5)
    heads = [dict(r.headers) for r in recs]
    assert sorted(int(h["seq"]) for h in heads) == list(range(7))
    assert {h["stream_id"] for h in heads} == {b"lobby"} and {r.key for r in recs} == {b"lobby"}
    assert {h["content_type"] for h in heads} == {b"image/jpeg"}


@pytest.mark.kafka
def test_run_on_kafka_starts_a_process_per_stage_and_stops_on_sigint(tmp_path, topic_name):
    bootstrap = kafka_bootstrap()
    folder = image_folder(tmp_path / "imgs", 20)
    out = tmp_path / "out"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"""
bus: {{backend: kafka, bootstrap: "{bootstrap}", partitions: 2}}
sources: [{{source: "{folder}", topic: {topic_name}, stream_id: dock}}]
stages:
  - {{name: thumbs, type: thumbnail, inputs: [{topic_name}], replicas: 2,
      outputs: {{frame_summary: {topic_name}-sums}}, group: g-{topic_name}-t}}
  - {{name: sink, type: summary, inputs: [{topic_name}-sums], group: g-{topic_name}-s,
      params: {{out_dir: "{out}"}}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "vistream", "run", str(cfg)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "frames").glob("*.json"))) < 20:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "pipeline did not finish"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    log = proc.stderr.read()
    assert proc.returncode == 0, log[-3000:]
    assert log.count("stage stopped") == 3, "two thumbs replicas and one sink, stopped cleanly"
    assert json.loads((out / "summary.json").read_text())["frames"] == 20


@pytest.mark.kafka
def test_dlq_command_shows_reasons(topic_name):
    import threading

    from prometheus_client import CollectorRegistry

    from vistream.pipeline.metrics import StageMetrics
    from vistream.pipeline.runner import StageRunner
    from vistream.stages.relay import RelayStage

    bootstrap = kafka_bootstrap()
    with make_bus("kafka", bootstrap) as bus:
        with bus.producer() as p:
            p.send(topic_name, b"definitely not a jpeg", b"cam")
            p.flush()
        StageRunner(RelayStage(), bus, [topic_name], {"frame": topic_name + "-out"},
                    group_id=f"g-{topic_name}",
                    metrics=StageMetrics("dlq-cli", CollectorRegistry())).run(
            threading.Event(), idle_timeout=1)
    res = vistream("dlq", topic_name + ".dlq", "--bootstrap", bootstrap)
    assert res.returncode == 0, res.stderr
    assert f"{topic_name}/0/0" in res.stdout and "neither JPEG nor PNG" in res.stdout


def test_train_deblur_runs_exports_and_plots_its_losses(tmp_path):
    d, a = tmp_path / "s3e", tmp_path / "abl"
    res = vistream("train", "deblur", "--steps", "3", "--batch", "1", "--size", "32",
                   "--generator", "8,12,1,16,1",
                   "--out", str(d), "--ablation-out", str(a), "--export", str(d / "w.safetensors"),
                   "--ablation-export", str(a / "w.safetensors"), "--no-progress")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["plot"] == str(d / "losses.png")
    assert (d / "losses.png").stat().st_size > 10_000
    from vistream.models.deblur.s3e import load_weights

    for path, semantic in ((d / "w.safetensors", True), (a / "w.safetensors", False)):
        model, manifest = load_weights(path)
        assert manifest["train"]["generator"] == [8, 12, 1, 16, 1] and model.cfg.semantic is semantic
        assert model.generator.deep is not None
        assert manifest["train"]["augment"] is True


def test_eval_deblur_refuses_unknown_sets():
    res = vistream("eval", "deblur", "--sets", "severe,blurry")
    assert res.returncode != 0 and "blurry" in res.stderr and "severe-unseen" in res.stderr


def test_pruning_refuses_a_flops_target_no_structure_reaches(tmp_path):
    from vistream.models.artifacts import export_artifact
    from vistream.models.backbones import create_model

    base = tmp_path / "r56.vsa"
    export_artifact(create_model("resnet56", num_classes=10).eval(), base, onnx=False)
    for cmd in (["eval", "pruning", "--out", str(tmp_path / "e")],
                ["compress", "abc", "--out", str(tmp_path / "c")]):
        res = vistream(*cmd, "--arch", "resnet56", "--base", str(base), "--flops-target", "0.25")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "below 0.298, the smallest structure" in res.stderr and "fewer channels" in res.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "c" / "abc-s0").exists()
