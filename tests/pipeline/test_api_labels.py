"""POST /labels and GET /stats on the query API: applied, pending, 422 on bad input, and the
figures the online learner records."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.api_labels import label_record, send_label
from vistream.pipeline.bus import TopicSpec, make_bus
from vistream.pipeline.service import create_app
from vistream.pipeline.wire import decode_message


def clustered(n: int, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, d)).astype(np.float32) * 3
    y = rng.integers(0, 3, n)
    return centres[y] + rng.standard_normal((n, d)).astype(np.float32) * 0.3, y


def crops_index(n_tracks: int = 6, per_track: int = 5, train_chunk: int = 10) -> LiveIndex:
    """An index of crops: ``per_track`` rows per track, track t's features around centre t % 3."""
    X, _ = clustered(n_tracks * per_track)
    index = LiveIndex("sdoh", n_bits=16, train_chunk=train_chunk, background=False,
                      model_params={"max_iter": 5})
    tids = [i % n_tracks for i in range(len(X))]
    index.add([f"cam0:{i:08d}#t{t}" for i, t in enumerate(tids)], X,
              tracks=[("cam0", t) for t in tids])
    return index


@pytest.fixture()
def client():
    index = crops_index()
    yield TestClient(create_app(index)), index
    index.close()


def test_label_by_track_applies_to_its_rows(client):
    c, index = client
    r = c.post("/labels", json={"track_id": 2, "stream_id": "cam0", "class_name": "car"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "applied" and body["rows_labelled"] == 5
    assert body["class_name"] == "car" and body["class_id"] == 0
    assert index.label("cam0:00000002#t2") == 0 and index.label("cam0:00000003#t3") is None
    again = c.post("/labels", json={"track_id": 2, "stream_id": "cam0", "class_name": "bus"})
    assert again.status_code == 200 and again.json()["status"] == "unchanged"


def test_label_by_frame_and_unknown_targets_are_pending(client):
    c, index = client
    r = c.post("/labels", json={"frame_id": "cam0:00000004#t4", "class_name": "person"})
    assert r.status_code == 200 and r.json()["rows_labelled"] == 1
    pend = c.post("/labels", json={"frame_id": "cam9:00000001", "class_name": "person"})
    assert pend.status_code == 202 and pend.json()["status"] == "pending"
    pend = c.post("/labels", json={"track_id": 99, "class_name": "dog"})
    assert pend.status_code == 202 and pend.json()["labels_pending"] == 2
    # the track arrives later: its rows take the label
    X, _ = clustered(2, seed=3)
    index.add(["cam1:00000000#t99", "cam1:00000001#t99"], X, tracks=[("cam1", 99)] * 2)
    assert index.label("cam1:00000001#t99") == index.class_names()["dog"]
    st = c.get("/stats").json()
    assert st["labels_pending"] == 1 and st["labels_matched"] == 2
    assert st["classes"] == ["person", "dog"]


@pytest.mark.parametrize("body", [
    {"class_name": "car"},                                      # no target
    {"frame_id": "f", "track_id": 1, "class_name": "car"},      # two targets
    {"frame_id": "f"},                                          # no class
    {"frame_id": "f", "class_name": ""},                        # empty class
    {"frame_id": "f", "class_name": "   "},                     # blank class
    {"frame_id": "f", "class_name": "x" * 201},                 # over-long class
    {"track_id": -1, "class_name": "car"},                      # negative track
    {"track_id": "3", "class_name": "car"},                     # not an integer
    {"track_id": True, "class_name": "car"},
    {"frame_id": "f", "class_name": "car", "label": 3},         # unknown field
    {"frame_id": "", "class_name": "car"},
])
def test_bad_labels_are_422(client, body):
    c, index = client
    r = c.post("/labels", json=body)
    assert r.status_code == 422, (body, r.text)
    assert index.label_stats()["labelled"] == 0 and index.label_stats()["labels_pending"] == 0


def test_malformed_json_is_422(client):
    c, _ = client
    r = c.post("/labels", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_a_read_only_index_refuses_labels(tmp_path):
    index = crops_index()
    index.snapshot(tmp_path)
    index.close()
    ro = LiveIndex.load(tmp_path, read_only=True)
    r = TestClient(create_app(ro)).post("/labels", json={"track_id": 1, "class_name": "car"})
    assert r.status_code == 409


def test_stats_report_the_fit_and_swap():
    index = crops_index(train_chunk=10)
    c = TestClient(create_app(index))
    st = c.get("/stats").json()
    assert st["model"] == "lsh" and st["warm_start"] and st["configured_model"] == "sdoh"
    assert st["codes_indexed"] == 30 and st["labelled"] == 0
    assert st["last_fit_at"] is None and st["last_swap_at"] is None
    v0 = st["model_version"]
    for t, name in enumerate(["a", "b", "c"]):
        assert c.post("/labels", json={"track_id": t, "stream_id": "cam0",
                                       "class_name": name}).status_code == 200
    st = c.get("/stats").json()
    assert st["labelled"] == 15 and st["model"] == "sdoh" and not st["warm_start"]
    assert st["model_version"] >= 1 and (st["model"], st["model_version"]) != ("lsh", v0)
    assert st["swaps"] == 1 and st["training_queue"] == 5
    assert st["last_fit_at"].endswith("+00:00") and st["last_swap_at"] is not None
    assert st["classes"] == ["a", "b", "c"]
    index.close()


def test_send_label_produces_a_label_record():
    bus = make_bus("memory")
    bus.create_topics([TopicSpec("labels", 1)])
    with bus.producer() as p:
        send_label(p, "labels", label_record("car", track_id=4, stream_id="cam0"))
        send_label(p, "labels", label_record("bus", frame_id="cam1:00000007"))
    with bus.consumer(["labels"], "reader") as c:
        recs = c.poll(10, 1.0)
    msgs = [decode_message(r, ("label",)) for r in recs]
    assert [(m.track_id, m.stream_id, m.class_name) for m in msgs] == [
        (4, "cam0", "car"), (None, "cam1", "bus")]
    assert recs[1].key == b"cam1"
    with pytest.raises(ValueError):
        label_record("car")  # no target
    bus.close()
