"""Snapshots of the live index: the caller's carry round trip and manifests from before it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.snapshot import read_snapshot, resolve_snapshot


def small_index(n: int = 40) -> LiveIndex:
    X = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    index = LiveIndex("lsh", n_bits=16)
    index.add([f"f{i:04d}" for i in range(n)], X)
    return index


def test_carry_round_trips_verbatim(tmp_path):
    index = small_index()
    assert index.loaded_carry is None  # a fresh index restored nothing
    carry = {"positions": [["feats", 0, 40], ["labels", 2, 7]], "note": {"epoch": 3}}
    snap = index.snapshot(tmp_path, carry=carry)
    assert json.loads((snap / "manifest.json").read_text())["carry"] == carry
    loaded = LiveIndex.load(tmp_path)
    assert loaded.loaded_carry == carry
    assert loaded.frame_ids() == index.frame_ids()
    # What the caller gets back is what JSON keeps (tuples come back as lists).
    index.snapshot(tmp_path, carry={"positions": [("feats", 0, 41)]})
    assert LiveIndex.load(tmp_path).loaded_carry == {"positions": [["feats", 0, 41]]}
    index.snapshot(tmp_path)
    assert LiveIndex.load(tmp_path).loaded_carry is None


def test_a_carry_that_is_not_json_fails_before_writing(tmp_path):
    index = small_index()
    first = index.snapshot(tmp_path, carry={"positions": []})
    with pytest.raises(TypeError):
        index.snapshot(tmp_path, carry={"positions": object()})
    assert resolve_snapshot(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", first.name]


def test_a_snapshot_with_offsets_from_before_the_carry_loads(tmp_path):
    index = small_index()
    snap = index.snapshot(tmp_path, carry={"positions": [["ignored", 0, 1]]})
    # Rewrite the manifest as the index wrote it before the carry existed.
    path = snap / "manifest.json"
    man = json.loads(path.read_text())
    del man["carry"]
    man["offsets"] = [["feats", 0, 42], ["labels", 3, 5]]
    path.write_text(json.dumps(man, indent=1))
    loaded = LiveIndex.load(tmp_path)
    assert loaded.loaded_carry == {"positions": [["feats", 0, 42], ["labels", 3, 5]]}
    np.testing.assert_array_equal(loaded.codes(), index.codes())
    assert loaded.search_frame("f0003", 3) == index.search_frame("f0003", 3)
    # An old snapshot that consumed nothing carried an empty list.
    man["offsets"] = []
    path.write_text(json.dumps(man, indent=1))
    assert read_snapshot(tmp_path)[1].carry == {"positions": []}
