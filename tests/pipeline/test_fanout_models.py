"""One hash model for all shards: one learner chosen through the bus, versions on a model topic."""

from __future__ import annotations

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import ShardedIndex
from vistream.pipeline.bus import MemoryBus, TopicSpec
from vistream.pipeline.shardhost import (
    ModelFollower,
    ShardLearner,
    ShardReplica,
    publish_model,
)
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Features


def produce(bus, start, n, seed=0):
    rng = np.random.default_rng(seed + start)
    centres = np.random.default_rng(9).standard_normal((4, 8)).astype(np.float32) * 3
    y = rng.integers(0, 4, n)
    X = centres[y] + rng.standard_normal((n, 8)).astype(np.float32)
    p = bus.producer()
    for i in range(n):
        out = encode_message(Features(frame_id=f"f{start + i:05d}", stream_id="s", vector=X[i],
                                      label=int(y[i])))
        p.send("features", out.value, key=f"f{start + i}".encode(), headers=out.headers)
    p.flush()


def run(parts, rounds=300):
    for _ in range(rounds):
        if not sum(p.step(0.0) for p in parts):
            return


def test_model_bytes_round_trip():
    m = make_hash_model("sdoh", n_bits=16, max_iter=5)
    X = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    m.partial_fit(X, (X[:, 0] > 0).astype(int))
    back = HashModel.from_bytes(m.to_bytes())
    assert back.name == "sdoh" and back.version == m.version
    assert np.array_equal(back.encode(X), m.encode(X))


def test_follower_keeps_the_newest_version_and_skips_bad_records():
    bus = MemoryBus()
    p = bus.producer()
    X = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    m = make_hash_model("lsh", n_bits=16)
    m.partial_fit(X)
    newer = make_hash_model("lsh", n_bits=16)
    newer.partial_fit(X)
    newer.version = m.version + 3
    publish_model(p, "models", newer)
    publish_model(p, "models", m)  # an older version arriving late changes nothing
    p.send("models", b"not a model", key=b"hash-model")
    f = ModelFollower(bus, "models")
    assert f.poll().version == newer.version
    assert f.poll() is None


def test_one_learner_all_shards_on_its_versions_and_a_successor_continues():
    bus = MemoryBus()
    bus.create_topics([TopicSpec("features", 2), TopicSpec("models", 1),
                       TopicSpec("election", 1)])
    kw = dict(model="sdoh", n_bits=16, model_params={"max_iter": 20}, train_chunk=200)
    learners = [ShardLearner(bus, "features", "models", "election", "index", **kw)
                for _ in range(2)]
    replicas = [ShardReplica(bus, "features", "index", ShardedIndex(background=False, n_bits=16),
                             models=ModelFollower(bus, "models")) for _ in range(2)]
    produce(bus, 0, 600)
    run(learners + replicas)
    assert [lr.leading for lr in learners].count(True) == 1
    first = next(lr for lr in learners if lr.leading)
    assert first.published == 3
    run(replicas)
    r = replicas[0].index.search_vector(np.zeros(8, np.float32), 5)
    versions = {(i.model, i.model_version) for rep in replicas
                for i in rep.index.search_vector(np.zeros(8, np.float32), 5).shards.values()}
    assert versions == {("sdoh", first.model.version)}
    assert r.consistent and len(replicas[0].index) + len(replicas[1].index) == 600
    # the learner dies: the other candidate takes over, from the latest version and the
    # committed offsets (no chunk fitted twice)
    first.close()
    second = next(lr for lr in learners if lr is not first)
    produce(bus, 600, 200)
    run([second] + replicas)
    assert second.leading and second.published == 1
    assert second.model.version > first.model.version
    run(replicas)
    versions = {(i.model, i.model_version) for rep in replicas
                for i in rep.index.search_vector(np.zeros(8, np.float32), 5).shards.values()}
    assert versions == {("sdoh", second.model.version)}
    for rep in replicas:
        rep.close()
    second.close()
