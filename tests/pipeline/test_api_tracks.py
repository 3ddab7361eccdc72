"""POST /tracks and DELETE /tracks/{id}: validated, produced as track_init records to the bus
(the memory bus here), which the track stage then applies."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.api_tracks import attach_producer, check_box, start_record, stop_record
from vistream.pipeline.bus import TopicSpec
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.service import create_app
from vistream.pipeline.wire import decode_message
from vistream.stages.records import TrackInit


@pytest.fixture()
def bus():
    b = MemoryBus()
    b.create_topics([TopicSpec("inits", 2)])
    yield b
    b.close()


@pytest.fixture()
def client(bus):
    app = create_app(LiveIndex("lsh", n_bits=32, seed=0))
    attach_producer(app, bus.producer(), "inits")
    return TestClient(app)


def records(bus) -> list[TrackInit]:
    """The records produced since the last call."""
    with bus.consumer(["inits"], "check") as c:
        got = [decode_message(r, accept=("track_init",)) for r in c.poll(100, 0.2)]
        c.commit()
        return got


def test_start_produces_a_record(client, bus):
    res = client.post("/tracks", json={"stream_id": "cam1", "box": [100, 50.5, 12, 10]})
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["status"] == "queued" and "track_id" not in body and body["topic"] == "inits"
    res = client.post("/tracks", json={"stream_id": "cam1", "box": [10, 20, 8, 8],
                                       "track_id": 7, "frame_id": "cam1:00000012", "seq": 12})
    assert res.status_code == 202, res.text
    got = records(bus)
    assert len(got) == 2
    first, second = sorted(got, key=lambda r: int(r.target_ids[0]))
    assert first.target_ids.tolist() == [TrackInit.NEW] and first.frame_id == ""
    assert np.allclose(first.boxes, [[100, 50.5, 12, 10]]) and first.stream_id == "cam1"
    assert second.target_ids.tolist() == [7] and second.seq == 12
    assert second.frame_id == "cam1:00000012"


def test_stop_produces_a_drop(client, bus):
    res = client.delete("/tracks/3", params={"stream_id": "cam1"})
    assert res.status_code == 202, res.text
    (rec,) = records(bus)
    assert rec.drop_ids.tolist() == [3] and len(rec.boxes) == 0
    assert client.delete("/tracks/-1", params={"stream_id": "cam1"}).status_code == 422
    assert client.delete("/tracks/3").status_code == 422  # no stream


@pytest.mark.parametrize("body", [
    {"stream_id": "cam1", "box": [1, 2, 0, 5]},            # zero width
    {"stream_id": "cam1", "box": [1, 2, 5, -3]},           # negative height
    {"stream_id": "cam1", "box": [1, 2, 5]},               # three numbers
    {"stream_id": "cam1", "box": [1, 2, 5000, 5]},         # too large
    {"stream_id": "cam1", "box": [1e9, 2, 5, 5]},          # outside any frame
    {"stream_id": "cam1", "box": ["a", 2, 5, 5]},          # not a number
    {"stream_id": "", "box": [1, 2, 5, 5]},                # no stream
    {"stream_id": "cam1", "box": [1, 2, 5, 5], "track_id": -4},
    {"stream_id": "cam1", "box": [1, 2, 5, 5], "colour": "red"},  # unknown field
])
def test_bad_requests_are_422_and_produce_nothing(client, bus, body):
    res = client.post("/tracks", json=body)
    assert res.status_code == 422, (body, res.status_code, res.text)
    assert records(bus) == []


def test_non_finite_box_is_refused(client, bus):
    # JSON has no NaN, but Python's parser accepts the token: it must not reach the stage
    for token in ("NaN", "Infinity"):
        raw = '{"stream_id": "cam1", "box": [1, 2, ' + token + ', 5]}'
        res = client.post("/tracks", content=raw, headers={"content-type": "application/json"})
        assert res.status_code == 422, res.text
    assert records(bus) == []


def test_no_producer_is_503():
    client = TestClient(create_app(LiveIndex("lsh", n_bits=32, seed=0)))
    res = client.post("/tracks", json={"stream_id": "cam1", "box": [1, 2, 5, 5]})
    assert res.status_code == 503


def test_record_helpers():
    assert check_box(["1", 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)
    for bad in ([1, 2, float("nan"), 4], [1, 2, 3], None, [0, 0, 0, 1]):
        with pytest.raises(ValueError):
            check_box(bad)
    with pytest.raises(ValueError):
        start_record("", [1, 2, 3, 4])
    assert stop_record("c", 5).drop_ids.tolist() == [5]


def test_overflowing_number_and_openapi(client, bus):
    raw = '{"stream_id": "cam1", "box": [1, 2, 1e999, 5]}'  # parses as infinity
    res = client.post("/tracks", content=raw, headers={"content-type": "application/json"})
    assert res.status_code == 422 and records(bus) == []
    assert client.post("/tracks", content=b"{not json").status_code == 422
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and "/tracks" in spec.json()["paths"]


def test_the_track_stage_applies_what_the_api_sent(client, bus):
    from vistream.models.data import TrackingSpec, render
    from vistream.stages.records import PNG, Frame
    from vistream.stages.track import TrackStage

    seq = render(TrackingSpec(name="api", seed=3, n_frames=8, n_targets=1, styles=("vivid",),
                              noise_sigma=2.0))
    box = seq.boxes[2, 0].tolist()
    fr = [Frame.from_image(seq.frames[t], "cam1", t, content_type=PNG) for t in range(8)]
    stage = TrackStage()
    assert stage.process(fr[:2]) == []
    res = client.post("/tracks", json={"stream_id": "cam1", "box": box,
                                       "frame_id": fr[2].frame_id, "seq": 2})
    assert res.status_code == 202
    # no frame given: the stream's next frame (2 as well); a given id; both by hand: both kept
    client.post("/tracks", json={"stream_id": "cam1", "box": box, "track_id": 9})
    stage.process(records(bus))
    outs = stage.process(fr[2:8])
    assert [o.seq for o in outs] == list(range(2, 8))
    assert all(o.target_ids.tolist() == [1, 9] for o in outs)
    assert not outs[-1].lost.any()
    g = seq.boxes[7, 0]
    for b in outs[-1].boxes:
        assert np.hypot(*(b[:2] + b[2:] / 2 - g[:2] - g[2:] / 2)) < 5
    client.delete("/tracks/1", params={"stream_id": "cam1"})
    stage.process(records(bus))
    assert sorted(stage.streams["cam1"].multi.tracks) == [9]
