"""Baselines for SDOH.

* :class:`LSH` — data-independent random projections (no learning).
* :class:`ITQ` — Iterative Quantization (Gong & Lazebnik, CVPR 2011): unsupervised and
  *offline*; trained on the whole stream, it is the "what a batch method gets" reference.
* :class:`OKH` — Online Kernel Hashing (Huang, Yang & Zheng, IJCAI 2013): supervised, online,
  one passive-aggressive update per pair of points, on RBF kernel features.
* :class:`AdaptHash` — Adaptive Hashing (Cakir & Sclaroff, ICCV 2015): supervised, online,
  SGD on pairs, updates only the bits responsible for a hinge loss on the Hamming distance.
* :class:`HCOH` — Hadamard Codebook based Online Hashing (Lin, Ji, Liu & Wu, ACM MM 2018):
  supervised, online, each class gets a Hadamard codeword and the hash functions regress onto
  the codewords by SGD.

All have ``partial_fit(X, y)`` (one ``version`` step per call) and ``encode(X)`` (packed uint8).
The online learners follow the online-hashing protocol of the MIHash framework (Cakir et al.,
ICCV 2017), in which every method sees features centred and scaled to unit length; here each
model keeps that normalisation itself (a running mean of the points it trained on, saved with
the model) so it can be fed raw features; see :func:`center_l2`. Where a paper's detail is not
known to me, the class docstring says what was chosen.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel


# --------------------------------------------------------------------------- shared helpers
def update_running_mean(mean: np.ndarray | None, n_seen: int, X: np.ndarray
                        ) -> tuple[np.ndarray | None, int]:
    """Count-weighted running mean of all rows seen so far (float64)."""
    n = X.shape[0]
    if n == 0:
        return mean, n_seen
    batch_mean = X.mean(axis=0, dtype=np.float64)
    if mean is None or n_seen == 0:
        return batch_mean, n
    total = n_seen + n
    return mean + (batch_mean - mean) * (n / total), total


def center_l2(X: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``(x - mean) / ||x - mean||`` row by row, float32 (all-zero rows stay zero).

    The row scaling is positive, so ``sign(center_l2(X) W) == sign((X - mean) W)``: a model
    trained on these rows encodes raw rows with ``bias = -mean W``.
    """
    Xc = np.asarray(X, np.float32) - (0 if mean is None else np.asarray(mean, np.float32))
    return Xc / np.maximum(np.linalg.norm(Xc, axis=1, keepdims=True), 1e-12)


def pair_similarity(y1: Any, y2: Any) -> int:
    """+1 if two labels agree (single-label) or share a label (multi-label rows), else -1."""
    y1, y2 = np.asarray(y1), np.asarray(y2)
    if y1.ndim == 0:
        return 1 if y1 == y2 else -1
    return 1 if float(np.dot(y1.astype(np.float64), y2.astype(np.float64))) > 0 else -1


def take_pairs(pending: tuple | None, rows: np.ndarray, y: np.ndarray
               ) -> tuple[list[tuple[tuple, tuple]], tuple | None]:
    """Consecutive (row, label) pairs of a chunk for pairwise online methods; an odd row is
    carried over (returned as the new ``pending``) to pair with the next chunk's first row."""
    items = [(rows[i], y[i]) for i in range(len(rows))]
    if pending is not None:
        items.insert(0, pending)
    pending = items.pop() if len(items) % 2 else None
    return [(items[t], items[t + 1]) for t in range(0, len(items), 2)], pending


def unit_columns(W: np.ndarray) -> np.ndarray:
    return W / np.maximum(np.linalg.norm(W, axis=0, keepdims=True), 1e-12)


class CenteredLinear(HashModel):
    """A linear hash model trained on :func:`center_l2` rows; ``bias = -mean W`` for encoding."""

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        self.mean: np.ndarray | None = None
        self.n_seen = 0
        self._rng = np.random.default_rng(seed)

    def extra_state(self) -> dict[str, np.ndarray]:
        if self.mean is None:
            return {}
        return {"mean": self.mean, "n_seen": np.array([self.n_seen], np.int64)}

    def load_extra_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "mean" in arrays:
            self.mean = arrays["mean"].astype(np.float64)
            self.n_seen = int(arrays["n_seen"][0])

    def _init_W(self, d: int) -> None:
        self.W = unit_columns(self._rng.standard_normal((d, self.n_bits))).astype(np.float32)

    def _normalised(self, X: np.ndarray) -> np.ndarray:
        """Update the running mean with ``X`` and return its normalised rows."""
        if self.W is None:
            self._init_W(X.shape[1])
        self.mean, self.n_seen = update_running_mean(self.mean, self.n_seen, X)
        return center_l2(X, self.mean)

    def _sync_bias(self) -> None:
        self.bias = -(self.mean @ self.W).astype(np.float32)


