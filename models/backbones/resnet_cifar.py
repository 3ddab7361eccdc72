"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.

``widths`` lists the *inner* channel count of every basic block (the output of its first
conv), which is what ABCPruner searches on ResNets: the block outputs stay at the stage width
so residual additions never break. Down-sampling shortcuts are 1x1 conv + BN (option B);
the paper's CIFAR nets used zero-padding (option A), a choice that changes no conclusion here
and keeps every layer prunable by the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from vistream.models.backbones.registry import register_model
from vistream.models.weight_init import init_weights


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, inner: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In place: no new block-width tensor per block. Pruning leaves the block-width adds at
        # full cost, so their allocations weigh on a pruned net's speedup (docs/pruning.md).
        out += self.shortcut(x)
        return self.relu(out)


def make_stages(in_ch: int, stage_widths: list[int], blocks_per_stage: int,
                inner_widths: list[int]) -> nn.Sequential:
    """Residual stages of basic blocks; the first block of every stage but the first halves
    the resolution. ``inner_widths`` gives each block's inner width, in order."""
    blocks, k = [], 0
    for s, out_ch in enumerate(stage_widths):
        for b in range(blocks_per_stage):
            stride = 2 if (s > 0 and b == 0) else 1
            blocks.append(BasicBlock(in_ch, inner_widths[k], out_ch, stride))
            in_ch, k = out_ch, k + 1
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3,
                 widths: list[int] | None = None, base: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        stage_widths = [base, 2 * base, 4 * base]
        default = [w for w in stage_widths for _ in range(n)]
        widths = list(widths) if widths is not None else default
        if len(widths) != 3 * n:
            raise ValueError(f"resnet{depth} has {3 * n} blocks, got {len(widths)} widths")
        self.config = {"num_classes": num_classes, "in_chans": in_chans, "widths": widths,
                       "base": base}
        self.stem = nn.Sequential(nn.Conv2d(in_chans, base, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(base), nn.ReLU(inplace=True))
        self.blocks = make_stages(base, stage_widths, n, widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = stage_widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_model
def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(20, **kwargs)


@register_model
def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(56, **kwargs)
