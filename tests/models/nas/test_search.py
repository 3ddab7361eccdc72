"""A tiny BNAS search: rounds shrink the space to one op per edge, state resumes, logs and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vistream.models.data import DataBundle, Split
from vistream.models.nas.bnas import Search, SearchConfig, run_search
from vistream.models.nas.genotype import load_genotype


def _data() -> DataBundle:
    rng = np.random.default_rng(0)

    def split(n):
        return Split(rng.random((n, 3, 8, 8), dtype=np.float32), rng.integers(0, 4, n).astype(np.int64))

    return DataBundle("tiny", split(32), split(32), split(16), 4, list("abcd"))


CFG = dict(C=8, layers=1, steps=2, k=4, size=8, train_images=32, search_val_images=32, batch_size=32,
           warmup=0, passes=1, eval_batches=1)


def test_reduction_search_ends_with_one_op_per_edge_and_is_cheaper(tmp_path):
    s = run_search(_data(), SearchConfig(**CFG), tmp_path / "s", progress=False)
    assert s["epochs"] == 7 and s["rounds"] == 7
    log = [json.loads(line) for line in (tmp_path / "s" / "rounds.jsonl").read_text().splitlines()]
    rounds = [r for r in log if r["kind"] == "round"]
    assert all(len(ops) == 1 for ops in rounds[-1]["remaining"].values())
    assert all(ops != ["none"] for ops in rounds[-1]["remaining"].values())
    assert s["full_epochs"] < s["epochs"]  # later epochs run a smaller space
    assert (tmp_path / "s" / "remaining.png").stat().st_size > 0
    g = load_genotype(tmp_path / "s")
    assert len(g.normal) == 4 and g.meta["reduce"] is True


def test_state_resumes_where_it_stopped(tmp_path):
    cfg = SearchConfig(**CFG)
    a = Search(_data(), cfg, tmp_path)
    a.step(progress=False)
    a.step(progress=False)
    b = Search(_data(), cfg, tmp_path)
    assert b.resume() and b.epoch == 2 and b.rounds == 2
    assert np.array_equal(b.net.mask.numpy(), a.net.mask.numpy())
    assert np.array_equal(b.reducer.score, a.reducer.score)
    with pytest.raises(ValueError, match="other settings"):
        Search(_data(), SearchConfig(**{**CFG, "k": 2}), tmp_path).resume()
    with pytest.raises(ValueError, match="--resume"):
        run_search(_data(), cfg, tmp_path, resume=False, progress=False)
