"""Registered 1-bit backbones, so a binary artifact can be rebuilt from its manifest.

``binary_resnet20`` / ``binary_resnet56`` (CIFAR layout) and ``binary_resnet18`` (ImageNet
layout) build a :class:`~models.binary.layers.BinaryResNet` whose binary convs use
``scale="learned"``: alpha is then a parameter, so the alpha a method exported (whatever rule
produced it) loads into the state dict as is, and ``binary_weight()`` of a ±1 weight returns
that weight and ``|alpha|`` — the exported pair. Every builder takes the full
``BinaryResNet.config`` (``depth``/``layout`` default to the name's).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from vistream.models.backbones.registry import register_model
from vistream.models.binary.layers import BinaryConv2d, BinaryResNet

learned_conv = partial(BinaryConv2d, scale="learned")


def _build(default_depth: int, default_layout: str, kwargs: dict[str, Any]) -> BinaryResNet:
    kwargs = {"depth": default_depth, "layout": default_layout, **kwargs}
    return BinaryResNet(conv=learned_conv, **kwargs)


@register_model
def binary_resnet20(**kwargs: Any) -> BinaryResNet:
    return _build(20, "cifar", kwargs)


@register_model
def binary_resnet56(**kwargs: Any) -> BinaryResNet:
    return _build(56, "cifar", kwargs)


@register_model
def binary_resnet18(**kwargs: Any) -> BinaryResNet:
    return _build(18, "imagenet", kwargs)


@register_model
def binary_resnet(**kwargs: Any) -> BinaryResNet:
    """Any depth/layout (``binary_resnet32`` etc. are not registered one by one)."""
    return _build(20, "cifar", kwargs)


def arch_for(config: dict) -> str:
    """The registered name that rebuilds ``config`` (a ``BinaryResNet.config``)."""
    if config.get("layout") == "imagenet":
        return "binary_resnet18"
    return {20: "binary_resnet20", 56: "binary_resnet56"}.get(int(config.get("depth", 0)), "binary_resnet")
