"""The registry: a name maps to a function that builds a model from keyword arguments."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

_MODELS: dict[str, Callable[..., Any]] = {}


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register ``fn`` under its own name (``@register_model def resnet20(...)``)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entrypoint(name: str) -> Callable[..., Any]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs: Any):
    """Build a registered model; the kwargs are recorded in ``model.config`` with its name."""
    model = model_entrypoint(name)(**kwargs)
    model.config = {"arch": name, **model.config}
    return model
