"""The weight initialisation every zoo family shares (float backbones and 1-bit networks).

A module of its own, outside :mod:`models.backbones`: that package registers the 1-bit zoo on
import, so the 1-bit layers could not import an initialiser from inside it.
"""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan-out), BatchNorm at identity: the init every zoo family uses."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
