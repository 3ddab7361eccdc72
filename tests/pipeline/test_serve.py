"""vistream serve gives POST /tracks the pipeline's producer when a track stage reads the init
topic, and leaves it answering 503 otherwise."""

from types import SimpleNamespace

from fastapi import FastAPI

from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.config import load_config
from vistream.pipeline.serve import _attach_track_producer

CONFIG = """
name: t
bus: {{backend: kafka}}
stages:
  - name: track
    type: track_boxes
    inputs: [frames{extra}]
    outputs: {{track_state: states, tracks: tracks}}
  - name: index
    type: hashing
    inputs: [features, tracks]
"""


def _cfg(tmp_path, extra: str):
    path = tmp_path / "p.yaml"
    path.write_text(CONFIG.format(extra=extra))
    return load_config(path)


def test_track_producer_attached_when_a_track_stage_reads_the_init_topic(tmp_path):
    app, live = FastAPI(), SimpleNamespace(bus=MemoryBus())
    producer = _attach_track_producer(app, _cfg(tmp_path, ", track-inits"), live)
    assert producer is not None
    assert app.state.track_producer is producer and app.state.track_topic == "track-inits"
    producer.close()


def test_no_track_producer_without_a_reader_or_a_live_pipeline(tmp_path):
    app, live = FastAPI(), SimpleNamespace(bus=MemoryBus())
    assert _attach_track_producer(app, _cfg(tmp_path, ""), live) is None
    assert _attach_track_producer(app, _cfg(tmp_path, ", track-inits"), None) is None
    assert not hasattr(app.state, "track_producer")
