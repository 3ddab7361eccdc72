"""Baselines for SDOH: data-independent LSH (more in this module as they land)."""

from __future__ import annotations

import numpy as np

from models.hashing.base import HashModel


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
