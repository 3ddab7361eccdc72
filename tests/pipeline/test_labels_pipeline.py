"""SDOH learns from labels in a running pipeline: crops and labels by track id on the memory
bus through InProcessPipeline; GET /stats, the stage gauges and `vistream label`."""

from __future__ import annotations

import time

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from vistream.pipeline.app import InProcessPipeline
from vistream.pipeline.bus import make_bus
from vistream.pipeline.config import parse_config
from vistream.pipeline.metrics import StageMetrics, watch_stage
from vistream.pipeline.service import create_app
from vistream.pipeline.wire import decode_message, encode_message
from vistream.stages.records import Features, Label

CONFIG = {
    "name": "labels-test",
    "bus": {"backend": "memory", "partitions": 1},
    # the memory bus wants a source; the tests build the pipeline with sources=False and
    # produce features and labels themselves, as a features stage and `vistream label` would
    "sources": [{"source": "unused.mp4", "topic": "frames"}],
    "stages": [{"name": "index", "type": "hashing", "inputs": ["features", "labels"],
                "batch_size": 32, "poll_timeout": 0.05,
                "params": {"model": "sdoh", "n_bits": 16, "train_chunk": 24,
                           "feature_label": "track", "background": True,
                           "model_params": {"max_iter": 10}}}],
}


def crops(n_tracks: int, frames: range, seed: int = 0) -> list[Features]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((3, 8)).astype(np.float32) * 3
    return [Features(f"cam0:{f:08d}", "cam0", model_id="m1", label=t,
                     vector=centres[t % 3] + rng.standard_normal(8).astype(np.float32) * 0.3)
            for f in frames for t in range(n_tracks)]


def send(bus, topic: str, msgs) -> None:
    with bus.producer() as p:
        for m in msgs:
            r = encode_message(m)
            p.send(topic, r.value, r.key, r.headers)
        p.flush()


def index_pipeline() -> InProcessPipeline:
    pipeline = InProcessPipeline(parse_config(CONFIG), sources=False)
    pipeline.index_stage = "index"  # what serving() sets: .index is that stage's live index
    return pipeline


def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_sdoh_learns_from_track_labels_in_a_running_pipeline():
    pipeline = index_pipeline()
    bus = pipeline.bus
    pipeline.start()
    try:
        index = pipeline.index
        client = TestClient(create_app(index))
        send(bus, "features", crops(6, range(4)))
        assert wait_for(lambda: len(index) == 24)
        st = client.get("/stats").json()
        assert st["model"] == "lsh" and st["warm_start"] and st["last_swap_at"] is None
        v_warm = (st["model"], st["model_version"])
        # labels by track id on the bus: tracks 0..2 now, 3..5 later by the API
        send(bus, "labels", [Label("", "cam0", track_id=t, class_name=["car", "bus", "bike"][t])
                             for t in range(3)])
        assert wait_for(lambda: index.label_stats()["labelled"] == 12)
        r = client.post("/labels", json={"track_id": 3, "stream_id": "cam0",
                                          "class_name": "car"})
        assert r.status_code == 200 and r.json()["rows_labelled"] == 4
        send(bus, "features", crops(6, range(4, 8), seed=1))  # later crops of labelled tracks
        assert wait_for(lambda: index.label_stats()["swaps"] >= 1 and not index.updating)
        assert index.sync(30)
        st = client.get("/stats").json()
        assert st["model"] == "sdoh" and not st["warm_start"]
        assert (st["model"], st["model_version"]) != v_warm and st["model_version"] >= 1
        assert st["labelled"] == 32 and st["codes_indexed"] == 48
        assert st["last_fit_at"] and st["last_swap_at"]
        assert st["classes"] == ["car", "bus", "bike"]
        # the searches answer from the learned model
        hit = client.get("/search/frame", params={"frame_id": "cam0:00000005#t0", "k": 3})
        assert hit.status_code == 200 and hit.json()["model"] == "sdoh"
    finally:
        pipeline.close()


def test_stage_figures_are_gauges():
    pipeline = index_pipeline()
    try:
        stage = pipeline.stage_objects["index"]
        registry = CollectorRegistry()
        StageMetrics("index", registry).watch_stage(stage)
        watch_stage("index", stage, registry)  # watched twice: still one series
        stage.index.add(["a#t1", "b#t1"], np.eye(2, 8, dtype=np.float32), tracks=[("c", 1)] * 2)
        stage.index.apply_label(track_id=1, class_name="car")
        got = {k: registry.get_sample_value(f"vistream_stage_{k}", {"stage": "index"})
               for k in ("codes_indexed", "labelled", "labels_matched", "classes",
                         "model_version", "last_swap_at")}
        assert got == {"codes_indexed": 2, "labelled": 2, "labels_matched": 1, "classes": 1,
                       "model_version": 1, "last_swap_at": 0}
        info = {"stage": "index", "model": "lsh", "configured_model": "sdoh"}
        assert registry.get_sample_value("vistream_stage_model_info", info) == 1
    finally:
        pipeline.close()


def test_label_command(monkeypatch):
    # deferred: importing the CLI app registers every command module (import cost only here)
    from vistream.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["label", "--help"])
    assert res.exit_code == 0
    for opt in ("--frame-id", "--track-id", "--stream-id", "--class", "--topic", "--bootstrap"):
        assert opt in res.output
    assert runner.invoke(app, ["label", "--class", "car"]).exit_code == 2
    assert runner.invoke(app, ["label", "--class", "car", "--track-id", "3"]).exit_code == 2
    assert runner.invoke(app, ["label", "--class", " ", "--frame-id", "f"]).exit_code == 2

    bus = make_bus("memory", default_partitions=1)
    close = bus.close
    monkeypatch.setattr(bus, "close", lambda: None)  # read it after the command is done
    monkeypatch.setattr("vistream.pipeline.bus.make_bus", lambda *a, **k: bus)
    res = runner.invoke(app, ["label", "--class", "car", "--track-id", "3", "--stream-id",
                              "cam0", "--topic", "lab"])
    assert res.exit_code == 0, res.output
    with bus.consumer(["lab"], "reader") as c:
        (rec,) = c.poll(10, 1.0)
    msg = decode_message(rec, ("label",))
    assert (msg.track_id, msg.stream_id, msg.class_name, msg.frame_id) == (3, "cam0", "car", "")
    close()
