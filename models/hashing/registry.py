"""Hash models by name: the helpers over :attr:`HashModel.registry <models.hashing.base.HashModel>`.

A model class registers itself when its module is imported (``HashModel.__init_subclass__``);
these helpers import the modules that define the built-in models first, so a name resolves no
matter which of them the caller happened to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Imported for their side effect: defining the classes registers sdoh, lsh, itq, ...
import vistream.models.hashing.baselines  # noqa: F401
import vistream.models.hashing.sdoh  # noqa: F401
from vistream.models.hashing.base import HashModel


def hash_model_names() -> list[str]:
    """Names of every registered hash model, sorted."""
    return HashModel.registry.list()


def make_hash_model(name: str, n_bits: int = 64, seed: int = 0, **params: Any) -> HashModel:
    """A fresh hash model from the registry (``sdoh``, ``lsh``, ...); an unknown name raises
    the registry's ValueError, which lists the known ones."""
    return HashModel.registry.create(name, n_bits=n_bits, seed=seed, **params)


def load_hash_model(path: str | Path) -> HashModel:
    """A model saved by :meth:`HashModel.save`, whichever registered class it is."""
    return HashModel.load(path)
