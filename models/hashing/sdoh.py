"""SDOH: Similarity Distribution based Online Hashing (M. Lin, R. Ji et al., arXiv 1905.13382).

What is implemented (after the method notes in ``shared/research/METHODS.md``, themselves taken
from a co-author's unofficial MATLAB code on the MIHash online-hashing framework):

* Hash function: a linear projection without a learned bias, ``b(x) = sign(x W)``, ``W`` d x b,
  random Gaussian init with every column scaled to unit norm.
* For every labelled chunk of ``n`` points, a *target* distribution ``P`` over pairs:
  single-label ``S_ij = [y_i == y_j]``; multi-label ``S_ij`` = cosine similarity of the
  L2-normalised label vectors. ``P_ij = N(S_ij; 1, sigma)`` (Gaussian pdf), diagonal 0,
  normalised to sum 1. The Gaussian turns the very imbalanced 0/1 similarities into a smooth
  distribution (sigma 0.5: a similar pair weighs 0.798, a dissimilar one 0.108).
* A *code* distribution ``Q`` over relaxed codes ``H = tanh(X W)``:
  ``dist_ij = 0.25 ||h_i - h_j||^2`` (the Hamming distance for +-1 codes), divided by ``pos``
  for similar pairs and by ``neg`` for dissimilar ones, scaled Student-t kernel
  ``num_ij = 1 / (1 + dist_ij)``, diagonal 0, ``Q = num / sum(num)``.
* Objective ``KL(P || Q)`` minimised by plain gradient descent, t-SNE style gradient:
  ``L = (P - Q) o num``; ``grad_H = (diag(rowsum L) - L) H``;
  ``grad_W = X^T (grad_H o (1 - H^2))``; ``W -= lr grad_W``. Per chunk at most ``max_iter``
  steps; it stops as soon as a step improves the cost by less than ``threshold`` (or raises it)
  and keeps the best ``W`` seen. ``last_costs`` holds the KL cost of every iterate of the last
  chunk (index 0 = the cost before any step on that chunk).
* Online use: ``partial_fit(X, y)`` is one update per chunk; a batch larger than
  ``chunk_size`` is split into ``ceil(n / chunk_size)`` near-equal chunks, each one update.
  ``version`` increases by one per chunk.

What the notes leave unsaid, and what was chosen here:

* Input normalisation. The MIHash framework the reference code runs in centres the features
  (dataset mean) and scales every row to unit length before any method sees them. A stream
  has no dataset mean, so this model keeps a *running mean* of every point it has trained on
  (``mean``, ``n_seen``, saved with the model). Training uses ``(x - mean) / ||x - mean||``.
  Codes are ``sign((x - mean) W)``: the positive row scaling never changes a sign, so encoding
  needs no norm, and the centring is stored as the base class's ``bias = -mean W`` (a fixed
  data statistic, not a learned parameter), so ``HashModel.encode`` and anything that reads
  ``W``/``bias`` reproduce the codes exactly. ``normalize=False`` turns all of this off
  (raw features, no bias), as in the paper's formulation.
* With ``pos``/``neg`` != 1 the gradient is taken exactly: the pair's term in ``L`` is also
  divided by its scale (``L = (P - Q) o num / scale``). With the default ``pos = neg = 1`` this
  is the gradient of the notes.
* Multi-label: a pair counts as "similar" for ``pos``/``neg`` when its cosine similarity is > 0.
* A chunk with fewer than two points carries no pairs: it only updates the running mean.
* Cost: ``KL = sum P log P - sum P log num + log sum num`` (off-diagonal entries); the n x n
  work is float32, in place (about 20 ms an iteration for n = 1,500 on one core).
* Defaults are the notes' (lr 0.05, sigma 0.5, threshold 1e-4, chunk 2000, 64 bits). With
  unit-length inputs and P summing to 1 over n^2 pairs the gradient is tiny, and lr 0.05 barely
  moves ``W`` (on digits it stays at LSH's level). The evaluation uses lr 128 (<= 32 bits) or
  32 (64 bits) with sigma 0.5, chosen on a validation split; see ``docs/hashing.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vistream.models.hashing.baselines import CenteredLinear, center_l2, update_running_mean


def label_similarity(y: np.ndarray) -> np.ndarray:
    """S (n, n): ``[y_i == y_j]`` for 1-D labels, cosine of label vectors for 2-D (multi-label)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return (y[:, None] == y[None, :]).astype(np.float32)
    if y.ndim != 2:
        raise ValueError(f"labels must be 1-D (single-label) or 2-D (multi-label), got {y.shape}")
    Y = y.astype(np.float32)
    Y = Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
    return Y @ Y.T


