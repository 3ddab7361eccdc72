"""XNOR-Net baseline (Rastegari et al., ECCV 2016) and the method interface every 1-bit method uses.

Implemented: binary weights ``sign(W)`` scaled per output channel by ``alpha = mean |W|`` (the
analytic XNOR-Net scale, gradient flowing into W through it), binary activations, on the
shared Bi-Real layout of :mod:`models.binary.layers` (real-valued shortcut around every binary
conv, float stem, float 1x1 down-sampling shortcuts and classifier). XNOR-Net's original
activation scaling map ``K`` is not used: every paper of the family (and the runtime contract)
drops it, and BatchNorm after each binary conv absorbs a per-channel scale anyway.

:class:`XnorMethod` is also the base class of CBCN, BONN, RBCN and GBCN: a method builds the
network (its conv factory), may add losses computed from the stage features / pooled features /
logits, may keep extra trainable state (centres, discriminators) and may hook into the end of a
step or an epoch. :mod:`models.binary.train` drives these hooks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.binary.layers import BinaryConv2d, BinaryResNet, ConvFactory
from vistream.models.binary.methods import register_method


class XnorConv2d(BinaryConv2d):
    """XNOR-Net conv: ``conv(sign(x), sign(W)) * mean|W|`` per output channel (the layers default)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, scale="mean_abs")


class Forward:
    """One forward pass of a :class:`BinaryResNet`, keeping what the method losses need."""

    def __init__(self, model: BinaryResNet, x: torch.Tensor) -> None:
        self.stages = model.stage_features(x)
        self.features = model.pool(self.stages[-1]).flatten(1)  # the FC input
        self.logits = model.fc(self.features)


@register_method
class XnorMethod:
    """The XNOR baseline; subclasses override the hooks they need.

    ``ablate`` removes the method's own ingredient (see :attr:`ablation`) for the ablation row.
    """

    name = "xnor"
    ablation = ""  # what --no-<ingredient> removes (empty: nothing to ablate)
    ablation_flag = ""

    def __init__(self, ablate: bool = False, **options: Any) -> None:
        self.ablate = ablate
        self.options = dict(options)
        self.epoch = 0
        self.epochs = 1

    # ----------------------------------------------------------------- model
    def conv_factory(self) -> ConvFactory:
        return XnorConv2d

    def build(self, num_classes: int, in_chans: int = 3, base: int = 16, depth: int = 20,
              layout: str = "cifar") -> BinaryResNet:
        return BinaryResNet(depth, num_classes, in_chans, base, layout, conv=self.conv_factory())

    def label(self) -> str:
        return f"{self.name} (no {self.ablation})" if self.ablate and self.ablation else self.name

    # ----------------------------------------------------------------- training hooks
    def setup(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        """Called once before training (and before a resume loads state)."""

    def optimizers(self, model: BinaryResNet, cfg: Any) -> dict[str, torch.optim.Optimizer]:
        """Named optimisers; ``main`` is stepped by the loop after every backward pass."""
        return {"main": make_optimizer(cfg, list(model.parameters()) + self.extra_parameters())}

    def extra_parameters(self) -> list[nn.Parameter]:
        """Trainable method state outside the model (e.g. BONN's feature variances)."""
        return []

    def losses(self, model: BinaryResNet, fwd: Forward, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms added to the cross-entropy (name -> scalar tensor)."""
        return {}

    def step(self, model: BinaryResNet, opts: dict[str, torch.optim.Optimizer],
             x: torch.Tensor, y: torch.Tensor) -> tuple[Forward, dict[str, float]]:
        """One training step: forward, every loss, backward, optimiser steps."""
        fwd = Forward(model, x)
        parts = {"ce": F.cross_entropy(fwd.logits, y), **self.losses(model, fwd, y)}
        total = sum(parts.values())
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        total.backward()
        self.before_update(model, opts)
        opts["main"].step()
        self.after_update(model, opts, fwd, x, y)
        return fwd, {k: float(v.detach()) for k, v in parts.items()}

    def before_update(self, model: BinaryResNet, opts: dict[str, torch.optim.Optimizer]) -> None:
        """Gradients are ready, parameters not yet updated."""

    def after_update(self, model: BinaryResNet, opts: dict[str, torch.optim.Optimizer],
                     fwd: Forward, x: torch.Tensor, y: torch.Tensor) -> None:
        """After the main update (RBCN: C then discriminators; GBCN: BGA rounds)."""

    def after_epoch(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        """End of an epoch, before validation (RBCN: BatchNorm statistics update)."""

    # ----------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_optimizer(cfg: Any, params: list, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam (default for the binary nets) or SGD with momentum, from a training config."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam or sgd, got {cfg.optimizer!r}")
    for g in opt.param_groups:
        g["base_lr"] = lr  # the cosine schedule scales every group from its own base rate
    return opt


class ClassCentres(nn.Module):
    """Per-class feature centres updated as in the centre loss (Wen et al. 2016), not by SGD:
    ``c_m <- c_m - rate * mean_{i: y_i = m}(c_m - f_i)`` on every batch."""

    def __init__(self, num_classes: int, dim: int, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = rate
        self.register_buffer("centres", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, f: torch.Tensor, y: torch.Tensor) -> None:
        f = f.detach()
        for m in torch.unique(y):
            fm = f[y == m].mean(0)
            if not self.seen[m]:  # the first batch of a class sets its centre
                self.centres[m] = fm
                self.seen[m] = True
            else:
                self.centres[m] -= self.rate * (self.centres[m] - fm)

    def loss(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``||f_i - c_{y_i}||^2 / 2``."""
        return 0.5 * (f - self.centres[y]).pow(2).sum(1).mean()
