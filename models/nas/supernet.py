"""The search network: DARTS cells of PC-DARTS partial-channel mixed operations, 1-bit ops.

* **Mixed operation** (:class:`PartialMixedOp`, PC-DARTS): only ``C / k`` channels of the edge's
  input go through the ``softmax(alpha)``-weighted sum of the *remaining* operations; the other
  channels bypass it (max-pooled on a strided edge), the two parts are concatenated and
  channel-shuffled with ``k`` groups.
* **Edge normalisation** (PC-DARTS): each intermediate node weighs its incoming edges by
  ``softmax(beta)`` over those edges.
* **Operation space** (BNAS): ``mask`` (normal/reduce x edge x op, bool) says which operations
  are still in the space; a dropped operation is neither computed nor weighted, so each round
  of reduction makes the supernet cheaper (:meth:`SuperNet.forward_macs`).
* **Sampled sub-networks**: ``forward(x, choice=...)`` runs one operation per edge (the
  sampled net of the performance-based reduction, on the shared weights).

The stem and classifier are float; every conv in the operations and in the cells'
preprocessing is 1-bit (:mod:`models.nas.ops`). BatchNorms in the operations have no affine
parameters during the search (as in DARTS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.flops import layer_macs
from vistream.models.nas.network import reduction_layers
from vistream.models.nas.ops import PRIMITIVES, float_stem, make_op, preprocess


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def num_edges(steps: int) -> int:
    return sum(i + 2 for i in range(steps))


class PartialMixedOp(nn.Module):
    """Every operation of :data:`PRIMITIVES` on ``C // k`` channels of the edge's input."""

    def __init__(self, c: int, stride: int, k: int = 4) -> None:
        super().__init__()
        if c % k:
            raise ValueError(f"partial channels: C={c} is not a multiple of k={k}")
        self.k, self.stride = k, stride
        self.ops = nn.ModuleList(make_op(p, c // k, stride, affine=False) for p in PRIMITIVES)
        self.bypass_pool = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, active: list[int]) -> torch.Tensor:
        """``weights``: one per operation (None: the single ``active`` operation, weight 1)."""
        part = x.shape[1] // self.k
        xa, xb = x[:, :part], x[:, part:]
        if weights is None:
            mixed = self.ops[active[0]](xa)
        else:
            mixed = sum(weights[i] * self.ops[i](xa) for i in active)
        out = torch.cat([mixed, self.bypass_pool(xb)], dim=1)
        return channel_shuffle(out, self.k)


class SearchCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, k: int) -> None:
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.pre0 = preprocess(c_pp, c, reduction_prev, affine=False)
        self.pre1 = preprocess(c_p, c, False, affine=False)
        self.edges = nn.ModuleList()
        for i in range(steps):
            for j in range(i + 2):
                self.edges.append(PartialMixedOp(c, 2 if reduction and j < 2 else 1, k))

    def forward(self, s0, s1, weights, betas, active, choice):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for i in range(self.steps):
            n_in = i + 2
            bw = F.softmax(betas[offset:offset + n_in], dim=-1)
            s = 0
            for j, h in enumerate(states):
                e = offset + j
                if choice is not None:
                    out = self.edges[e](h, None, [int(choice[e])])
                else:
                    out = self.edges[e](h, weights[e], active[e])
                s = s + bw[j] * out
            offset += n_in
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)


class SuperNet(nn.Module):
    """The BNAS search space: ``layers`` cells (reductions at 1/3 and 2/3), ``steps`` nodes each.

    ``alphas`` (2 x edges x K: normal, reduce) weigh the operations, ``betas`` (2 x edges) the
    edges; ``mask`` holds the operations still in the space.
    """

    def __init__(self, C: int = 16, layers: int = 3, steps: int = 4, multiplier: int | None = None,
                 num_classes: int = 10, in_chans: int = 3, stem_multiplier: int = 3, k: int = 4) -> None:
        super().__init__()
        multiplier = steps if multiplier is None else multiplier  # concat of the intermediate nodes
        self.steps, self.multiplier, self.k = steps, multiplier, k
        self.config = {"C": C, "layers": layers, "steps": steps, "multiplier": multiplier,
                       "num_classes": num_classes, "in_chans": in_chans,
                       "stem_multiplier": stem_multiplier, "k": k}
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
            self.cells.append(SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction,
                                         reduction_prev, k))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_p, num_classes)
        e = num_edges(steps)
        self.alphas = nn.Parameter(1e-3 * torch.randn(2, e, len(PRIMITIVES)))
        self.betas = nn.Parameter(1e-3 * torch.randn(2, e))
        self.register_buffer("mask", torch.ones(2, e, len(PRIMITIVES), dtype=torch.bool))

    @property
    def n_edges(self) -> int:
        return self.alphas.shape[1]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas, self.betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def op_weights(self) -> torch.Tensor:
        """softmax(alpha) over the remaining operations of each edge (dropped ones: 0)."""
        return F.softmax(self.alphas.masked_fill(~self.mask, float("-inf")), dim=-1)

    def active(self) -> list[list[list[int]]]:
        return [[torch.nonzero(self.mask[t, e]).flatten().tolist() for e in range(self.n_edges)]
                for t in range(2)]

    def forward(self, x: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``choice`` (2 x edges, op indices) runs that one operation per edge instead."""
        weights, active = self.op_weights(), self.active()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = 1 if cell.reduction else 0
            s0, s1 = s1, cell(s0, s1, weights[t], self.betas[t], active[t],
                              None if choice is None else choice[t])
        return self.fc(self.pool(s1).flatten(1))

    def forward_macs(self, input_size: tuple[int, int] = (32, 32)) -> int:
        """Multiply-accumulates of one image's forward pass over the remaining space (binary and
        float convs and the classifier)."""
        return int(sum(m for _, m in layer_macs(self, input_size, self.config["in_chans"])))
