"""FLOPs actually needed per input, and a batch-1 runtime that really skips inactive filters.

FLOPs convention of :mod:`models.flops` (2 x MACs of convs and linear layers). A gated block
whose conv1 keeps ``a1`` of its filters and conv2 ``a2`` needs ``HW1 * 9 * C_in * a1`` MACs in
conv1 and ``HW2 * 9 * a1 * a2`` in conv2 (the inactive conv1 filters are zero inputs of conv2,
so their input channels are skipped too); the stem, the shortcuts and the classifier run dense,
and the controlling modules' two FC layers are *added* (their cost is overhead, counted against
the saving). The gates are known before each conv runs (they read the conv's input), which is
what makes the skip real.

:class:`SparseResNet` runs one image: per block it computes the gates, gathers the active
filters' BN-folded weights (conv1: rows; conv2: rows and the active conv1 channels as input),
runs the two smaller convs and adds conv2's output into the active channels of the shortcut
(index_add). Same result as the masked net up to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.flops import layer_macs


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (conv.weight * scale.view(-1, 1, 1, 1)).detach().clone(), \
        (bn.bias - bn.running_mean * scale).detach().clone()


class FlopsModel:
    """Per-input FLOPs of a decoupled net from its paths (see module doc)."""

    def __init__(self, model: DecoupledResNet, input_size: tuple[int, int] = (32, 32)) -> None:
        in_chans = int(model.backbone_config.get("in_chans", 3))
        found = layer_macs(model, input_size, in_chans)
        self.total_dense_with_ctrl = 2 * sum(m for _, m in found)
        self.controllers = 2 * sum(m for mod, m in found
                                   if isinstance(mod, nn.Linear) and mod is not model.fc)
        self.dense = self.total_dense_with_ctrl - self.controllers   # the plain backbone
        macs = {id(mod): m for mod, m in found}
        self.layers = []  # per block: (dense MACs conv1 per (in x out), conv2 per (in x out))
        for b in model.blocks:
            c1, c2 = b.conv1, b.conv2
            self.layers.append((macs[id(c1)] / (c1.in_channels * c1.out_channels), c1.in_channels,
                                macs[id(c2)] / (c2.in_channels * c2.out_channels)))
        self.gated_dense = 2 * sum(macs[id(b.conv1)] + macs[id(b.conv2)] for b in model.blocks)

    def per_input(self, paths: torch.Tensor, widths: list[int]) -> torch.Tensor:
        """(N,) FLOPs needed per input given (N, total filters) 0/1 paths."""
        counts = [p.sum(1) for p in torch.split(paths, widths, 1)]
        gated = torch.zeros(paths.shape[0], dtype=torch.float64)
        for k, (per1, cin, per2) in enumerate(self.layers):
            a1, a2 = counts[2 * k].double(), counts[2 * k + 1].double()
            gated += 2 * (per1 * cin * a1 + per2 * a1 * a2)
        return self.total_dense_with_ctrl - self.gated_dense + gated


class SparseResNet(nn.Module):
    """Batch-1 inference of a decoupled CIFAR ResNet that skips the inactive filters."""

    def __init__(self, model: DecoupledResNet) -> None:
        super().__init__()
        model = model.eval()
        with torch.no_grad():
            w, b = _fold(model.stem[0], model.stem[1])
            self.stem_w, self.stem_b = w, b
            self.blocks = []
            for blk in model.blocks:
                w1, b1 = _fold(blk.conv1, blk.bn1)
                w2, b2 = _fold(blk.conv2, blk.bn2)
                sc = None
                if isinstance(blk.shortcut, nn.Sequential):
                    sc = (*_fold(blk.shortcut[0], blk.shortcut[1]), blk.shortcut[0].stride)
                self.blocks.append((blk.ctrl1, w1, b1, blk.conv1.stride, blk.ctrl2, w2, b2, sc))
        self.fc = model.fc

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError("SparseResNet runs one image at a time (its filters depend on it)")
        x = F.relu(F.conv2d(x, self.stem_w, self.stem_b, 1, 1))
        for ctrl1, w1, b1, stride, ctrl2, w2, b2, sc in self.blocks:
            idx1 = (ctrl1(x.mean((2, 3)))[0] > 0).nonzero().flatten()
            pooled = x.new_zeros(1, w1.shape[0])
            h = None
            if idx1.numel():
                h = F.relu(F.conv2d(x, w1.index_select(0, idx1), b1.index_select(0, idx1), stride, 1))
                pooled[0, idx1] = h.mean((2, 3))[0]
            idx2 = (ctrl2(pooled)[0] > 0).nonzero().flatten()
            res = x if sc is None else F.conv2d(x, sc[0], sc[1], sc[2])
            if idx2.numel():
                if h is None:  # conv2 reads only zeros: its output is the folded BN shift
                    y = b2.index_select(0, idx2).view(1, -1, 1, 1).expand(1, -1, *res.shape[2:])
                else:
                    w = w2.index_select(0, idx2).index_select(1, idx1)
                    y = F.conv2d(h, w, b2.index_select(0, idx2), 1, 1)
                res = res.index_add(1, idx2, y)
            x = F.relu(res)
        return self.fc(x.mean((2, 3)))
