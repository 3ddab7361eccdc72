"""Baselines: code shapes, better than chance on a toy problem, persistence, details."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.models.hashing.base import HashModel, unpack_bits
from vistream.models.hashing.baselines import HCOH, ITQ, LSH, OKH, AdaptHash, hadamard
from vistream.models.hashing.evaluate import retrieval_metrics

METHODS = [LSH, ITQ, OKH, AdaptHash, HCOH]


def blobs(n: int, seed: int, n_classes: int = 4, d: int = 20):
    """Gaussian classes with overlapping spreads, plus a large shared offset (raw features)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((n_classes, d)) * 2.0
    y = rng.integers(0, n_classes, n)
    X = centres[y] + rng.standard_normal((n, d)) * 1.5 + 10.0
    return X.astype(np.float32), y


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_codes_shape_and_better_than_chance(cls):
    Xtr, ytr = blobs(1200, 0)
    Xq, yq = blobs(200, 1)
    model = cls(n_bits=16, seed=0)
    for s in range(0, 1200, 400):  # three online updates
        model.partial_fit(Xtr[s:s + 400], ytr[s:s + 400])
    codes = model.encode(Xq)
    assert codes.shape == (200, 2) and codes.dtype == np.uint8
    bits = unpack_bits(model.encode(Xtr), 16)
    assert 0.05 < bits.mean() < 0.95  # bits are not constant
    m = retrieval_metrics(codes, model.encode(Xtr), yq, ytr)["mAP"]
    chance = np.mean(np.bincount(ytr) / len(ytr))  # AP of a random ranking ~ class share
    assert m > chance + 0.2, (cls.name, m)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_save_load_round_trip(tmp_path, cls):
    Xtr, ytr = blobs(600, 2)
    model = cls(n_bits=24, seed=5)
    model.partial_fit(Xtr[:300], ytr[:300])
    model.partial_fit(Xtr[300:], ytr[300:])
    back = HashModel.load(model.save(tmp_path / f"{cls.name}.npz"))
    assert type(back) is cls and back.version == model.version and back.hparams() == model.hparams()
    assert np.array_equal(back.encode(Xtr), model.encode(Xtr))


def test_versions_count_updates():
    X, y = blobs(400, 3)
    for cls in (OKH, AdaptHash, HCOH, ITQ):
        m = cls(n_bits=8)
        m.partial_fit(X[:201], y[:201])  # odd: one point waits for its pair in OKH/AdaptHash
        m.partial_fit(X[201:], y[201:])
        assert m.version == 2, cls.name


def test_itq_rotation_is_orthogonal_and_beats_plain_pca_sign():
    X, y = blobs(1000, 4, d=20)
    itq = ITQ(n_bits=16, seed=0).fit(X)
    assert np.allclose(itq.W.T @ itq.W, np.eye(16), atol=1e-4)  # PCA basis x rotation
    # more bits than dimensions: R has orthonormal rows
    wide = ITQ(n_bits=32, seed=0).fit(X)
    assert wide.encode(X).shape == (1000, 4)
    assert np.allclose(wide.W @ wide.W.T, np.eye(20), atol=1e-4)


def test_hcoh_codebook():
    H = hadamard(8)
    assert np.array_equal(H @ H.T, 8 * np.eye(8))
    m = HCOH(n_bits=16, seed=0)
    assert m.codebook.shape == (16, 16)
    T = m.targets(np.array(["b", "a", "b"]))
    assert np.array_equal(T[0], T[2]) and (T[0] != T[1]).sum() == 8  # half the bits differ
    assert m.classes == ["b", "a"]
    short = HCOH(n_bits=24)  # codebook of order 32 shortened by LSH to 24 bits
    assert short.order == 32 and short.codebook.shape == (32, 24)
    with pytest.raises(ValueError, match="classes"):
        HCOH(n_bits=8).targets(np.arange(9))
    multi = HCOH(n_bits=16).targets(np.array([[1, 0, 0], [1, 1, 0]]))
    assert multi.shape == (2, 16) and set(np.unique(multi)) <= {-1.0, 1.0}


def test_pairwise_learners_accept_multilabel():
    X, y = blobs(300, 5)
    Y = np.eye(4)[y]
    for cls in (OKH, AdaptHash, HCOH):
        m = cls(n_bits=16).partial_fit(X, Y)
        assert m.encode(X).shape == (300, 2)
