"""Finding the live shard replicas (registry topic) and asking them over HTTP."""

from __future__ import annotations

import json

import numpy as np
from fastapi.testclient import TestClient

from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import ShardedIndex
from vistream.pipeline.bus import MemoryBus, TopicSpec
from vistream.pipeline.fanout import ShardDirectory, announcer, http_endpoint, shard_app
from vistream.pipeline.shardhost import ShardReplica
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Features


def lsh(X):
    m = make_hash_model("lsh", n_bits=16, seed=0)
    m.partial_fit(X)
    return m


def produce(bus, X, bad_at=()):
    p = bus.producer()
    for i, x in enumerate(X):
        vec = np.array([np.nan] * len(x), np.float32) if i in bad_at else x
        out = encode_message(Features(frame_id=f"f{i:04d}", stream_id="s", vector=vec))
        p.send("features", out.value, key=f"f{i}".encode(), headers=out.headers)
    p.flush()


def test_replicas_announce_and_the_directory_fans_out_over_http():
    bus = MemoryBus()
    bus.create_topics([TopicSpec("features", 4), TopicSpec("shards", 1)])
    X = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    model = lsh(X)
    produce(bus, X, bad_at={7})
    reps, apps = [], {}
    for name in ("a", "b"):
        idx = ShardedIndex(background=False, n_bits=16)
        idx.set_model(model)
        reps.append(ShardReplica(bus, "features", "index", idx,
                                 announce=announcer(bus, "shards", name, f"http://{name}")))
        apps[f"http://{name}"] = TestClient(shard_app(idx))
    for _ in range(50):
        if not sum(r.step(0.0) for r in reps):
            break
    assert sum(r.invalid for r in reps) == 1  # the NaN vector: skipped with its reason
    directory = ShardDirectory(bus, "shards", ttl_s=60)
    client = directory.client(lambda url: http_endpoint(url, apps[url]), timeout_s=30)
    out = client.search({"vector": X[3].tolist()}, k=5)
    client.close()
    assert not out["partial"] and out["hits"][0]["frame_id"] == "f0003"
    assert sorted(out["shards"]) == [f"features-{p}" for p in range(4)]
    # b stops cleanly: a takes its partitions over; a stale directory entry would make the
    # answer partial, the fresh one does not
    reps[1].close()
    for _ in range(50):
        if not reps[0].step(0.0):
            break
    client = directory.client(lambda url: http_endpoint(url, apps[url]), timeout_s=30)
    out = client.search({"vector": X[3].tolist()}, k=5)
    client.close()
    assert not out["partial"] and set(out["replicas"]) == {"a"}
    assert sum(s["n"] for s in out["shards"].values()) == 399
    # a dies silently: after the ttl it gets no query and its partitions are missing
    later = int(directory.entries["a"]["at_ms"]) + 61_000
    client = directory.client(lambda url: http_endpoint(url, apps[url]), timeout_s=30,
                              now_ms=later)
    out = client.search({"vector": X[3].tolist()}, k=5)
    assert out["partial"] and out["missing"] == [f"features-{p}" for p in range(4)]
    assert out["hits"] == []
    client.close()
    directory.close()
    reps[0].close()


def test_shard_app_refuses_bad_queries_with_reasons():
    X = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    idx = ShardedIndex(background=False, n_bits=16)
    idx.set_model(lsh(X))
    idx.open_shard("t-0")
    idx.add("t-0", [f"f{i}" for i in range(50)], X)
    c = TestClient(shard_app(idx))
    assert c.post("/shard/search", json={"k": 3}).status_code == 422
    assert c.post("/shard/search", json={"code": [1, 2, 3], "k": 3}).status_code == 400
    assert c.post("/shard/search", json={"code": [300, 2], "k": 3}).status_code == 422
    r = c.post("/shard/search", json={"vector": [0.0] * 5, "k": 3})
    assert r.status_code == 400 and "dims" in r.json()["detail"]
    ok = c.post("/shard/search", json={"code": idx.shard("t-0").codes()[4].tolist(), "k": 1})
    assert ok.status_code == 200 and ok.json()["hits"][0]["distance"] == 0
    assert c.get("/shard/info").json()["codes"] == 50
    assert json.loads(json.dumps(ok.json()))["shards"]["t-0"]["n"] == 50