# --------------------------------------------------------------------------- LSH
class LSH(HashModel):
    """Random-projection LSH (Charikar's sign random projections): ``W ~ N(0, 1)``, no learning.

    ``partial_fit`` only fixes the input dimension on first use, so LSH plugs into the same
    online protocol as the learned methods.
    """

    name = "lsh"

    def partial_fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LSH:
        X = self._check_X(X)
        if self.W is None:
            rng = np.random.default_rng(self.seed)
            self.W = rng.standard_normal((X.shape[1], self.n_bits)).astype(np.float32)
            # Centre on the first chunk so bits split the data rather than all agreeing.
            self.bias = -(X.mean(axis=0) @ self.W).astype(np.float32)
            self.version += 1
        return self

    fit = partial_fit


# --------------------------------------------------------------------------- ITQ
class ITQ(HashModel):
    """Iterative Quantization (Gong & Lazebnik, CVPR 2011), unsupervised, offline.

    ``fit(X)``: centre, project on the top ``n_bits`` principal directions (``V = X_c W_pca``),
    then alternate ``B = sign(V R)`` and the orthogonal Procrustes step ``R = U Vt`` with
    ``U S Vt = svd(V^T B)`` for ``n_iter`` (50) iterations from a random rotation. Codes are
    ``sign((x - mean) W_pca R)``.

    Choices: with ``n_bits`` larger than the feature dimension ``d`` there are only ``d``
    principal directions; ``R`` is then ``d x n_bits`` with orthonormal rows, which the same
    Procrustes step optimises. ``partial_fit`` keeps the rows it has seen (in memory, not in
    the saved file) and refits from scratch on all of them: the offline reference inside the
    online protocol. Labels are ignored.
    """

    name = "itq"

    def __init__(self, n_bits: int = 64, seed: int = 0, n_iter: int = 50) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        self.n_iter = int(n_iter)
        self._seen: list[np.ndarray] = []

    def hparams(self) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "seed": self.seed, "n_iter": self.n_iter}

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ITQ:
        X = self._check_X(X).astype(np.float64)
        rng = np.random.default_rng(self.seed)
        mean = X.mean(axis=0)
        Xc = X - mean
        k = min(self.n_bits, X.shape[1])
        # principal directions from the covariance (d x d) — cheap for n >> d
        evals, evecs = np.linalg.eigh(Xc.T @ Xc)
        W_pca = evecs[:, np.argsort(evals)[::-1][:k]]
        V = Xc @ W_pca
        Q, _ = np.linalg.qr(rng.standard_normal((self.n_bits, k)))  # n_bits x k, orthonormal cols
        R = Q.T  # k x n_bits, orthonormal rows
        for _ in range(self.n_iter):
            B = np.where(V @ R >= 0, 1.0, -1.0)
            U, _, Vt = np.linalg.svd(V.T @ B, full_matrices=False)
            R = U @ Vt
        self.W = (W_pca @ R).astype(np.float32)
        self.bias = -(mean @ self.W).astype(np.float32)
        self.version += 1
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ITQ:
        self._seen.append(self._check_X(X))
        return self.fit(np.concatenate(self._seen))


