"""ResNet-18 for larger inputs (ImageNet layout: 7x7/2 stem, max-pool, 4 stages of 2 basic
blocks at 64/128/256/512 channels, stride 32 overall). ``widths`` gives the inner width of
each of the 8 blocks, as for the CIFAR ResNets."""

from __future__ import annotations

import torch
from torch import nn

from vistream.models.backbones.registry import register_model
from vistream.models.backbones.resnet_cifar import make_stages
from vistream.models.weight_init import init_weights


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3,
                 widths: list[int] | None = None, base: int = 64) -> None:
        super().__init__()
        stage_widths = [base, 2 * base, 4 * base, 8 * base]
        widths = list(widths) if widths is not None else [w for w in stage_widths for _ in (0, 1)]
        if len(widths) != 8:
            raise ValueError(f"resnet18 has 8 blocks, got {len(widths)} widths")
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "widths": widths,
                       "base": base}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, base, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.blocks = make_stages(base, stage_widths, 2, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = stage_widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model
def resnet18(**kwargs) -> ResNet18:
    return ResNet18(**kwargs)
