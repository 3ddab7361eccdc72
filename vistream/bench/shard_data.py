"""The seeded features of the sharded-index benchmarks (the same rows in every process)."""

from __future__ import annotations

import numpy as np


def make_labelled(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same ``n`` rows in every process (seeded clusters in a 16-d latent space) and
    their cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, 16)).astype(np.float32)
    lift = (rng.standard_normal((16, dim)) / 4).astype(np.float32)
    y = rng.integers(0, 100, n)
    U = centres[y] + 0.6 * rng.standard_normal((n, 16), np.float32)
    return U @ lift, y


def make_data(n: int, dim: int, seed: int) -> np.ndarray:
    return make_labelled(n, dim, seed)[0]


def fid(i: int) -> str:
    return f"f{i:09d}"


def key(p: int) -> str:
    return f"features-{p}"