# --------------------------------------------------------------------------- OKH
class OKH(HashModel):
    """Online Kernel Hashing (Huang, Yang & Zheng, "Online Hashing", IJCAI 2013).

    Features: ``z(x) = [exp(-||x - a_k||^2 / (2 s^2))]_k`` over ``n_anchors`` (300) anchor points
    drawn from the first chunk, plus a constant 1; ``s`` is the mean distance between the first
    chunk's points and the anchors. Codes ``h = sign(W^T z)``, ``W`` starts as unit-norm Gaussian
    columns. Points arrive in pairs ``(x_i, x_j)`` with ``s_ij = +1`` (same label) or ``-1``.
    Loss on the current codes: ``R = d_H`` for a similar pair, ``R = max(0, alpha b - d_H)`` for
    a dissimilar one. If ``R > 0``, target codes ``g`` are made from ``h`` by flipping the
    cheapest bits (smallest ``|w_k^T z|``; for a similar pair one side of every differing bit,
    for a dissimilar pair one side of the ``R`` cheapest agreeing bits), and the
    passive-aggressive step of the paper is taken on the surrogate
    ``l(W) = sum_k (h_ik - g_ik) w_k^T z_i + (h_jk - g_jk) w_k^T z_j + sqrt(R)``:
    ``W += tau G`` with ``G = z_i (g_i - h_i)^T + z_j (g_j - h_j)^T`` and
    ``tau = min(C, l(W) / ||G||^2)``. Defaults ``C = 0.1``, ``alpha = 0.2``, 300 anchors (those
    of the MIHash framework's OKH runs).

    Choices (not known to me from the paper): the bit-flipping rule for the targets, the
    kernel width estimate, and the anchors from the first chunk only. The kernel works on raw
    features (it is translation-invariant and ``s`` adapts to their scale). Pairs are
    consecutive points of the stream; an odd point waits for the next call.
    """

    name = "okh"

    def __init__(self, n_bits: int = 64, seed: int = 0, C: float = 0.1, alpha: float = 0.2,
                 n_anchors: int = 300, center_kernel: bool = True) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        self.C = float(C)
        self.alpha = float(alpha)
        self.n_anchors = int(n_anchors)
        self.center_kernel = bool(center_kernel)
        self.anchors: np.ndarray | None = None
        self.kernel_mean: np.ndarray | None = None
        self.width = 1.0
        self._pending: tuple[np.ndarray, Any] | None = None
        self._rng = np.random.default_rng(seed)

    def hparams(self) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "seed": self.seed, "C": self.C, "alpha": self.alpha,
                "n_anchors": self.n_anchors, "center_kernel": self.center_kernel}

    def extra_state(self) -> dict[str, np.ndarray]:
        if self.anchors is None:
            return {}
        state = {"anchors": self.anchors, "width": np.array([self.width])}
        if self.kernel_mean is not None:
            state["kernel_mean"] = self.kernel_mean
        return state

    def load_extra_state(self, arrays: dict[str, np.ndarray]) -> None:
        if "anchors" in arrays:
            self.anchors = arrays["anchors"].astype(np.float32)
            self.width = float(arrays["width"][0])
            self.kernel_mean = arrays.get("kernel_mean")

    @property
    def dim(self) -> int | None:
        return None if self.anchors is None else self.anchors.shape[1]

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"features must be a 2-D array (n, d), got shape {X.shape}")
        if self.anchors is not None and X.shape[1] != self.anchors.shape[1]:
            raise ValueError(f"features have {X.shape[1]} dims, the model expects "
                             f"{self.anchors.shape[1]}")
        return X

    def kernel_features(self, X: np.ndarray) -> np.ndarray:
        A = self.anchors
        d2 = (X * X).sum(1)[:, None] + (A * A).sum(1)[None, :] - 2.0 * X @ A.T
        K = np.exp(-np.maximum(d2, 0.0) / (2.0 * self.width ** 2))
        if self.kernel_mean is not None:
            K = K - self.kernel_mean
        return np.hstack([K, np.ones((X.shape[0], 1), np.float32)]).astype(np.float32)

    def project(self, X: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError(f"{self.name} has not been fitted yet")
        return self.kernel_features(self._check_X(X)) @ self.W

    def _init(self, X: np.ndarray) -> None:
        m = min(self.n_anchors, X.shape[0])
        self.anchors = X[self._rng.choice(X.shape[0], m, replace=False)].copy()
        A = self.anchors.astype(np.float64)
        Xs = X[:5000].astype(np.float64)  # the width from at most 5,000 points
        d2 = (Xs * Xs).sum(1)[:, None] + (A * A).sum(1)[None, :] - 2.0 * Xs @ A.T
        self.width = float(np.sqrt(np.maximum(d2, 0.0)).mean()) or 1.0
        if self.center_kernel:
            self.kernel_mean = None
            self.kernel_mean = self.kernel_features(X[:5000])[:, :-1].mean(0).astype(np.float32)
        W = self._rng.standard_normal((m + 1, self.n_bits))
        self.W = unit_columns(W).astype(np.float32)

    def _update_pair(self, zi: np.ndarray, zj: np.ndarray, s: int) -> None:
        b = self.n_bits
        fi, fj = zi @ self.W, zj @ self.W
        hi, hj = np.where(fi >= 0, 1.0, -1.0), np.where(fj >= 0, 1.0, -1.0)
        differ = hi != hj
        dH = int(differ.sum())
        if s > 0:
            R = dH
            flip_bits = np.flatnonzero(differ)
        else:
            R = max(0, int(math.ceil(self.alpha * b)) - dH)
            same = np.flatnonzero(~differ)
            cost = np.minimum(np.abs(fi[same]), np.abs(fj[same]))
            flip_bits = same[np.argsort(cost, kind="stable")[:R]]
        if R <= 0:
            return
        gi, gj = hi.copy(), hj.copy()
        for k in flip_bits:  # flip the side whose projection is closer to its threshold
            if abs(fi[k]) <= abs(fj[k]):
                gi[k] = -gi[k]
            else:
                gj[k] = -gj[k]
        loss = float((hi - gi) @ fi + (hj - gj) @ fj) + math.sqrt(R)
        G = np.outer(zi, gi - hi) + np.outer(zj, gj - hj)
        g2 = float((G * G).sum())
        if loss <= 0 or g2 == 0:
            return
        tau = min(self.C, loss / g2)
        self.W += (tau * G).astype(np.float32)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> OKH:
        X = self._check_X(X)
        y = np.asarray(y)
        if self.W is None:
            self._init(X)
        pairs, self._pending = take_pairs(self._pending, self.kernel_features(X), y)
        for (zi, yi), (zj, yj) in pairs:
            self._update_pair(zi, zj, pair_similarity(yi, yj))
        self.version += 1
        return self

    fit = partial_fit


# --------------------------------------------------------------------------- AdaptHash
class AdaptHash(CenteredLinear):
    """Adaptive Hashing (Cakir & Sclaroff, "Adaptive Hashing for Fast Similarity Search",
    ICCV 2015).

    Linear hash ``sign(W^T x)``, relaxed as ``f(v) = 2 / (1 + exp(-v)) - 1``. Points arrive in
    pairs; the hinge loss on the Hamming distance is ``max(0, d_H - (1 - alpha) b)`` for a
    similar pair and ``max(0, alpha b - d_H)`` for a dissimilar one. When it is positive, one
    SGD step (``stepsize``) on ``(f(W^T x_i)^T f(W^T x_j) - b s)^2`` is taken, restricted to the
    ``ceil(loss)`` wrong bits whose projections have the largest magnitude, plus the
    orthogonality penalty ``beta W (W^T W - I)``; then every column is rescaled to unit norm.
    Defaults ``alpha 0.9``, ``beta 1e-2``, ``stepsize 1`` (those of the MIHash framework).

    Choices: inputs centred with the running mean and scaled to unit length (the framework's
    normalisation), pairs are consecutive points (an odd point waits for the next call).
    """

    name = "adapthash"

    def __init__(self, n_bits: int = 64, seed: int = 0, alpha: float = 0.9, beta: float = 1e-2,
                 stepsize: float = 1.0) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stepsize = float(stepsize)
        self._pending: tuple[np.ndarray, Any] | None = None

    def hparams(self) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "seed": self.seed, "alpha": self.alpha,
                "beta": self.beta, "stepsize": self.stepsize}

    def _update_pair(self, xi: np.ndarray, xj: np.ndarray, s: int) -> None:
        b = self.n_bits
        W = self.W
        v, u = xi @ W, xj @ W
        hi, hj = v > 0, u > 0
        differ = hi != hj
        dH = int(differ.sum())
        if s > 0:
            loss = max(0.0, dH - (1.0 - self.alpha) * b)
            wrong = np.flatnonzero(differ)
        else:
            loss = max(0.0, self.alpha * b - dH)
            wrong = np.flatnonzero(~differ)
        if loss <= 0 or wrong.size == 0:
            return
        mag = np.maximum(np.abs(v), np.abs(u))[wrong]
        chosen = wrong[np.argsort(-mag, kind="stable")[:int(math.ceil(loss))]]
        fi, fj = np.tanh(v / 2), np.tanh(u / 2)  # = 2 / (1 + e^-v) - 1
        dfi, dfj = (1 - fi * fi) / 2, (1 - fj * fj) / 2
        err = 2.0 * (float(fi @ fj) - b * s)
        G = err * (np.outer(xi, fj * dfi) + np.outer(xj, fi * dfj))
        mask = np.zeros(b, bool)
        mask[chosen] = True
        G[:, ~mask] = 0.0
        G += self.beta * W @ (W.T @ W - np.eye(b, dtype=W.dtype))
        self.W = unit_columns(W - self.stepsize * G).astype(np.float32)

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> AdaptHash:
        X = self._check_X(X)
        y = np.asarray(y)
        pairs, self._pending = take_pairs(self._pending, self._normalised(X), y)
        for (xi, yi), (xj, yj) in pairs:
            self._update_pair(xi, xj, pair_similarity(yi, yj))
        self._sync_bias()
        self.version += 1
        return self

    fit = partial_fit


