"""Shards of the live index: exact merged top-k, one shared model, shards through snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vistream.models.hashing.base import hamming_distances
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import (
    ShardedIndex,
    check_key,
    merge_topk,
    shard_topk,
)
from vistream.models.hashing.store import Hit


def lsh(X: np.ndarray, n_bits: int = 8, seed: int = 0):
    m = make_hash_model("lsh", n_bits=n_bits, seed=seed)
    m.partial_fit(X)
    return m


def brute(codes: np.ndarray, fids: list[str], q: np.ndarray, k: int) -> list[tuple[int, str]]:
    d = hamming_distances(q.reshape(1, -1), codes)[0]
    return sorted(zip(d.tolist(), fids))[:k]


def pairs(hits) -> list[tuple[int, str]]:
    return [(h.distance, h.frame_id) for h in hits]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 300), n_shards=st.integers(1, 5), k=st.integers(1, 40),
       seed=st.integers(0, 10_000))
def test_merged_topk_equals_one_index_over_all_codes(n, n_shards, k, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    fids = [f"f{int(i):05d}" for i in rng.permutation(n)]  # frame ids not in arrival order
    part = rng.integers(0, n_shards, n)
    model = lsh(X)  # 8 bits: many ties at every distance
    one = LiveIndex(model, background=False)
    one.add(fids, X)
    sharded = ShardedIndex(background=False, model="lsh", n_bits=8)
    sharded.set_model(model)
    for s in range(n_shards):
        sharded.open_shard(f"features-{s}")
        sel = np.flatnonzero(part == s)
        if len(sel):
            sharded.add(f"features-{s}", [fids[i] for i in sel], X[sel])
    assert len(sharded) == n
    codes = one.codes()
    for q in rng.standard_normal((3, 6)).astype(np.float32):
        qc = model.encode(q.reshape(1, -1))[0]
        want = brute(codes, one.frame_ids(), qc, k)
        got = sharded.search_vector(q, k)
        assert pairs(got.hits) == want
        assert pairs(shard_topk(one, one.store.view, qc, k)) == want
        assert pairs(sharded.search_codes(qc, k).hits) == want
        assert got.consistent and got.n_indexed == n
        assert {i.model_version for i in got.shards.values()} == {model.version}


def test_merge_drops_a_frame_seen_twice_and_cuts_at_k():
    a = [Hit("x", 0, 1), Hit("y", 1, 3)]
    b = [Hit("x", 5, 1), Hit("a", 2, 3), Hit("z", 3, 4)]
    assert pairs(merge_topk([a, b], 3)) == [(1, "x"), (3, "a"), (3, "y")]
    assert merge_topk([], 5) == []


def test_bad_keys_and_k_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="shard key"):
        check_key("../etc")
    idx = ShardedIndex(tmp_path, background=False)
    with pytest.raises(ValueError, match="shard key"):
        idx.open_shard("a/b")
    with pytest.raises(ValueError, match="k must be"):
        idx.search_codes(np.zeros(8, np.uint8), 0)
    with pytest.raises(KeyError, match="no shard"):
        idx.add("nope", ["f"], np.zeros((1, 4), np.float32))


def test_shards_move_through_their_snapshots(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 8)).astype(np.float32)
    fids = [f"f{i:04d}" for i in range(200)]
    model = lsh(X, 16)
    a = ShardedIndex(tmp_path, background=False, n_bits=16)
    a.set_model(model)
    assert a.open_shard("t-0") is None  # nothing stored yet: replay from the start
    a.add("t-0", fids[:120], X[:120])
    a.close_shard("t-0", {"positions": [["t", 0, 120]]})
    assert a.keys() == []
    b = ShardedIndex(tmp_path, background=False, n_bits=16)
    b.set_model(model)
    assert b.open_shard("t-0") == {"positions": [["t", 0, 120]]}
    assert b.shard("t-0").frame_ids() == fids[:120]
    assert b.add("t-0", fids[100:200], X[100:200]) == 80  # a replay overlap counts once
    r = b.search_vector(X[150], 5)
    assert r.hits[0].frame_id == "f0150" and r.hits[0].distance == 0
    assert r.shards["t-0"].model_version == model.version


def test_a_new_model_version_reencodes_every_shard(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    idx = ShardedIndex(background=False, n_bits=16)
    for s in range(3):
        idx.open_shard(f"t-{s}")
        idx.add(f"t-{s}", [f"f{i}" for i in range(s, 300, 3)], X[s::3], labels=list(y[s::3]))
    first = idx.search_vector(X[0], 3)
    assert all(i.warm_start for i in first.shards.values())
    assert idx.shard("t-0").learner.pending  # labels kept, but shards never fit themselves
    assert idx.shard("t-0").stats.model_updates == 0
    v1 = make_hash_model("sdoh", n_bits=16, seed=0, max_iter=20)
    v1.partial_fit(X[:200], y[:200])
    idx.set_model(v1)
    r = idx.search_vector(X[0], 3)
    assert r.consistent and {(i.model, i.model_version) for i in r.shards.values()} == {
        ("sdoh", v1.version)}
    codes = v1.encode(X)
    fids = [f"f{i}" for i in range(300)]
    assert pairs(r.hits) == brute(codes, fids, codes[0], 3)
    idx.open_shard("t-9")  # a shard opened later starts on the shared model
    assert idx.shard("t-9").model is v1
    idx.add("t-9", ["late"], X[:1])
    assert idx.search_vector(X[0], 1).hits[0].frame_id in ("f0", "late")
    stale = make_hash_model("sdoh", n_bits=16, seed=0, max_iter=20)
    stale.partial_fit(X[:10], y[:10])
    idx.set_model(stale)  # an older version than the one held changes nothing
    assert idx.model is v1
