"""The query/database split of ``eval hashing`` on a user .npz: the query share is capped."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.models.hashing.evaluate import load_data, split_sizes


def _npz(tmp_path, n=1797, classes=10, multilabel=False):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    if multilabel:
        y = np.eye(classes, dtype=np.int64)[y]
    path = tmp_path / "toy.npz"
    np.savez(path, X=rng.standard_normal((n, 8)).astype(np.float32), y=y)
    return path


def test_small_npz_keeps_most_items_in_the_database(tmp_path):
    d = load_data(str(_npz(tmp_path)), queries_per_class=100)
    # 10% of 1,797 = 179 -> 17 per class, not 100 per class (1,000 queries vs 797)
    assert len(d.y_query) == 170 and len(d.y_db) == 1797 - 170
    assert np.bincount(d.y_query).tolist() == [17] * 10
    assert d.info["queries_per_class"] == 17
    assert split_sizes(d.info, len(d.y_query), len(d.y_db)) \
        == "170 queries (9.5% of 1797 items, 17 per class), database/stream 1627"


def test_large_npz_keeps_the_per_class_cap_and_val_sets_tests_aside(tmp_path):
    d = load_data(str(_npz(tmp_path, n=20000)), queries_per_class=100)
    assert len(d.y_query) == 1000                      # 100 per class < 10% of 20,000
    v = load_data(str(_npz(tmp_path, n=20000)), queries_per_class=100, split="val")
    assert len(v.y_query) == 200 and len(v.y_db) == 20000 - 1000 - 200
    assert "1000 test queries set aside" in split_sizes(v.info, len(v.y_query), len(v.y_db))


def test_query_share_option_and_multilabel(tmp_path):
    d = load_data(str(_npz(tmp_path)), queries_per_class=100, query_share=0.3)
    assert len(d.y_query) == 530                       # 539 // 10 = 53 per class
    m = load_data(str(_npz(tmp_path, multilabel=True)), queries_per_class=100)
    assert len(m.y_query) == 179
    with pytest.raises(ValueError, match="query share"):
        load_data(str(_npz(tmp_path)), query_share=1.5)


def test_method_overrides_reach_the_model():
    from vistream.models.hashing.evaluate import make_model

    m = make_model("okh", 16, 0, 100, overrides={"okh": {"alpha": 0.7}, "hcoh": {"lr": 5.0}})
    assert m.hparams()["alpha"] == 0.7
    assert make_model("hcoh", 16, 0, 100, n_classes=10, overrides={"hcoh": {"lr": 5.0}}).lr == 5.0
    with pytest.raises(ValueError, match="okh"):
        make_model("okh", 16, 0, 100, overrides={"okh": {"stepsize": 1.0}})
