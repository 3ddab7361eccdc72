"""What every hash model shares: linear projection, sign, bit packing, versions, persistence.

A model maps float features ``X`` (n, d) to ``n_bits`` binary codes. Codes are packed into
uint8 rows (``n_bits / 8`` bytes, most significant bit first, as ``np.packbits``), which is
what FAISS binary indexes take. ``version`` increases whenever the hash functions change, so
an index knows when its stored codes are stale and must be re-encoded.

Persistence is ``.npz`` without pickle: arrays plus a JSON header of hyper-parameters.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vistream.models.registry import Registry


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Boolean (n, n_bits) -> packed uint8 (n, n_bits // 8)."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def unpack_bits(codes: np.ndarray, n_bits: int) -> np.ndarray:
    return np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=n_bits).astype(bool)


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Exact Hamming distances (n_q, n_db) between packed codes (reference implementation)."""
    table = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1).astype(np.int32)
    q = np.asarray(query_codes, np.uint8)
    d = np.asarray(db_codes, np.uint8)
    out = np.zeros((q.shape[0], d.shape[0]), np.int32)
    for b in range(q.shape[1]):
        out += table[np.bitwise_xor(q[:, b:b + 1], d[None, :, b])]
    return out


class HashModel:
    """Base of linear hash models ``b = sign(x W + c)``; subclasses learn ``W`` (and ``c``)."""

    name: ClassVar[str] = "hash"
    #: every concrete model by its ``name`` (a :class:`models.registry.Registry`): a subclass
    #: that sets ``name`` registers itself when it is defined
    registry: ClassVar[Registry[type[HashModel]]] = Registry("hash model")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            HashModel.registry.register(cls, name=cls.name)

    def __init__(self, n_bits: int = 64, seed: int = 0) -> None:
        if n_bits <= 0 or n_bits % 8:
            raise ValueError(f"n_bits must be a positive multiple of 8, got {n_bits}")
        self.n_bits = n_bits
        self.seed = seed
        self.W: np.ndarray | None = None  # (d, n_bits)
        self.bias: np.ndarray | None = None  # (n_bits,) or None
        self.version = 0

    # -- to override ---------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, saved with the model."""
        return {"n_bits": self.n_bits, "seed": self.seed}

    def extra_state(self) -> dict[str, np.ndarray]:
        """Arrays besides W/bias a subclass needs to resume learning after a load."""
        return {}

    def load_extra_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    # -- shared -------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return None if self.W is None else self.W.shape[0]

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"features must be a 2-D array (n, d), got shape {X.shape}")
        if self.W is not None and X.shape[1] != self.W.shape[0]:
            raise ValueError(f"features have {X.shape[1]} dims, the model expects {self.W.shape[0]}")
        return X

    def project(self, X: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError(f"{self.name} has not been fitted yet")
        P = self._check_X(X) @ self.W
        return P + self.bias if self.bias is not None else P

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Packed codes, uint8 (n, n_bits // 8)."""
        return pack_bits(self.project(X) > 0)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "wb") as f:
            self._write(f)
        return path

    def to_bytes(self) -> bytes:
        """The model as :meth:`save` writes it, in memory (e.g. a record of a model topic)."""
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> HashModel:
        """A model from :meth:`to_bytes`."""
        return HashModel.load(io.BytesIO(data))  # type: ignore[arg-type]

    def _write(self, f: Any) -> None:
        arrays = {f"extra_{k}": v for k, v in self.extra_state().items()}
        if self.W is not None:
            arrays["W"] = self.W
        if self.bias is not None:
            arrays["bias"] = self.bias
        header = {"model": self.name, "version": self.version, "hparams": self.hparams()}
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez(f, **arrays)

    @staticmethod
    def load(path: str | Path) -> HashModel:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header["model"] not in HashModel.registry:
                raise ValueError(f"{path}: unknown hash model {header['model']!r}")
            cls = HashModel.registry.get(header["model"])
            model = cls(**header["hparams"])
            model.W = z["W"].copy() if "W" in z else None
            model.bias = z["bias"].copy() if "bias" in z else None
            model.version = int(header["version"])
            model.load_extra_state({k[6:]: z[k].copy() for k in z.files if k.startswith("extra_")})
        return model
