"""VGG-16 for 32x32 inputs (the CIFAR variant used by ABCPruner and network-slimming work):
13 conv3x3+BN+ReLU layers with max-pooling after blocks 2, 4, 7, 10, 13, then global pooling
and one linear classifier. ``widths`` gives the 13 conv widths (every conv is prunable)."""

from __future__ import annotations

import torch
from torch import nn

from vistream.models.backbones.registry import register_model
from vistream.models.weight_init import init_weights

VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
_POOL_AFTER = {1, 3, 6, 9, 12}


class VGG(nn.Module):
    def __init__(self, widths: list[int] | None = None, num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        widths = list(widths) if widths is not None else list(VGG16_WIDTHS)
        if len(widths) != 13:
            raise ValueError(f"vgg16 has 13 conv layers, got {len(widths)} widths")
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "widths": widths}
        layers: list[nn.Module] = []
        in_ch = in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(in_ch, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            if i in _POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            in_ch = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model
def vgg16(**kwargs) -> VGG:
    return VGG(**kwargs)