class SDOH(CenteredLinear):
    """Similarity Distribution based Online Hashing (see the module docstring)."""

    name = "sdoh"

    def __init__(self, n_bits: int = 64, seed: int = 0, lr: float = 0.05, sigma: float = 0.5,
                 threshold: float = 1e-4, max_iter: int = 1000, chunk_size: int = 2000,
                 pos: float = 1.0, neg: float = 1.0, normalize: bool = True) -> None:
        super().__init__(n_bits=n_bits, seed=seed)
        if lr <= 0 or sigma <= 0 or threshold < 0 or max_iter < 0 or chunk_size < 2:
            raise ValueError("need lr > 0, sigma > 0, threshold >= 0, max_iter >= 0, chunk_size >= 2")
        if pos <= 0 or neg <= 0:
            raise ValueError("pos and neg must be positive")
        self.lr = float(lr)
        self.sigma = float(sigma)
        self.threshold = float(threshold)
        self.max_iter = int(max_iter)
        self.chunk_size = int(chunk_size)
        self.pos = float(pos)
        self.neg = float(neg)
        self.normalize = bool(normalize)
        self.last_costs: list[float] = []

    # -- persistence ---------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "seed": self.seed, "lr": self.lr, "sigma": self.sigma,
                "threshold": self.threshold, "max_iter": self.max_iter,
                "chunk_size": self.chunk_size, "pos": self.pos, "neg": self.neg,
                "normalize": self.normalize}

    # -- learning ------------------------------------------------------------------------
    # The running mean (saved with the model) and W's init come from CenteredLinear.

    def target_distribution(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """P (n, n) and the per-pair distance scale (None when pos = neg = 1)."""
        S = label_similarity(y)
        P = np.exp(-((S - 1.0) ** 2) / (2 * self.sigma ** 2)) / (self.sigma * math.sqrt(2 * math.pi))
        P = P.astype(np.float32)
        np.fill_diagonal(P, 0.0)
        P /= P.sum(dtype=np.float64)
        scale = None
        if self.pos != 1.0 or self.neg != 1.0:
            scale = np.where(S > 0, self.pos, self.neg).astype(np.float32)
        return P, scale

    @staticmethod
    def cost_and_grad(X: np.ndarray, P: np.ndarray, W: np.ndarray, scale: np.ndarray | None = None,
                      PlogP: float | None = None, grad: bool = True
                      ) -> tuple[float, np.ndarray | None]:
        """KL(P || Q) at ``W`` and its gradient w.r.t. ``W`` (``X`` already normalised).

        The n x n work runs in place on two float32 buffers (this loop is SDOH's whole cost).
        """
        H = np.tanh(X @ W)
        sq = 0.25 * np.einsum("ij,ij->i", H, H)
        num = H @ H.T
        num *= -0.5
        num += sq[:, None]
        num += sq[None, :]  # dist = 0.25 ||h_i - h_j||^2
        np.maximum(num, 0.0, out=num)  # rounding can make the diagonal slightly negative
        if scale is not None:
            num /= scale
        num += 1.0
        np.reciprocal(num, out=num)  # Student-t kernel; the diagonal is 1 here, so log 0 = 0
        buf = np.log(num)
        buf *= P
        p_log_num = float(buf.sum())  # float32 pairwise summation
        np.fill_diagonal(num, 0.0)
        Z = float(num.sum())
        if PlogP is None:
            nz = P > 0
            PlogP = float(np.sum(P[nz] * np.log(P[nz]), dtype=np.float64))
        cost = PlogP - p_log_num + math.log(Z)
        if not grad:
            return cost, None
        np.multiply(num, np.float32(1.0 / Z), out=buf)  # Q
        np.subtract(P, buf, out=buf)
        buf *= num  # L = (P - Q) o num
        if scale is not None:
            buf /= scale
        grad_H = buf.sum(axis=1)[:, None] * H - buf @ H
        grad_W = X.T @ (grad_H * (1.0 - H * H))
        return cost, grad_W.astype(np.float32)

    def _fit_chunk(self, X: np.ndarray, y: np.ndarray) -> None:
        P, scale = self.target_distribution(y)
        nz = P > 0
        PlogP = float(np.sum(P[nz] * np.log(P[nz]), dtype=np.float64))
        W = self.W
        best_W, best_cost = W, math.inf
        costs: list[float] = []
        for it in range(self.max_iter + 1):
            cost, g = self.cost_and_grad(X, P, W, scale, PlogP, grad=it < self.max_iter)
            costs.append(cost)
            if cost >= best_cost:  # the step raised the cost: stop, keep the best W
                break
            gain = best_cost - cost
            best_W, best_cost = W, cost
            if (it > 0 and gain < self.threshold) or g is None:
                break
            W = W - self.lr * g
        self.W = best_W
        self.last_costs = costs

    def partial_fit(self, X: np.ndarray, y: np.ndarray) -> SDOH:
        """One SDOH update per chunk of at most ``chunk_size`` labelled points."""
        X = self._check_X(X)
        y = np.asarray(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"{X.shape[0]} points but {y.shape[0]} labels")
        if self.W is None:
            self._init_W(X.shape[1])
        n_chunks = max(1, math.ceil(X.shape[0] / self.chunk_size))
        for idx in np.array_split(np.arange(X.shape[0]), n_chunks):
            Xc, yc = X[idx], y[idx]
            if self.normalize:
                self.mean, self.n_seen = update_running_mean(self.mean, self.n_seen, Xc)
                Xn = center_l2(Xc, self.mean)
            else:
                self.n_seen += len(idx)
                Xn = Xc
            if len(idx) >= 2:
                self._fit_chunk(Xn, yc)
            if self.normalize:
                self.bias = -(self.mean @ self.W).astype(np.float32)
            self.version += 1
        return self

    fit = partial_fit
