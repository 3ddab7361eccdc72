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


def _ctrl_tensors(ctrl) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().clone() for t in (ctrl.fc1.weight, ctrl.fc1.bias, ctrl.fc2.weight,
                                              ctrl.fc2.bias))


def _active(ctrl: tuple[torch.Tensor, ...], pooled: torch.Tensor, record: list | None = None
            ) -> torch.Tensor | None:
    """Indices of the open gates for a (C_in,) pooled input; None when every gate is open.
    ``record``: the 0/1 gate vector is appended to it (the input's calculation path)."""
    w1, b1, w2, b2 = ctrl
    g = torch.addmv(b2, w2, torch.addmv(b1, w1, pooled).relu_())
    on = g > 0
    if record is not None:
        record.append(on)
    return None if bool(on.all()) else on.nonzero().flatten()


class SparseResNet(nn.Module):
    """Batch-1 inference of a decoupled CIFAR ResNet that skips the inactive filters.

    Per block: the controlling modules run as two ``addmv`` on plain tensors; conv1 runs on the
    gathered rows of its BN-folded weight (all rows, no gather, when every gate is open); conv2
    on the gathered rows *and* input channels; its output is added in place into the active
    channels of the shortcut. A block whose conv2 gates are all closed is only its shortcut
    (identity: nothing runs after conv1 and its controller). ``gates=False`` runs the same code
    with every gate open and no controller (the dense net in this runtime: the fair baseline
    for what the skipping saves). ``channels_last`` stores weights and activations NHWC."""

    def __init__(self, model: DecoupledResNet, gates: bool = True, channels_last: bool = False
                 ) -> None:
        super().__init__()
        model = model.eval()
        self.gates = gates
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.fmt = fmt
        with torch.no_grad():
            w, b = _fold(model.stem[0], model.stem[1])
            self.stem_w, self.stem_b = w.contiguous(memory_format=fmt), b
            self.blocks = []
            for blk in model.blocks:
                w1, b1 = _fold(blk.conv1, blk.bn1)
                w2, b2 = _fold(blk.conv2, blk.bn2)
                sc = None
                if isinstance(blk.shortcut, nn.Sequential):
                    sw, sb = _fold(blk.shortcut[0], blk.shortcut[1])
                    sc = (sw.contiguous(memory_format=fmt), sb, blk.shortcut[0].stride)
                self.blocks.append((_ctrl_tensors(blk.ctrl1), w1.contiguous(memory_format=fmt), b1,
                                    blk.conv1.stride, _ctrl_tensors(blk.ctrl2),
                                    w2.contiguous(memory_format=fmt), b2, sc))
        self.fc_w = model.fc.weight.detach().clone()
        self.fc_b = model.fc.bias.detach().clone()
        self._record: list | None = None

    def _gather(self, w: torch.Tensor, b: torch.Tensor, rows, cols=None):
        if rows is not None:
            w, b = w.index_select(0, rows), b.index_select(0, rows)
        if cols is not None:
            w = w.index_select(1, cols)
        if rows is not None or cols is not None:
            w = w.contiguous(memory_format=self.fmt)
        return w, b

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.features(x), self.fc_w, self.fc_b)

    @torch.no_grad()
    def features(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """(1, C) pooled features of one image; ``record`` receives each gated layer's 0/1
        gate vector in order (block 0 conv1, block 0 conv2, ...)."""
        if x.shape[0] != 1:
            raise ValueError("SparseResNet runs one image at a time (its filters depend on it)")
        self._record = record if self.gates else None
        x = F.conv2d(x.contiguous(memory_format=self.fmt), self.stem_w, self.stem_b, 1, 1).relu_()
        for ctrl1, w1, b1, stride, ctrl2, w2, b2, sc in self.blocks:
            x = self._block(x, ctrl1, w1, b1, stride, ctrl2, w2, b2, sc)
        return x.mean((2, 3))

    def _block(self, x, ctrl1, w1, b1, stride, ctrl2, w2, b2, sc):
        idx1 = _active(ctrl1, x.mean((2, 3))[0], self._record) if self.gates else None
        h = None
        if idx1 is None or idx1.numel():
            w, b = self._gather(w1, b1, idx1)
            h = F.conv2d(x, w, b, stride, 1).relu_()
        if self.gates:
            pooled = x.new_zeros(w1.shape[0])
            if h is not None:
                hp = h.mean((2, 3))[0]
                if idx1 is None:
                    pooled = hp
                else:
                    pooled[idx1] = hp
            idx2 = _active(ctrl2, pooled, self._record)
        else:
            idx2 = None
        if idx2 is not None and idx2.numel() == 0:   # conv2 closed: the block is its shortcut
            return x if sc is None else F.conv2d(x, sc[0], sc[1], sc[2]).relu_()
        res = x if sc is None else F.conv2d(x, sc[0], sc[1], sc[2])
        if h is None:  # conv2 reads only zeros: its output is the folded BN shift
            y = b2 if idx2 is None else b2.index_select(0, idx2)
            y = y.view(1, -1, 1, 1).expand(1, -1, *res.shape[2:])
        else:
            w, b = self._gather(w2, b2, idx2, idx1)
            y = F.conv2d(h, w, b, 1, 1)
        # in place: res is the shortcut's fresh output or this runtime's own activation x
        return (res.add_(y) if idx2 is None else res.index_add_(1, idx2, y)).relu_()
