"""The live index: exact search, idempotence, learning, atomic swaps, snapshots."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from vistream.models.hashing.base import HashModel, hamming_distances
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.snapshot import resolve_snapshot
from vistream.models.hashing.store import BLOCK


def clusters(n: int, d: int = 16, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)).astype(np.float32) * 2
    y = rng.integers(0, classes, n)
    X = centres[y] + rng.standard_normal((n, d)).astype(np.float32)
    return X.astype(np.float32), y


def ids(a: int, b: int, prefix: str = "f") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(a, b)]


def check_exact(index: LiveIndex, qcodes: np.ndarray, k: int) -> None:
    db = index.codes()
    D = hamming_distances(qcodes, db)
    for row, q in zip(D, qcodes):
        r = index.search_codes(q, k)
        got = [h.distance for h in r.hits]
        assert got == np.sort(row)[:k].tolist()
        assert all(int(row[h.id]) == h.distance for h in r.hits)
        assert len({h.frame_id for h in r.hits}) == len(r.hits)


@pytest.mark.parametrize("tail_min", [10**9, 64])
def test_search_equals_brute_force_hamming(tail_min):
    X, _ = clusters(3000)
    index = LiveIndex("lsh", n_bits=32, tail_min=tail_min, tail_fraction=0.05)
    for s in range(0, 3000, 250):  # with a small tail bound this merges several times
        index.add(ids(s, s + 250), X[s:s + 250])
    assert len(index) == 3000
    if tail_min == 64:
        assert index.stats.merges > 0 and index.info()["tail"] < 3000
    else:
        assert index.stats.merges == 0  # everything is in the tail (knn_hamming)
    Xq, _ = clusters(40, seed=1)
    check_exact(index, index.model.encode(Xq), k=15)
    check_exact(index, index.model.encode(Xq[:3]), k=5000)  # k larger than the index


def test_empty_index_and_bad_queries():
    index = LiveIndex("sdoh", n_bits=16)
    assert index.search_vector(np.ones(8), 5).hits == []
    assert index.search_codes(np.zeros(2, np.uint8), 5).hits == []
    with pytest.raises(KeyError):
        index.search_frame("nope")
    index.add(["a"], np.ones((1, 8)))
    with pytest.raises(ValueError):
        index.search_vector(np.ones(9))
    with pytest.raises(ValueError):
        index.search_vector(np.array([np.nan] * 8))
    with pytest.raises(ValueError):
        index.search_codes(np.zeros(3, np.uint8))
    with pytest.raises(ValueError):
        index.search_frame("a", k=0)
    with pytest.raises(ValueError):
        index.add(["b"], np.ones((1, 9)))  # wrong dimension
    with pytest.raises(ValueError):
        index.add(["b"], np.full((1, 8), np.inf))


def test_redelivered_features_never_duplicate():
    X, y = clusters(200)
    index = LiveIndex("lsh", n_bits=32)
    assert index.add(ids(0, 200), X) == 200
    # Redelivery of everything, plus a duplicate inside one batch.
    assert index.add(ids(0, 200), X) == 0
    assert index.add(["f000005", "f000005", "new"], X[[5, 5, 6]]) == 1
    assert len(index) == 201
    assert index.stats.duplicates == 202
    # A different vector under a known frame id: the first one is kept.
    index.add(["f000007"], X[[8]])
    assert index.stats.conflicts == 1
    np.testing.assert_array_equal(index.features([7])[0], X[7])
    for fid in ("f000005", "new", "f000150"):
        hits = index.search_frame(fid, k=201).hits
        assert len(hits) == 201
        assert len({h.frame_id for h in hits}) == 201
        assert hits[0].distance == 0


def test_labels_join_and_learning_replaces_the_warm_start():
    X, y = clusters(120, d=8, classes=3)
    index = LiveIndex("sdoh", n_bits=16, train_chunk=50, background=False,
                      model_params={"max_iter": 20})
    # Labels may come before the features (joined later) or after them.
    index.set_labels(ids(0, 30), y[:30].tolist())
    index.add(ids(0, 60), X[:60])
    assert index.model_name == "lsh" and index.warm_start
    assert index.pending_labels == 30
    index.set_labels(ids(30, 60), y[30:60].tolist())  # 60 labelled -> one update of 50
    assert index.model_name == "sdoh" and not index.warm_start and index.model_version == 1
    assert index.pending_labels == 10
    index.add(ids(60, 120), X[60:120], labels=y[60:120].tolist())  # 70 pending -> one more
    assert index.model_version == 2 and index.pending_labels == 20
    np.testing.assert_array_equal(index.codes(), index.model.encode(X))
    assert index.label("f000010") == y[10]
    index.set_labels(["f000010"], [int(y[10]) + 1])  # the first label wins
    assert index.label("f000010") == y[10]
    r = index.search_frame("f000000", 5)
    assert (r.model, r.model_version, r.warm_start) == ("sdoh", 2, False)
    assert r.hits[0].label == y[0]


def test_metadata_joins_in_any_order():
    index = LiveIndex("lsh", n_bits=16)
    index.set_meta("a", caption="a red car", timestamp_ms=42)
    index.add(["a", "b"], np.eye(2, 8), stream_ids=["cam1", "cam2"], timestamps=[None, 7])
    tracks = [{"track_id": 3, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.9}]
    index.set_meta("b", tracks=tracks, stream_id="other", timestamp_ms=99)
    a, b = index.meta("a"), index.meta("b")
    assert (a.stream_id, a.timestamp_ms, a.caption) == ("cam1", 42, "a red car")
    assert (b.stream_id, b.timestamp_ms, b.tracks) == ("cam2", 7, tuple(tracks))
    hit = {h.frame_id: h for h in index.search_frame("b", 2).hits}["b"]
    assert hit.tracks == tuple(tracks) and hit.stream_id == "cam2"


class SlowModel:
    """Wraps a fitted model so that every encode call takes a while (to overlap searches)."""

    def __init__(self, model: HashModel, delay: float) -> None:
        self.m, self.delay = model, delay

    def __getattr__(self, name):
        return getattr(self.m, name)

    def encode(self, X):
        time.sleep(self.delay)
        return self.m.encode(X)


def test_swap_is_atomic_and_adds_during_reencode_are_kept():
    X, y = clusters(3 * BLOCK + 500, d=8, classes=5)
    n0 = 3 * BLOCK
    index = LiveIndex("sdoh", n_bits=16, seed=1)
    index.add(ids(0, n0), X[:n0])
    old_model = index.model
    fitted = make_hash_model("sdoh", n_bits=16, seed=1, max_iter=20).partial_fit(X[:300], y[:300])
    slow = SlowModel(fitted, 0.05)
    Xq = X[:25]

    results = []
    stop = threading.Event()

    def searcher():
        i = 0
        while not stop.is_set():
            results.append((i % len(Xq), index.search_vector(Xq[i % len(Xq)], 20)))
            i += 1

    th = threading.Thread(target=searcher)
    th.start()
    worker = index.set_model(slow, wait=False)  # type: ignore[arg-type]
    for s in range(n0, n0 + 500, 50):  # adds while the re-encode runs
        index.add(ids(s, s + 50), X[s:s + 50])
    worker.join(30)
    # Let the searcher answer a few queries after the swap (on a loaded machine it may not have
    # been scheduled at all since).
    after = len(results)
    deadline = time.monotonic() + 10
    while len(results) < after + 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    th.join()
    assert not worker.is_alive()
    versions = {(r.model, r.model_version) for _, r in results}
    assert versions == {("lsh", 2), ("sdoh", 1)}, versions
    # Every answer is exact under the codes of the one model version it reports.
    by_version = {("lsh", 2): old_model, ("sdoh", 1): fitted}
    db = {v: m.encode(X) for v, m in by_version.items()}
    for qi, r in results:
        m = by_version[(r.model, r.model_version)]
        D = hamming_distances(m.encode(Xq[qi:qi + 1]), db[(r.model, r.model_version)][: r.n_indexed])[0]
        assert [h.distance for h in r.hits] == np.sort(D)[:20].tolist()
        assert all(D[h.id] == h.distance for h in r.hits)
    # After the swap every row, those added during the re-encode included, has the new codes.
    assert len(index) == n0 + 500
    np.testing.assert_array_equal(index.codes(), fitted.encode(X))


def test_background_learning_matches_inline_learning():
    X, y = clusters(600, d=8, classes=3)
    a = LiveIndex("sdoh", n_bits=16, train_chunk=100, background=True, model_params={"max_iter": 10})
    b = LiveIndex("sdoh", n_bits=16, train_chunk=100, background=False, model_params={"max_iter": 10})
    for s in range(0, 600, 37):
        for idx in (a, b):
            idx.add(ids(s, min(s + 37, 600)), X[s:s + 37], labels=y[s:s + 37].tolist())
    assert a.sync(timeout=60)
    assert a.model_version == b.model_version == 6
    np.testing.assert_array_equal(a.model.W, b.model.W)
    np.testing.assert_array_equal(a.codes(), b.codes())
    a.close()


def test_snapshot_roundtrip_and_block_reuse(tmp_path):
    X, y = clusters(BLOCK + 300, d=4, classes=3)
    index = LiveIndex("sdoh", n_bits=16, train_chunk=200, background=False,
                      model_params={"max_iter": 5})
    index.add(ids(0, BLOCK + 100), X[:BLOCK + 100])
    index.set_labels(ids(0, 250), y[:250].tolist())
    index.set_meta("f000001", caption="hello", tracks=[{"track_id": 1, "box": [0, 0, 1, 1],
                                                        "score": 1.0}])
    index.set_labels(["orphan"], [2])
    first = index.snapshot(tmp_path, {"positions": [["feats", 0, 17]]})
    index.add(ids(BLOCK + 100, BLOCK + 300), X[BLOCK + 100:])
    second = index.snapshot(tmp_path, {"positions": [["feats", 0, 42], ["labels", 3, 5]]})
    assert resolve_snapshot(tmp_path) == second
    # The full block was hard-linked, not rewritten.
    full = f"features/000000-{BLOCK}.npy"
    assert os.stat(first / full).st_ino == os.stat(second / full).st_ino
    (tmp_path / ".tmp-dead").mkdir()  # a crashed snapshot write leaves this; it is ignored

    loaded = LiveIndex.load(tmp_path, background=False)
    assert loaded.loaded_carry == {"positions": [["feats", 0, 42], ["labels", 3, 5]]}
    assert len(loaded) == len(index) == BLOCK + 300
    assert loaded.frame_ids() == index.frame_ids()
    np.testing.assert_array_equal(loaded.codes(), index.codes())
    np.testing.assert_array_equal(loaded.features(), index.features())
    np.testing.assert_array_equal(loaded.model.W, index.model.W)
    assert (loaded.model_name, loaded.model_version) == (index.model_name, index.model_version)
    assert loaded.pending_labels == index.pending_labels == 50
    assert loaded.meta("f000001") == index.meta("f000001")
    assert loaded.label("orphan") == 2
    # It keeps learning where the original would.
    for idx in (index, loaded):
        idx.set_labels(ids(250, 400), y[250:400].tolist())
        idx.add(["orphan"], X[:1])
    np.testing.assert_array_equal(loaded.model.W, index.model.W)
    np.testing.assert_array_equal(loaded.codes(), index.codes())
    q = index.codes()[:5]
    for c in q:
        assert loaded.search_codes(c, 10) == index.search_codes(c, 10)
    # Snapshots of a loaded index keep reusing blocks; old snapshots are pruned.
    third = loaded.snapshot(tmp_path, {}, keep=2)
    assert os.stat(second / full).st_ino == os.stat(third / full).st_ino
    assert sorted(p.name for p in tmp_path.glob("snap-*")) == [second.name, third.name]


def test_read_only_index_serves_but_refuses_writes(tmp_path):
    X, _ = clusters(50)
    index = LiveIndex("lsh", n_bits=16)
    index.add(ids(0, 50), X)
    index.snapshot(tmp_path)
    ro = LiveIndex.load(tmp_path, read_only=True)
    assert ro.search_frame("f000003", 3).hits[0].frame_id == "f000003"
    with pytest.raises(RuntimeError):
        ro.add(["x"], X[:1])
    with pytest.raises(FileNotFoundError):
        LiveIndex.load(tmp_path / "missing")


def test_unknown_hash_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown hash model"):
        LiveIndex("nope")
