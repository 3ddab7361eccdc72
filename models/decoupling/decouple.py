"""A CIFAR ResNet with controlling modules on every basic block, and the decoupling objective.

Where the gates sit (the authors' code as read): conv1's mask multiplies the block's first
conv output after BN+ReLU; conv2's mask multiplies the second conv output after BN, before the
residual addition. The stem conv (3 input channels, like VGG's first conv) and the 1x1
down-sampling shortcuts of the CIFAR nets are not gated (only ResNet-18 gates its shortcut in
the paper; the CIFAR nets here use 1x1 shortcuts that the paper's option-A nets did not have).

Objective: ``L = CE + lambda_k sum_l KL_l + lambda_m sum_l M_l + lambda_s sum_l S_l`` with, per
gated layer l of C filters:

* ``KL_l = KL(softmax(GAP(y_l)) || softmax(g_l))``: y_l the layer's output before its mask
  (after BN+ReLU for conv1, after BN for conv2), g_l the gate logits. The paper does not say
  which side is the target; we take the features as the (detached) target, so the term teaches
  the controlling module to open the filters that respond, not the filters to follow the gates.
* ``M_l``: cross-entropy of a bias-free linear classifier (C -> classes) reading the mask.
* ``S_l = | mean_batch ||m_l||_1 - target * C |``: the active share pulled toward ``target``.
  Ours, optional (``sparsity_gates="inference"``): m_l is the *inference* gate 1[g > 0] (no
  noise; the sigmoid's gradient passed straight through), not the noisy training gate: with
  the latter the training share reached the target while the inference share stayed at 0.87
  (the N(0, 1) noise and the soft values close gates whose noise-free logits are positive;
  out/decouple/train-v4-b.log).

Sums run over the layers (not means), as in the paper's formula, so lambda_s scales with depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.backbones import create_model
from vistream.models.decoupling.gates import ControlModule, gate


@dataclass
class LayerTrace:
    """What one gated conv did in the last forward pass (tensors keep their graph)."""

    logits: torch.Tensor   # (N, C) gate logits
    mask: torch.Tensor     # (N, C) gate values (0/1 at inference)
    pooled: torch.Tensor   # (N, C) GAP of the layer output before the mask


class GatedBlock(nn.Module):
    """A :class:`BasicBlock` (its modules, weights shared) with two controlling modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = block.conv1, block.bn1
        self.conv2, self.bn2 = block.conv2, block.bn2
        self.shortcut = block.shortcut
        self.ctrl1 = ControlModule(self.conv1.in_channels, self.conv1.out_channels)
        self.ctrl2 = ControlModule(self.conv2.in_channels, self.conv2.out_channels)
        self.traces: list[LayerTrace] = []
        self.force_hard = False  # inference gates in training mode (BN recalibration)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        soft = self.training and not self.force_hard
        g1 = self.ctrl1(x.mean((2, 3)))
        m1 = gate(g1, soft)
        y1 = F.relu(self.bn1(self.conv1(x)))
        out = y1 * m1[:, :, None, None]
        g2 = self.ctrl2(out.mean((2, 3)))
        m2 = gate(g2, soft)
        y2 = self.bn2(self.conv2(out))
        out = y2 * m2[:, :, None, None] + self.shortcut(x)
        self.traces = [LayerTrace(g1, m1, y1.mean((2, 3))), LayerTrace(g2, m2, y2.mean((2, 3)))]
        return F.relu(out)


