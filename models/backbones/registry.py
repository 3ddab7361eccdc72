"""The backbone registry: a name maps to a function that builds a model from keyword arguments.

A thin layer over :class:`models.registry.Registry` that keeps timm's function names
(``register_model``, ``list_models``, ``create_model``) and records the build arguments in
``model.config`` so an artifact or a checkpoint can rebuild the model exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vistream.models.registry import Registry

MODELS: Registry[Callable[..., Any]] = Registry("model")


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: register ``fn`` under its own name (``@register_model def resnet20(...)``)."""
    return MODELS.register(fn)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def model_entrypoint(name: str) -> Callable[..., Any]:
    return MODELS.get(name)


def create_model(name: str, **kwargs: Any):
    """Build a registered model; the kwargs are recorded in ``model.config`` with its name."""
    model = MODELS.create(name, **kwargs)
    model.config = {"arch": name, **model.config}
    return model
