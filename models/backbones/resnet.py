"""ResNet-18 and ResNet-34 for larger inputs (ImageNet layout: 7x7/2 stem, max-pool, 4 stages
of 2/2/2/2 or 3/4/6/3 basic blocks at 64/128/256/512 channels, stride 32 overall). ``widths``
gives the inner width of each block (8 or 16), as for the CIFAR ResNets. The layer order is
torchvision's, so its weights map one to one (:mod:`models.importer`)."""

from __future__ import annotations

import torch
from torch import nn

from vistream.models.backbones.registry import register_model
from vistream.models.backbones.resnet_cifar import BasicBlock
from vistream.models.weight_init import init_weights


#: basic blocks per stage of each registered depth
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ResNet18(nn.Module):
    """ResNet-18 (``depth=18``) or ResNet-34 (``depth=34``), ImageNet layout."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3,
                 widths: list[int] | None = None, base: int = 64, depth: int = 18) -> None:
        super().__init__()
        counts = STAGE_BLOCKS[depth]
        stage_widths = [base, 2 * base, 4 * base, 8 * base]
        widths = list(widths) if widths is not None else [
            w for w, n in zip(stage_widths, counts) for _ in range(n)]
        if len(widths) != sum(counts):
            raise ValueError(f"resnet{depth} has {sum(counts)} blocks, got {len(widths)} widths")
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "widths": widths,
                       "base": base}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, base, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, in_ch = [], base
        for s, (out_ch, n) in enumerate(zip(stage_widths, counts)):
            for b in range(n):
                blocks.append(BasicBlock(in_ch, widths[len(blocks)], out_ch, 2 if s and not b else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
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


@register_model
def resnet34(**kwargs) -> ResNet18:
    return ResNet18(depth=34, **kwargs)