class DecoupledResNet(nn.Module):
    """A trained CIFAR ResNet (weights shared, not copied) with gated blocks and one mask
    classifier per gated layer. ``forward`` returns the logits; :meth:`traces` the layers'
    gates of that pass, in order (block 0 conv1, block 0 conv2, block 1 conv1, ...)."""

    def __init__(self, backbone: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        if not hasattr(backbone, "blocks") or not hasattr(backbone, "stem"):
            raise ValueError(f"decoupling needs a CIFAR ResNet (stem + blocks), not "
                             f"{type(backbone).__name__}")
        self.backbone_config = dict(getattr(backbone, "config", {}))
        self.stem = backbone.stem
        self.blocks = nn.Sequential(*[GatedBlock(b) for b in backbone.blocks])
        self.pool = backbone.pool
        self.fc = backbone.fc
        classes = num_classes or self.fc.out_features
        self.mask_heads = nn.ModuleList(
            nn.Linear(c, classes, bias=False) for c in self.layer_widths())

    def layer_widths(self) -> list[int]:
        return [w for b in self.blocks for w in (b.conv1.out_channels, b.conv2.out_channels)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))

    def traces(self) -> list[LayerTrace]:
        return [t for b in self.blocks for t in b.traces]

    def paths(self) -> torch.Tensor:
        """(N, total filters) 0/1 masks of the last pass, layers concatenated (the input's
        calculation path)."""
        return torch.cat([t.mask.detach() for t in self.traces()], 1)

    def gate_parameters(self):
        """Controlling modules and mask classifiers (new parameters)."""
        for name, p in self.named_parameters():
            if ".ctrl" in name or name.startswith("mask_heads"):
                yield p


def decouple(backbone: nn.Module) -> DecoupledResNet:
    return DecoupledResNet(backbone)


@dataclass
class LossWeights:
    lambda_k: float = 1.0
    lambda_m: float = 0.01
    lambda_s: float = 1.5e-4
    target: float = 0.6   # share of filters meant to stay active
    sparsity_gates: str = "noisy"   # S counts the noisy training gates (paper) or "inference" ones


def _inference_share(logits: torch.Tensor) -> torch.Tensor:
    """The inference gates 1[g > 0] (no noise) with the sigmoid's gradient (straight-through)."""
    sig = torch.sigmoid(logits)
    return (logits > 0).to(logits.dtype) + sig - sig.detach()


def decoupling_terms(model: DecoupledResNet, y: torch.Tensor, target: float,
                     sparsity_gates: str = "inference") -> dict[str, torch.Tensor]:
    """The summed KL, mask-classifier and sparsity terms of the last forward pass; the sparsity
    term counts the ``noisy`` training gates (the paper) or the ``inference`` ones."""
    if sparsity_gates not in ("noisy", "inference"):
        raise ValueError(f"sparsity_gates {sparsity_gates!r}: use noisy or inference")
    kl = mi = sp = torch.zeros((), device=y.device)
    for t, head in zip(model.traces(), model.mask_heads):
        p_feat = F.softmax(t.pooled.detach(), 1)
        kl = kl + F.kl_div(F.log_softmax(t.logits, 1), p_feat, reduction="batchmean")
        mi = mi + F.cross_entropy(head(t.mask), y)
        m = _inference_share(t.logits) if sparsity_gates == "inference" else t.mask
        sp = sp + (m.sum(1).mean() - target * t.mask.shape[1]).abs()
    return {"kl": kl, "mask_ce": mi, "sparsity": sp}


def decoupling_loss(model: DecoupledResNet, logits: torch.Tensor, y: torch.Tensor,
                    w: LossWeights) -> tuple[torch.Tensor, dict[str, float]]:
    """(total loss, its parts as floats) for a batch whose forward pass just ran."""
    ce = F.cross_entropy(logits, y)
    terms = decoupling_terms(model, y, w.target, w.sparsity_gates)
    total = (ce + w.lambda_k * terms["kl"] + w.lambda_m * terms["mask_ce"]
             + w.lambda_s * terms["sparsity"])
    parts = {"ce": float(ce.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
    return total, parts


def build_from_state(state: dict) -> DecoupledResNet:
    """Rebuild a decoupled net from a checkpoint dict written by :mod:`.finetune`."""
    cfg = dict(state["backbone_config"])
    arch = cfg.pop("arch")
    model = DecoupledResNet(create_model(arch, **cfg))
    model.load_state_dict(state["model"])
    return model.eval()
