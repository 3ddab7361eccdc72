"""Fan-out over index shards: exact merge, partial answers, shards that follow partitions."""

from __future__ import annotations

import threading

import numpy as np

from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import ShardedIndex, shard_topk
from vistream.pipeline.bus import MemoryBus, TopicSpec
from vistream.pipeline.fanout import FanoutClient, local_endpoint, merge_answers
from vistream.pipeline.shardhost import ShardReplica
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Features

DIM = 8


def data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, DIM)).astype(np.float32)
    return [f"f{i:05d}" for i in range(n)], X


def lsh(X, n_bits=8):
    m = make_hash_model("lsh", n_bits=n_bits, seed=0)
    m.partial_fit(X)
    return m


def test_merge_answers_names_missing_partitions():
    a = {"hits": [{"frame_id": "b", "distance": 1}], "shards": {"t-0": {"n": 3}}}
    b = {"hits": [{"frame_id": "a", "distance": 1}, {"frame_id": "c", "distance": 0}],
         "shards": {"t-1": {"n": 2}}}
    out = merge_answers({"r1": a, "r2": b, "r3": None}, 2, expected={"t-0", "t-1", "t-2"})
    assert [h["frame_id"] for h in out["hits"]] == ["c", "a"]
    assert out["partial"] and out["missing"] == ["t-2"]
    full = merge_answers({"r1": a, "r2": b}, 5, expected={"t-0", "t-1"})
    assert not full["partial"] and full["missing"] == []


def test_fanout_over_replicas_equals_one_index_and_reports_a_silent_one():
    fids, X = data(400)
    model = lsh(X)
    one = LiveIndex(model, background=False)
    one.add(fids, X)
    replicas = []
    for r in range(3):
        idx = ShardedIndex(background=False, n_bits=8)
        idx.set_model(model)
        for p in range(r, 6, 3):  # replica r holds partitions r and r + 3
            idx.open_shard(f"t-{p}")
            idx.add(f"t-{p}", fids[p::6], X[p::6])
        replicas.append(idx)
    eps = {f"r{i}": local_endpoint(idx) for i, idx in enumerate(replicas)}
    gate = threading.Event()

    def stuck(q):
        gate.wait()
        return eps["r2"](q)

    client = FanoutClient(eps, timeout_s=30)
    try:
        for q in X[:5]:
            got = client.search({"vector": q.tolist()}, k=7)
            qc = model.encode(q.reshape(1, -1))[0]
            want = shard_topk(one, one.store.view, qc, 7)
            assert [(h["distance"], h["frame_id"]) for h in got["hits"]] == [
                (h.distance, h.frame_id) for h in want]
            assert not got["partial"] and got["consistent"]
            assert sorted(got["shards"]) == [f"t-{p}" for p in range(6)]
    finally:
        client.close()
    slow = FanoutClient({**eps, "r2": stuck}, timeout_s=0.5,
                        covers={"r2": ["t-2", "t-5"]})
    try:
        out = slow.search({"vector": X[0].tolist()}, k=5)
        assert out["partial"] and out["missing"] == ["t-2", "t-5"]
        assert out["replicas"] == {"r0": True, "r1": True, "r2": False}
        assert all(h["frame_id"] not in fids[2::6] + fids[5::6] for h in out["hits"])
    finally:
        gate.set()
        slow.close()


def produce(bus, fids, X, topic="features"):
    p = bus.producer()
    for fid, x in zip(fids, X):
        out = encode_message(Features(frame_id=fid, stream_id="s", vector=x))
        p.send(topic, out.value, key=fid.encode(), headers=out.headers)
    p.flush()


def held(replicas) -> list[str]:
    out = []
    for r in replicas:
        for ids in r.index.frame_ids().values():
            out += ids
    return out


def drain(replicas, rounds=200):
    for _ in range(rounds):
        if not sum(r.step(0.0) for r in replicas) and not any(r.consumer.lag() for r in replicas):
            return


def test_partitions_move_between_replicas_nothing_lost_nothing_twice(tmp_path):
    bus = MemoryBus()
    bus.create_topics([TopicSpec("features", 4)])
    fids, X = data(2000, seed=3)
    model = lsh(X, 16)

    def replica():
        idx = ShardedIndex(tmp_path, background=False, n_bits=16)
        idx.set_model(model)
        return ShardReplica(bus, "features", "index", idx, snapshot_every=100, max_records=64)

    produce(bus, fids[:800], X[:800])
    a = replica()
    drain([a])
    assert sorted(held([a])) == fids[:800] and len(a.index.keys()) == 4
    b = replica()  # a rebalance: two partitions move from a to b through their snapshots
    produce(bus, fids[800:1400], X[800:1400])
    drain([a, b])
    assert len(a.index.keys()) == 2 and len(b.index.keys()) == 2
    ids = held([a, b])
    assert len(ids) == len(set(ids)) and sorted(ids) == fids[:1400]
    moved = b.index.keys()
    assert all(len(b.index.shard(k)) >= 100 for k in moved)  # restored, not rebuilt
    # b dies without a last snapshot: a reopens its partitions from the last periodic ones
    produce(bus, fids[1400:1700], X[1400:1700])
    drain([b])
    b.close(snapshot=False)
    produce(bus, fids[1700:], X[1700:])
    drain([a])
    ids = held([a])
    assert len(ids) == len(set(ids)) and sorted(ids) == fids
    assert sorted(a.index.keys()) == [f"features-{p}" for p in range(4)]
    q = model.encode(X[1750:1751])[0]
    one = LiveIndex(model, background=False)
    one.add(fids, X)
    got = a.index.search_codes(q, 10)
    assert [(h.distance, h.frame_id) for h in got.hits] == [
        (h.distance, h.frame_id) for h in shard_topk(one, one.store.view, q, 10)]
    a.close()


def test_memory_bus_tells_a_member_which_partitions_it_lost():
    bus = MemoryBus()
    bus.create_topics([TopicSpec("t", 4)])
    lost = []
    c1 = bus.consumer(["t"], "g", on_revoke=lost.append)
    assert len(c1.assignment()) == 4 and lost == []
    c2 = bus.consumer(["t"], "g")
    c1.poll(10, 0.0)
    assert len(lost) == 1 and lost[0] == c2.assignment()
    c1.close()
    c2.close()


def test_new_owner_first_still_nothing_lost_nothing_twice(tmp_path):
    """On the memory bus the old owner hears of a rebalance at its next poll: if the new owner
    polls first it opens an older snapshot and replays more; the result is the same."""
    bus = MemoryBus()
    bus.create_topics([TopicSpec("features", 4)])
    fids, X = data(1200, seed=5)
    model = lsh(X, 16)

    def replica():
        idx = ShardedIndex(tmp_path, background=False, n_bits=16)
        idx.set_model(model)
        return ShardReplica(bus, "features", "index", idx, snapshot_every=150, max_records=50)

    produce(bus, fids[:700], X[:700])
    a = replica()
    drain([a])
    b = replica()
    produce(bus, fids[700:], X[700:])
    drain([b, a])  # b polls first in every round
    ids = held([a, b])
    assert len(ids) == len(set(ids)) and sorted(ids) == fids
    assert len(a.index.keys()) == len(b.index.keys()) == 2
    a.close()
    b.close()
