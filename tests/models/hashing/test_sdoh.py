"""SDOH: the KL objective, its gradient, learning on digits, versions and persistence."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.models.hashing.base import HashModel, hamming_distances, unpack_bits
from vistream.models.hashing.baselines import LSH, center_l2
from vistream.models.hashing.evaluate import load_digits_arrays, retrieval_metrics
from vistream.models.hashing.sdoh import SDOH, label_similarity


@pytest.fixture(scope="module")
def digits():
    images, y = load_digits_arrays()
    X = images.reshape(len(y), -1)
    perm = np.random.default_rng(0).permutation(len(y))
    X, y = X[perm].astype(np.float32), y[perm]
    return X[:1300], y[:1300], X[1300:], y[1300:]


def test_target_distribution_gaussian_weights():
    m = SDOH(n_bits=8, sigma=0.5)
    P, scale = m.target_distribution(np.array([0, 0, 1]))
    assert scale is None and np.allclose(np.diag(P), 0) and np.isclose(P.sum(), 1.0)
    # N(1; 1, 0.5) = 0.798 for a similar pair, N(0; 1, 0.5) = 0.108 for a dissimilar one
    assert np.isclose(P[0, 1] / P[0, 2], 0.7979 / 0.1080, rtol=1e-3)
    # multi-label: cosine similarity of the label vectors
    S = label_similarity(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]]))
    assert np.isclose(S[0, 1], 1 / np.sqrt(2)) and S[0, 2] == 0 and np.isclose(S[1, 1], 1)


@pytest.mark.parametrize("pos,neg", [(1.0, 1.0), (3.0, 0.5)])
def test_gradient_matches_finite_differences(pos, neg):
    rng = np.random.default_rng(0)
    X = center_l2(rng.standard_normal((25, 6)), None).astype(np.float64)
    y = rng.integers(0, 3, 25)
    P, scale = SDOH(n_bits=8, pos=pos, neg=neg).target_distribution(y)
    P = P.astype(np.float64)
    scale = None if scale is None else scale.astype(np.float64)
    W = rng.standard_normal((6, 8))
    _, g = SDOH.cost_and_grad(X, P, W, scale)
    num = np.zeros_like(W)
    eps = 1e-6
    for i in range(6):
        for j in range(8):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            num[i, j] = (SDOH.cost_and_grad(X, P, Wp, scale, grad=False)[0]
                         - SDOH.cost_and_grad(X, P, Wm, scale, grad=False)[0]) / (2 * eps)
    assert np.allclose(g, num, atol=1e-7, rtol=1e-4)


def test_kl_cost_falls_within_a_chunk(digits):
    X, y, _, _ = digits
    m = SDOH(n_bits=16, lr=2.0, sigma=0.3, threshold=0.0, max_iter=40, chunk_size=600)
    m.partial_fit(X[:600], y[:600])
    c = np.array(m.last_costs)
    assert len(c) >= 10
    assert np.all(np.diff(c[:-1]) < 0)  # every accepted step lowers KL(P||Q)
    assert c[:-1].min() < 0.8 * c[0]
    # the kept W is the best iterate
    P, _ = m.target_distribution(y[:600])
    kept, _ = SDOH.cost_and_grad(center_l2(X[:600], m.mean), P, m.W, grad=False)
    assert np.isclose(kept, c.min(), rtol=1e-4)


@pytest.mark.parametrize("script,threshold,n_steps_kept", [
    ([1.0, 0.5, 0.6, 0.1], 1e-4, 1),  # the cost rises at the 2nd step: keep W after 1 step
    ([1.0, 0.9, 0.89995, 0.1], 1e-4, 2),  # gain < threshold: stop, keep that (better) W
    ([1.0, 0.9, 0.8, 0.7, 0.6], 0.0, 4),  # max_iter = 4 steps
])
def test_stopping_rule_keeps_the_best_W(monkeypatch, script, threshold, n_steps_kept):
    costs = iter(script)

    def scripted(X, P, W, scale=None, PlogP=None, grad=True):
        return next(costs), -np.ones_like(W) if grad else None

    monkeypatch.setattr(SDOH, "cost_and_grad", staticmethod(scripted))
    X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    init = SDOH(n_bits=8, max_iter=0, seed=3).partial_fit(X, np.arange(10) % 2)
    costs = iter(script)
    m = SDOH(n_bits=8, lr=0.5, threshold=threshold, max_iter=4, seed=3)
    m.partial_fit(X, np.arange(10) % 2)
    assert m.last_costs == script[:len(m.last_costs)]
    assert np.allclose(m.W, init.W + 0.5 * n_steps_kept)


def test_sdoh_beats_lsh_on_digits(digits):
    Xtr, ytr, Xq, yq = digits
    scores = {}
    for model in (SDOH(n_bits=32, lr=2.0, sigma=0.3, threshold=1e-4, max_iter=150,
                       chunk_size=650, seed=1), LSH(n_bits=32, seed=1)):
        model.partial_fit(Xtr, ytr)
        scores[model.name] = retrieval_metrics(model.encode(Xq), model.encode(Xtr), yq, ytr)["mAP"]
    assert scores["sdoh"] > scores["lsh"] + 0.15, scores


def test_version_increments_per_update_and_chunks_split(digits):
    X, y, _, _ = digits
    m = SDOH(n_bits=8, chunk_size=200, max_iter=3)
    assert m.version == 0
    m.partial_fit(X[:150], y[:150])
    assert m.version == 1 and m.n_seen == 150
    m.partial_fit(X[150:650], y[150:650])  # 500 points, chunks of at most 200: 3 updates
    assert m.version == 4 and m.n_seen == 650
    assert len(m.last_costs) >= 1


def test_codes_are_sign_of_centred_projection_any_multiple_of_8(digits):
    X, y, Xq, _ = digits
    m = SDOH(n_bits=24, max_iter=5).partial_fit(X[:400], y[:400])
    codes = m.encode(Xq)
    assert codes.shape == (len(Xq), 3) and codes.dtype == np.uint8
    expect = (Xq - m.mean) @ m.W > 0
    assert np.array_equal(unpack_bits(codes, 24), expect)
    with pytest.raises(ValueError, match="multiple of 8"):
        SDOH(n_bits=20)


def test_save_load_round_trip(tmp_path, digits):
    X, y, Xq, _ = digits
    m = SDOH(n_bits=16, lr=1.5, sigma=0.4, threshold=1e-3, max_iter=20, chunk_size=300,
             pos=2.0, neg=0.5, seed=4)
    m.partial_fit(X[:600], y[:600])
    back = HashModel.load(m.save(tmp_path / "sdoh.npz"))
    assert isinstance(back, SDOH) and back.version == m.version == 2
    assert back.hparams() == m.hparams()
    assert np.array_equal(back.encode(Xq), m.encode(Xq))
    assert back.n_seen == 600 and np.allclose(back.mean, m.mean)
    # learning resumes identically from the loaded state
    m.partial_fit(X[600:900], y[600:900])
    back.partial_fit(X[600:900], y[600:900])
    assert np.array_equal(back.encode(Xq), m.encode(Xq))
    assert hamming_distances(back.encode(Xq[:5]), m.encode(Xq[:5])).trace() == 0


def test_raw_features_without_normalisation(digits):
    X, y, Xq, _ = digits
    m = SDOH(n_bits=16, normalize=False, max_iter=5).partial_fit(X[:300] / 16.0, y[:300])
    assert m.bias is None and m.mean is None
    assert np.array_equal(unpack_bits(m.encode(Xq / 16.0), 16), (Xq / 16.0) @ m.W > 0)


def test_rejects_bad_input():
    m = SDOH(n_bits=8)
    with pytest.raises(ValueError, match="labels"):
        m.partial_fit(np.zeros((4, 3)), np.zeros(3))
    with pytest.raises(ValueError):
        SDOH(lr=0)
