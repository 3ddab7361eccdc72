"""Backbone zoo with a timm-style registry.

    from vistream.models.backbones import create_model, list_models
    net = create_model("resnet56", num_classes=10)
    feats = net.forward_features(x)   # (n, net.num_features) pooled features
    logits = net(x)

Every model takes a channel configuration (``widths``) so that pruning methods can rebuild a
physically smaller twin of the same architecture, and records it in ``net.config`` so an
artifact can rebuild the model exactly.
"""

from __future__ import annotations

# Importing the families registers their models; the 1-bit twins (binary_resnet20/56/18)
# share the registry so binary artifacts rebuild too.
from vistream.models.backbones import onnx_net, resnet, resnet_cifar, vgg  # noqa: F401
from vistream.models.backbones.registry import (
    MODELS,
    create_model,
    list_models,
    model_entrypoint,
    register_model,
)
from vistream.models.binary import zoo  # noqa: F401

__all__ = ["MODELS", "create_model", "list_models", "model_entrypoint", "register_model"]
