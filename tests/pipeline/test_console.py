"""The web console's API: streams with their latest frame, tracks and caption, stage figures,
thumbnails by frame id, offline API docs; never a 5xx on bad input."""

from __future__ import annotations

import types

import cv2
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.app import InProcessPipeline
from vistream.pipeline.config import parse_config
from vistream.pipeline.console import attach_console, stage_views, store_from_config
from vistream.pipeline.metrics import StageMetrics
from vistream.pipeline.runner import RunnerStats
from vistream.pipeline.service import create_app
from vistream.stages.records import decode_image, encode_image
from vistream.stages.thumbstore import ThumbnailStore
from tests.pipeline import console_world as world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    app, index, store, frames = world.build(tmp_path_factory.mktemp("console"))
    return TestClient(app), index, store, frames


def test_page_and_assets_are_local(setup):
    client = setup[0]
    page = client.get("/console")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for asset in ("/console/static/console.js", "/console/static/console.css"):
        assert client.get(asset).status_code == 200


def test_api_docs_work_offline(setup):
    client = setup[0]
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower() and "/console/swagger/swagger-ui-bundle.js" in docs.text
    js = client.get("/console/swagger/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/console/swagger/swagger-ui.css").status_code == 200


def test_streams_show_latest_frame_tracks_and_caption(setup):
    client = setup[0]
    out = client.get("/console/api/streams").json()
    assert [s["stream_id"] for s in out["streams"]] == list(world.STREAMS)
    gate = out["streams"][0]
    last = f"gate:{world.FRAMES_PER_STREAM - 1:08d}"
    assert gate["frame_id"] == last and (gate["width"], gate["height"]) == (320, 240)
    assert gate["tracks"] == [{"track_id": 1, "box": [150.0, 100.0, 40.0, 40.0], "score": 0.9}]
    assert gate["caption"] == "a white box" and gate["caption_frame_id"] == last
    assert out["streams"][1]["caption"] is None
    assert out["store"]["frames"] == 2 * world.FRAMES_PER_STREAM
    thumb = client.get(gate["thumb_url"])
    assert thumb.headers["content-type"] == "image/jpeg"
    assert decode_image(thumb.content).shape == (120, 160, 3)


def test_thumbnail_of_unknown_frame_is_a_404_with_a_message(setup):
    client = setup[0]
    r = client.get("/console/thumbs/nope:00000001")
    assert r.status_code == 404 and "no thumbnail for frame id 'nope:00000001'" in r.json()["detail"]
    # frame ids of plain Kafka records hold slashes: topic/partition/offset
    assert client.get("/console/thumbs/frames%2F0%2F12").status_code == 404


def test_search_hits_have_thumbnails(setup):
    client, _, _, frames = setup
    fid = "yard:00000004"
    r = client.post("/search/image?k=3",
                    files={"image": ("q.png", encode_image(frames[fid], "image/png"), "image/png")})
    hits = r.json()["hits"]
    assert r.status_code == 200 and hits[0]["frame_id"] == fid
    for h in hits:
        assert client.get("/console/thumbs/" + h["frame_id"]).status_code == 200


def test_config_says_what_the_page_may_ask(setup):
    out = setup[0].get("/console/api/config").json()
    assert out == {"max_k": 100, "max_upload_bytes": 300_000, "image_search": True,
                   "thumbnails": True}


def test_console_without_store_or_pipeline(tmp_path):
    client = TestClient(create_app(LiveIndex("lsh", n_bits=16)))
    assert client.get("/console").status_code == 200
    out = client.get("/console/api/streams").json()
    assert out == {"store": None, "streams": [], "stages": []}
    r = client.get("/console/thumbs/a:1")
    assert r.status_code == 404 and "store_dir" in r.json()["detail"]
    assert client.get("/console/api/config").json()["image_search"] is False


def _runner(name, registry, **counts):
    metrics = StageMetrics(name, registry)
    return types.SimpleNamespace(name=name, stats=RunnerStats(**counts), metrics=metrics)


def test_stage_figures_sum_replicas_and_rate():
    registry = CollectorRegistry()
    a = _runner("thumbs", registry, records_in=100, records_out=100, dead_lettered=2, errors=1)
    b = _runner("thumbs", registry, records_in=50, records_out=50)
    idx = _runner("index", registry, records_in=10)
    a.metrics.consumer_lag.set(7)
    runners = [a, b, idx]
    sources = attach_console(types.SimpleNamespace(state=types.SimpleNamespace()),
                             live=types.SimpleNamespace(runners=runners))
    first = {v.stage: v for v in stage_views(sources, now=100.0)}
    assert first["thumbs"].replicas == 2 and first["thumbs"].records_in == 150
    assert (first["thumbs"].dead_lettered, first["thumbs"].errors, first["thumbs"].lag) == (2, 1, 7)
    a.stats.records_in += 300
    later = {v.stage: v for v in stage_views(sources, now=102.0)}
    assert later["thumbs"].records_per_s == 150.0 and later["index"].records_per_s == 0.0


def test_store_from_config(tmp_path):
    stages = [types.SimpleNamespace(type="features", params={}),
              types.SimpleNamespace(type="thumbnail", params={"store_dir": str(tmp_path / "t")})]
    store = store_from_config(types.SimpleNamespace(stages=stages))
    assert store is not None and store.root == tmp_path / "t"
    assert store_from_config(types.SimpleNamespace(stages=stages[:1])) is None
    assert store_from_config(None) is None


def test_console_over_a_running_pipeline(tmp_path):
    """The thumbnail stage under its runner fills the store; the console reads it and the
    runners' figures, as `vistream serve --config` wires them."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), world.scene(i))
    cfg = parse_config({
        "name": "console-test", "bus": {"backend": "memory", "partitions": 1},
        "sources": [{"source": str(folder), "topic": "frames", "stream_id": "door"}],
        "stages": [{"name": "thumbs", "type": "thumbnail", "inputs": ["frames", "tracks"],
                    "outputs": {"frame_summary": "summaries"},
                    "params": {"width": 80, "store_dir": str(tmp_path / "thumbs")}}]})
    pipeline = InProcessPipeline(cfg, progress=False)
    pipeline.run(drain_idle=0.2)
    app = create_app(LiveIndex("lsh", n_bits=16))
    attach_console(app, cfg, pipeline)
    out = TestClient(app).get("/console/api/streams").json()
    assert [(s["stream_id"], s["frame_id"], s["width"]) for s in out["streams"]] == [
        ("door", "door:00000005", 320)]
    assert out["stages"] == [{"stage": "thumbs", "replicas": 1, "records_in": 6, "records_out": 6,
                              "records_per_s": 0.0, "lag": 0, "dead_lettered": 0, "errors": 0}]


@pytest.mark.parametrize("path", ["/console/thumbs/%FF%FE", "/console/thumbs/%00",
                                  "/console/thumbs/" + "a" * 20_000,
                                  "/console/thumbs/..%2F..%2Fetc%2Fpasswd",
                                  "/console/static/..%2F..%2Fservice.py",
                                  "/console/static/%2e%2e/console.py"])
def test_odd_paths_are_404s(setup, path):
    assert setup[0].get(path).status_code == 404


def test_an_empty_store_is_still_the_store(tmp_path):
    app = create_app(LiveIndex("lsh", n_bits=16))
    sources = attach_console(app, store=ThumbnailStore(tmp_path))
    assert sources.store is not None
    out = TestClient(app).get("/console/api/streams").json()
    assert out["store"]["frames"] == 0 and out["streams"] == []
