"""The network a genotype describes (DARTS's evaluation network, 1-bit).

Full-precision stem (3x3 conv + BN) and classifier (global pooling + linear); ``layers`` cells
with reduction cells at 1/3 and 2/3 of the depth; in each cell the two inputs are
preprocessed by binarized 1x1 convs (FactorizedReduce after a reduction), each intermediate
node is the sum of its two genotype operations, the output the concatenation of the
``concat`` nodes. No auxiliary head and no drop-path: at the few epochs this machine trains,
both only slow the start (the released evaluation code trains 600 epochs with both).

``config`` holds what rebuilds the net (the genotype as a dict, ``C``, ``layers``, classes,
input channels, ``scale``) and is what an artifact's manifest records; :func:`bnas_network`
rebuilds it from that config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vistream.models.binary.layers import BinaryConv2d
from vistream.models.nas.genotype import Genotype
from vistream.models.nas.ops import float_stem, make_op, preprocess
from vistream.models.weight_init import init_weights


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Indices of the reduction cells: 1/3 and 2/3 of the depth (DARTS)."""
    if layers < 3:
        return ()
    return tuple(sorted({layers // 3, 2 * layers // 3}))


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, scale: str = "mean_abs") -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0 = preprocess(c_pp, c, reduction_prev, scale=scale)
        self.pre1 = preprocess(c_p, c, False, scale=scale)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.indices = [j for _, j in pairs]
        self.ops = nn.ModuleList(make_op(op, c, 2 if reduction and j < 2 else 1, True, scale)
                                 for op, j in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(len(self.ops) // 2):
            a, b = 2 * i, 2 * i + 1
            states.append(self.ops[a](states[self.indices[a]]) + self.ops[b](states[self.indices[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class BnasNetwork(nn.Module):
    """1-bit network of a searched genotype; ``forward_features`` gives pooled features,
    ``stage_features`` the output of every cell (what the 1-bit training loop reads)."""

    def __init__(self, genotype: Genotype | dict, C: int = 16, layers: int = 5, num_classes: int = 10,
                 in_chans: int = 3, stem_multiplier: int = 3, scale: str = "mean_abs") -> None:
        super().__init__()
        g = genotype if isinstance(genotype, Genotype) else Genotype.from_dict(genotype)
        self.genotype = g
        self.config: dict[str, Any] = {"genotype": {k: v for k, v in g.to_dict().items() if k != "meta"},
                                       "C": C, "layers": layers, "num_classes": num_classes,
                                       "in_chans": in_chans, "stem_multiplier": stem_multiplier}
        c_curr = stem_multiplier * C
        self.stem = float_stem(in_chans, c_curr)
        c_pp, c_p, c_curr = c_curr, c_curr, C
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c_curr *= 2
            cell = EvalCell(g, c_pp, c_p, c_curr, reduction, reduction_prev, scale)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_p
        self.fc = nn.Linear(c_p, num_classes)
        init_weights(self)
        for m in self.modules():  # learned scales start at XNOR's analytic value
            if isinstance(m, BinaryConv2d) and m.scale_mode == "learned":
                m.alpha.data.copy_(m.weight.detach().abs().mean(dim=(1, 2, 3)))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        s0 = s1 = self.stem(x)
        feats = []
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
            feats.append(s1)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage_features(x)[-1]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def bnas_network(**config: Any) -> BnasNetwork:
    """Rebuild a :class:`BnasNetwork` from its ``config`` (learned-scale convs: the alpha the
    training exported loads as a parameter, as :mod:`models.binary.zoo` does for the ResNets)."""
    config = {**config, "scale": "learned"}
    return BnasNetwork(**config)