# --------------------------------------------------------------------------- HCOH
def hadamard(order: int) -> np.ndarray:
    """Sylvester Hadamard matrix of a power-of-two order (+-1 entries)."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {order}")
    Hm = np.ones((1, 1))
    while Hm.shape[0] < order:
        Hm = np.block([[Hm, Hm], [Hm, -Hm]])
    return Hm


class HCOH(CenteredLinear):
    """Hadamard Codebook based Online Hashing (Lin, Ji, Liu & Wu, "Supervised Online Hashing
    via Hadamard Codebook Learning", ACM MM 2018).

    Every class gets a row of a Sylvester Hadamard matrix of order ``r`` (rows are mutually
    orthogonal, so two classes' targets differ in ``r/2`` bits); when ``r`` is not the code
    length the codewords are shortened by LSH, ``sign(c R)`` with a fixed Gaussian ``R``
    (``r x n_bits``). A multi-label point's target is the sign of the sum of its classes'
    codewords. The hash functions ``sign(W^T x)`` are fitted online by SGD, one point at a
    time, on ``||tanh(W^T x) - t||^2 / 2`` with learning rate ``lr``.

    Choices: ``r`` is the smallest power of two >= ``max(n_bits, n_classes)``
    (``n_classes`` = 0: sized by ``n_bits`` alone; a class beyond the codebook raises);
    classes take codebook rows in a seeded random order as they first appear (their labels
    are saved with the model); ``lr`` 0.1 by default (the class default, not tuned; ``vistream
    eval hashing`` runs lr 2, chosen on the validation split: ``EVAL_PARAMS`` in
    :mod:`models.hashing.evaluate`, grid in docs/hashing.md) on inputs centred with the running
    mean and scaled to unit length; one pass over each chunk in stream order.
    """

    name = "hcoh"

    def __init__(self, n_bits: int = 64, seed: int = 0, lr: float = 0.1, n_classes: int = 0) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        self.lr = float(lr)
        self.n_classes = int(n_classes)
        self.order = 1 << max(0, (max(self.n_bits, self.n_classes, 1) - 1).bit_length())
        rng = np.random.default_rng(seed + 7919)
        rows = hadamard(self.order)[rng.permutation(self.order)]
        if self.order != self.n_bits:
            R = rng.standard_normal((self.order, self.n_bits))
            rows = np.where(rows @ R >= 0, 1.0, -1.0)
        self.codebook = rows.astype(np.float32)  # (order, n_bits), row c = class c's codeword
        self.classes: list[Any] = []

    def hparams(self) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "seed": self.seed, "lr": self.lr,
                "n_classes": self.n_classes}

    def extra_state(self) -> dict[str, np.ndarray]:
        state = super().extra_state()
        if self.classes:
            state["classes"] = np.asarray(self.classes)
        return state

    def load_extra_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_extra_state(arrays)
        if "classes" in arrays:
            self.classes = arrays["classes"].tolist()

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Target codes (n, n_bits) in {-1, +1}; new single labels get the next codeword."""
        y = np.asarray(y)
        if y.ndim == 2:  # multi-label indicator rows: column c is class c
            if y.shape[1] > self.order:
                raise ValueError(f"{y.shape[1]} classes exceed the codebook ({self.order}); "
                                 "raise n_classes")
            T = y.astype(np.float32) @ self.codebook[:y.shape[1]]
            return np.where(T >= 0, 1.0, -1.0).astype(np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        rows = np.empty(len(y), np.int64)
        for n, label in enumerate(y.tolist()):
            if label not in index:
                if len(self.classes) >= self.order:
                    raise ValueError(f"more than {self.order} classes; raise n_classes")
                index[label] = len(self.classes)
                self.classes.append(label)
            rows[n] = index[label]
        return self.codebook[rows]

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> HCOH:
        X = self._check_X(X)
        Xn = self._normalised(X)
        T = self.targets(y)
        W = self.W
        for i in range(Xn.shape[0]):
            x = Xn[i]
            h = np.tanh(x @ W)
            W -= self.lr * np.outer(x, (h - T[i]) * (1.0 - h * h))
        self._sync_bias()
        self.version += 1
        return self

    fit = partial_fit
