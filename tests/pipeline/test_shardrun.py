"""The sharded index stage wired end to end on the memory bus: two ShardHosts (replica, learner
candidate, model follower, announcer, shard HTTP face) and serve's fan-out API over them.
The same on a real broker, with processes and a SIGKILL: test_shards_kafka.py."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.shards import shard_topk
from vistream.pipeline.bus import MemoryBus, TopicSpec
from vistream.pipeline.config import ConfigError, StageSettings, parse_config
from vistream.pipeline.fanout import ShardDirectory, announcer, merge_answers
from vistream.pipeline.shardrun import ShardHost, sharded_params
from vistream.pipeline.shardserve import ShardedQueries, create_sharded_app
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Features

DIM, N = 16, 480


def data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, DIM)).astype(np.float32)
    y = rng.integers(0, 6, n)
    return centres[y] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32), y


def produce(bus, X, y, labelled: int, bad: int | None = None) -> None:
    p = bus.producer()
    for i, x in enumerate(X):
        vec = np.full(DIM, np.nan, np.float32) if i == bad else x
        lab = int(y[i]) if i < labelled else None
        out = encode_message(Features(frame_id=f"f{i:04d}", stream_id=f"s{i % 3}", vector=vec,
                                      label=lab))
        p.send("features", out.value, key=f"k{i}".encode(), headers=out.headers)
    p.flush()


def settings(**params) -> StageSettings:
    return StageSettings(name="index", type="hashing", inputs=["features"], batch_size=100,
                         params={"sharded": True, "model": "sdoh", "n_bits": 32,
                                 "train_chunk": 200, "background": False,
                                 "shards": {"heartbeat_s": 0.2}, **params})


def test_two_hosts_one_model_and_an_exact_fanout(tmp_path):
    bus = MemoryBus()
    bus.create_topics([TopicSpec("features", 4), TopicSpec("features.dlq", 1)])
    X, y = data()
    produce(bus, X, y, labelled=300, bad=5)
    st = settings(snapshot_dir=str(tmp_path / "shards"))
    params = sharded_params(st)
    hosts = [ShardHost(bus, st, params, name=n) for n in ("a", "b")]
    try:
        deadline = time.monotonic() + 60  # the learners and followers run in threads
        while time.monotonic() < deadline:
            moved = sum(h.step(0.0) for h in hosts)
            lead = [h.learner for h in hosts if h.learner.leading]
            if (not moved and all(h.index.model is not None for h in hosts) and lead
                    and lead[0].model is not None):
                break
            time.sleep(0.02)
        # one learner, elected through the election topic; its model reached both replicas
        assert sum(h.learner.leading for h in hosts) == 1
        (version,) = {h.index.model.version for h in hosts}
        learner = next(h.learner for h in hosts if h.learner.leading)
        assert sum(h.learner.published for h in hosts) >= 1 and learner.model.version == version
        assert sorted(k for h in hosts for k in h.index.shards) == [f"features-{p}"
                                                                  for p in range(4)]
        assert sum(h.stats.dead_lettered for h in hosts) == 1  # the NaN vector, with a reason
        dlq = bus.consumer(["features.dlq"], "check").poll(10, 0.0)
        assert "NaN" in dict(dlq[0].headers)["dlq_reason"].decode()

        queries = ShardedQueries(bus, params.shards.topics(st.group_id)[1], ttl_s=60,
                                 timeout_s=30)
        api = TestClient(create_sharded_app(queries))
        one = LiveIndex(hosts[0].index.model, background=False)
        keep = [i for i in range(N) if i != 5]
        one.add([f"f{i:04d}" for i in keep], X[keep])
        for q in X[[0, 17, 333]]:
            r = api.post("/search/vector", json={"vector": q.tolist(), "k": 7})
            assert r.status_code == 200, r.text
            out = r.json()
            want = shard_topk(one, one.store.view, one.model.encode(q.reshape(1, -1))[0], 7)
            assert [(h["distance"], h["frame_id"]) for h in out["hits"]] == \
                [(h.distance, h.frame_id) for h in want]
            assert not out["partial"] and out["consistent"]
            assert out["model"] == "sdoh" and out["model_version"] == version
            assert {s["model_version"] for s in out["shards"].values()} == {version}
            assert out["frames_indexed"] == N - 1
        r = api.get("/search/frame", params={"frame_id": "f0017", "k": 3})
        assert r.status_code == 200 and r.json()["hits"][0]["frame_id"] == "f0017"
        assert r.json()["hits"][0]["stream_id"] == "s2"
        assert api.get("/search/frame", params={"frame_id": "nope"}).status_code == 404
        bad = api.post("/search/vector", json={"vector": [1.0, 2.0], "k": 3})
        assert bad.status_code == 422 and "dims" in bad.json()["detail"]
        assert api.post("/search/image", files={"image": ("x.png", b"not an image")}
                        ).status_code == 415
        stats = api.get("/stats").json()
        assert stats["codes"] == N - 1 and stats["partitions"] == 4 and stats["consistent"]
        assert set(stats["replicas"]) == {"a", "b"}

        # b leaves cleanly: a takes its partitions over from their snapshots, nothing lost
        hosts[1].close()
        for _ in range(30):
            if not hosts[0].step(0.0):
                break
        out = api.post("/search/vector", json={"vector": X[0].tolist(), "k": 5}).json()
        assert not out["partial"] and set(out["replicas"]) == {"a"}
        assert out["frames_indexed"] == N - 1
        held = [f for ids in hosts[0].index.frame_ids().values() for f in ids]
        assert sorted(held) == sorted(f"f{i:04d}" for i in keep)
        queries.close()
    finally:
        for h in hosts:
            if h.http is not None:
                h.close()


def test_sharded_config_needs_kafka_and_one_input():
    stage = {"name": "index", "type": "hashing", "inputs": ["features", "labels"],
             "params": {"sharded": True, "shards": {"port": 0}}}
    with pytest.raises(ConfigError) as err:
        parse_config({"bus": {"backend": "memory"}, "sources": [{"source": "x.mp4"}],
                      "stages": [stage]})
    assert "needs bus.backend: kafka" in str(err.value)
    assert "one topic of feature records" in str(err.value)
    with pytest.raises(ConfigError, match="shards.bogus"):
        parse_config({"bus": {"backend": "kafka"},
                      "stages": [{**stage, "inputs": ["features"],
                                  "params": {"sharded": True, "shards": {"bogus": 1}}}]})
    cfg = parse_config({"bus": {"backend": "kafka"}, "stages": [{**stage, "inputs": ["features"]}]})
    p = sharded_params(cfg.stage("index"))
    assert p.shards.topics("vistream-index") == ("vistream-index.model", "vistream-index.shards",
                                                 "vistream-index.learner")


def test_a_dead_replica_whose_partitions_moved_leaves_the_answer_whole():
    answers = {"a": {"hits": [{"frame_id": "x", "distance": 1}],
                     "shards": {"t-0": {"n": 1}, "t-1": {"n": 1}}}, "b": None}
    moved = merge_answers(answers, 5, {"t-0", "t-1"}, covers={"a": {"t-0", "t-1"},
                                                              "b": {"t-1"}})
    assert not moved["partial"] and moved["missing"] == []
    gone = merge_answers(answers, 5, {"t-0", "t-1", "t-2"},
                         covers={"a": {"t-0", "t-1"}, "b": {"t-2"}})
    assert gone["partial"] and gone["missing"] == ["t-2"]
    unknown = merge_answers(answers, 5, {"t-0", "t-1"}, covers={"a": {"t-0", "t-1"}})
    assert unknown["partial"]  # b never said what it held


def test_the_directory_drops_a_replica_whose_partitions_another_announced_since():
    bus = MemoryBus()
    bus.create_topics([TopicSpec("reg", 1)])
    announcer(bus, "reg", "b", "http://b")(["t-2", "t-3"])
    time.sleep(0.01)
    announcer(bus, "reg", "a", "http://a")(["t-0", "t-1", "t-2", "t-3"])
    directory = ShardDirectory(bus, "reg", ttl_s=60)
    directory.refresh()
    assert set(directory.live()) == {"a"}
    time.sleep(0.01)
    announcer(bus, "reg", "b", "http://b")(["t-3"])  # b back, newer than a's claim
    directory.refresh()
    assert set(directory.live()) == {"a", "b"}
    directory.close()
