"""Metrics on hand-computed examples, the digits split (no leakage), and the eval CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vistream.models.hashing.evaluate import (augment_digits, load_data, load_digits_arrays, relevance,
                                     retrieval_metrics)

ROOT = Path(__file__).resolve().parents[3]


def codes(*bytes_: int) -> np.ndarray:
    return np.array(bytes_, np.uint8)[:, None]  # 8-bit codes, one byte each


def test_metrics_match_hand_computed_values():
    # database: Hamming distances to q0 = 0x00 are [1, 0, 3, 1, 2]; to q1 = 0xFF [7, 8, 5, 7, 6]
    db = codes(0b00000001, 0b00000000, 0b00000111, 0b00000010, 0b00000011)
    y_db = np.array([0, 0, 1, 1, 0])
    q = codes(0x00, 0xFF)
    y_q = np.array([1, 0])
    m = retrieval_metrics(q, db, y_q, y_db, topk=2, radius=2)
    # q0: order (ties by index) 1,0,3,4,2 -> relevant [0,0,1,0,1]: AP = (1/3 + 2/5) / 2
    #     top 2 holds no relevant item: AP@2 = 0; ball r<=2 = {0,1,3,4}, 1 relevant: 1/4
    # q1: order 2,4,0,3,1 -> relevant [0,1,1,0,1]: AP = (1/2 + 2/3 + 3/5) / 3
    #     AP@2 = (1/2) / 1; nothing within radius 2: precision 0
    ap0, ap1 = (1 / 3 + 2 / 5) / 2, (1 / 2 + 2 / 3 + 3 / 5) / 3
    assert m["mAP"] == pytest.approx((ap0 + ap1) / 2)
    assert m["mAP@2"] == pytest.approx((0 + 0.5) / 2)
    assert m["prec@r2"] == pytest.approx((0.25 + 0.0) / 2)
    # ties broken by database index: swapping items 0 and 3 changes q0's AP to (1/2 + 2/5) / 2
    swapped = retrieval_metrics(q[:1], db[[3, 1, 2, 0, 4]], y_q[:1], y_db[[3, 1, 2, 0, 4]],
                                topk=2)
    assert swapped["mAP"] == pytest.approx((1 / 2 + 2 / 5) / 2)


def test_metrics_edge_cases():
    db = codes(0x00, 0x01, 0xF0)
    # a query with no relevant item scores 0 everywhere; exact matches give 1
    m = retrieval_metrics(codes(0x00), db, np.array([7]), np.array([1, 2, 3]), topk=2)
    assert m == {"mAP": 0.0, "mAP@2": 0.0, "prec@r2": 0.0}
    m = retrieval_metrics(codes(0x00), db, np.array([1]), np.array([1, 1, 2]), topk=2)
    assert m == {"mAP": 1.0, "mAP@2": 1.0, "prec@r2": 1.0}
    # batching does not change anything
    rng = np.random.default_rng(0)
    qc, dc = rng.integers(0, 256, (37, 2), dtype=np.uint8), rng.integers(0, 256, (90, 2), dtype=np.uint8)
    yq, yd = rng.integers(0, 3, 37), rng.integers(0, 3, 90)
    assert retrieval_metrics(qc, dc, yq, yd, topk=10, batch=7) == \
        retrieval_metrics(qc, dc, yq, yd, topk=10, batch=100)


def test_multilabel_relevance_shares_a_label():
    rel = relevance(np.array([[1, 0, 1], [0, 1, 0]]), np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]]))
    assert rel.tolist() == [[True, True, False], [False, False, False]]


def test_augmentation_is_seeded_and_small():
    images, _ = load_digits_arrays()
    a = augment_digits(images[:50], np.random.default_rng(1))
    b = augment_digits(images[:50], np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == (50, 8, 8)
    assert a.min() >= 0 and a.max() <= 16
    # identity warp without noise reproduces the image
    same = augment_digits(images[:5], np.random.default_rng(0), max_rot=0, scale=(1, 1),
                          max_shift=0, noise=0)
    assert np.allclose(same, images[:5], atol=1e-5)
    corr = np.corrcoef(a.reshape(50, -1).ravel(), images[:50].reshape(50, -1).ravel())[0, 1]
    assert corr > 0.6


def test_digits_split_has_no_leakage():
    d = load_data("digits-pixels", seed=3, queries_per_class=100, stream_size=20000, progress=False)
    assert len(d.y_query) == 1000 and np.all(np.bincount(d.y_query) == 100)
    assert len(d.y_db) == 20000
    q_ids, db_ids = set(d.info["query_ids"]), set(d.info["database_original_ids"])
    assert not q_ids & db_ids and len(q_ids | db_ids) == 1797
    images, labels = load_digits_arrays()
    flat = images.reshape(len(labels), -1)
    # every database original is in the stream exactly as it is; no query digit is
    db_rows = {r.tobytes() for r in d.X_db}
    assert all(flat[i].tobytes() in db_rows for i in db_ids)
    assert not any(flat[i].tobytes() in db_rows for i in q_ids)
    val = load_data("digits-pixels", seed=3, split="val", progress=False)
    assert set(val.info["query_ids"]) <= db_ids and not set(val.info["query_ids"]) & \
        set(val.info["database_original_ids"])
    assert len(val.y_query) == 200


def test_eval_cli_quick_writes_png_and_json(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    np.savez(tmp_path / "toy.npz", X=(np.eye(3)[y] * 3 + rng.standard_normal((400, 3)))
             .astype(np.float32), y=y)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from vistream.cli.main import main; main()", "eval", "hashing",
           "--quick", "--data", f"digits-pixels,{tmp_path / 'toy.npz'}", "--bits", "16",
           "--methods", "sdoh,lsh,itq", "--chunk", "200", "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| digits-pixels | sdoh |" in res.stdout and "| toy | lsh |" in res.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["quick"] and set(doc["results"]) == {"digits-pixels", "toy"}
    r = doc["results"]["digits-pixels"]["methods"]["sdoh"]["16"]
    assert set(r["final"]) == {"mAP", "mAP@1000", "prec@r2"}
    assert len(r["curve"]) >= 2 and r["curve"][-1]["version"] == len(r["curve"])
    for name in ("digits-pixels", "toy"):
        png = out / f"map_curve_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.md").read_text().startswith("| data | method |")


def test_eval_cli_rejects_bad_arguments(tmp_path):
    from vistream.models.hashing.evaluate import run_evaluation

    with pytest.raises(ValueError, match="multiples of 8"):
        run_evaluation(["digits-pixels"], [12], ["lsh"], out=tmp_path)
    with pytest.raises(ValueError, match="unknown data"):
        load_data("cifar", progress=False)
    with pytest.raises(ValueError, match="unknown hashing method"):
        run_evaluation(["digits-pixels"], [16], ["nope"], out=tmp_path, quick=True, progress=False,
                       echo=lambda s: None)
