"""Channel surgery shared by ABCPruner and the baselines.

A *channel plan* says, for every tensor of a backbone's state dict, which of its dimensions
follow which prunable layer (``gene``). Pruned models are **physically smaller**: the twin
is rebuilt through the registry with the smaller ``widths`` and the kept slices of every
tensor are copied in (weights inheritance). No masks.

* CIFAR ResNets and ResNet-18: gene k = the inner width of block k (conv1 output, bn1,
  conv2 input); block outputs keep the stage width, so residual additions never break.
* VGG-16: gene i = conv i's output (conv i weight dim 0, bn i, conv i+1 weight dim 1, and
  the classifier's input for the last conv).

:class:`FlopsTable` computes FLOPs (2 x MACs, same convention as :mod:`models.flops`) of any
width vector in microseconds from a table of conv/linear layers recorded once, so searches
can test thousands of candidate structures against a FLOPs budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vistream.models.backbones import create_model


def arch_of(model) -> str:
    return str(model.config["arch"])


def base_widths(model) -> list[int]:
    return [int(w) for w in model.config["widths"]]


def channel_plan(model) -> dict[str, list[tuple[int, int]]]:
    """state-dict name -> [(dim, gene), ...] for tensors whose dims follow a prunable layer."""
    plan: dict[str, list[tuple[int, int]]] = {}
    if hasattr(model, "blocks"):  # CIFAR ResNets and ResNet-18
        for k, _ in enumerate(model.blocks):
            p = f"blocks.{k}."
            plan[p + "conv1.weight"] = [(0, k)]
            for t in ("weight", "bias", "running_mean", "running_var"):
                plan[p + f"bn1.{t}"] = [(0, k)]
            plan[p + "conv2.weight"] = [(1, k)]
        return plan
    if hasattr(model, "features"):  # VGG
        convs = [(i, m) for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
        bns = [i for i, m in enumerate(model.features) if isinstance(m, nn.BatchNorm2d)]
        for g, (i, _) in enumerate(convs):
            plan[f"features.{i}.weight"] = [(0, g)] + ([(1, g - 1)] if g > 0 else [])
            for t in ("weight", "bias", "running_mean", "running_var"):
                plan[f"features.{bns[g]}.{t}"] = [(0, g)]
        plan["fc.weight"] = [(1, len(convs) - 1)]
        return plan
    raise ValueError(f"no channel plan for {type(model).__name__}")


def filter_scores(model) -> list[np.ndarray]:
    """Per gene, the L1 norm of each of its output filters (conv1 of a block / conv i)."""
    plan = channel_plan(model)
    sd = model.state_dict()
    n = len(base_widths(model))
    scores: list[np.ndarray | None] = [None] * n
    for name, dims in plan.items():
        if name.endswith(".weight") and sd[name].dim() == 4 and (0, dims[0][1]) == dims[0]:
            g = dims[0][1]
            scores[g] = sd[name].detach().abs().sum(dim=(1, 2, 3)).cpu().numpy()
    return [s for s in scores]  # type: ignore[misc]


def select_channels(model, widths: list[int], how: str = "l1", seed: int = 0) -> list[np.ndarray]:
    """Indices of the channels each layer keeps: top-L1 filters (``l1``, sorted), a seeded
    random subset (``random``) or the first ones (``first``)."""
    rng = np.random.default_rng(seed)
    scores = filter_scores(model) if how == "l1" else None
    out = []
    for g, (c, w) in enumerate(zip(base_widths(model), widths)):
        if not 1 <= w <= c:
            raise ValueError(f"layer {g}: width {w} outside 1..{c}")
        if how == "l1":
            idx = np.argsort(-scores[g], kind="stable")[:w]
        elif how == "random":
            idx = rng.permutation(c)[:w]
        elif how == "first":
            idx = np.arange(w)
        else:
            raise ValueError(f"unknown channel selection {how!r}")
        out.append(np.sort(idx))
    return out


def prune(model, widths: list[int], how: str = "l1", seed: int = 0):
    """A physically smaller twin of ``model`` with ``widths``, inheriting the kept weights."""
    widths = [int(w) for w in widths]
    keep = select_channels(model, widths, how, seed)
    cfg = {k: v for k, v in model.config.items() if k != "arch"}
    cfg["widths"] = widths
    new = create_model(arch_of(model), **cfg)
    plan = channel_plan(model)
    old_sd = model.state_dict()
    new_sd = {}
    for name, t in old_sd.items():
        t = t.detach().clone()
        for dim, g in plan.get(name, []):
            t = t.index_select(dim, torch.as_tensor(keep[g], dtype=torch.long, device=t.device))
        new_sd[name] = t
    new.load_state_dict(new_sd, strict=True)
    return new.train(model.training)


@dataclass
class _Layer:
    kind: str            # conv | linear
    spatial: int         # output H*W (1 for linear)
    k: int               # kernel area / groups factor
    cin: int
    cout: int
    gin: int | None      # gene of the input channels (None: fixed)
    gout: int | None     # gene of the output channels


class FlopsTable:
    """FLOPs of a width vector without building the model (exact for these backbones)."""

    def __init__(self, model, input_size: tuple[int, int] = (32, 32)) -> None:
        plan = channel_plan(model)
        self.base = base_widths(model)
        self.layers: list[_Layer] = []
        names = {m: n for n, m in model.named_modules()}
        hooks = []

        def hook(m, inp, out):
            n = names[m]
            dims = dict((d, g) for d, g in plan.get(n + ".weight", []))
            if isinstance(m, nn.Conv2d):
                self.layers.append(_Layer("conv", out.shape[2] * out.shape[3],
                                          m.kernel_size[0] * m.kernel_size[1] // 1,
                                          m.in_channels // m.groups, m.out_channels,
                                          dims.get(1), dims.get(0)))
            else:
                self.layers.append(_Layer("linear", 1, 1, m.in_features, m.out_features,
                                          dims.get(1), dims.get(0)))

        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, int(model.config.get("in_chans", 3)), *input_size))
        finally:
            for h in hooks:
                h.remove()
            model.train(was)
        self.base_flops = self(self.base)

    def __call__(self, widths) -> int:
        total = 0
        for L in self.layers:
            cin = widths[L.gin] if L.gin is not None else L.cin
            cout = widths[L.gout] if L.gout is not None else L.cout
            total += 2 * L.spatial * L.k * cin * cout
        return int(total)

    def ratio(self, widths) -> float:
        return self(widths) / self.base_flops


def align_width(width: int, full: int, multiple: int = 1) -> int:
    """``width`` rounded to the nearest multiple of ``multiple`` (at least one multiple, at
    most ``full``). CPU convolution kernels work in SIMD-wide channel groups (8 float32 lanes
    with AVX2): a layer of 9 or 17 channels costs as much as one of 16 or 24, so widths off
    the grid buy FLOPs but not time. ``multiple=1`` leaves the width alone."""
    if multiple <= 1:
        return max(1, int(width))
    return min(full, max(multiple, multiple * round(width / multiple)))


def genes_to_widths(genes, base: list[int], max_gene: int = 9, multiple: int = 1) -> list[int]:
    """ABCPruner's encoding: gene g in 1..M keeps int(C * g / 10) channels (at least 1),
    then aligned to ``multiple`` channels (:func:`align_width`)."""
    return [align_width(int(c * int(g) / 10), c, multiple) for g, c in zip(genes, base)]
