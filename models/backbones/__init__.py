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

from vistream.models.backbones.registry import create_model, list_models, model_entrypoint, register_model

# Importing the families registers their models.
from vistream.models.backbones import resnet_cifar, vgg, resnet  # noqa: E402,F401,I001
# The 1-bit twins (binary_resnet20/56/18) share the registry so binary artifacts rebuild too.
from vistream.models.binary import zoo  # noqa: E402,F401,I001

__all__ = ["create_model", "list_models", "model_entrypoint", "register_model"]
