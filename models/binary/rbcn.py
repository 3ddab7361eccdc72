"""RBCN: Rectified Binary Convolutional Networks (Liu et al., arXiv 1908.07748).

``min_{W, W_hat, C} max_D  L_adv + L_CE + L_kernel``:

* **Kernel approximation** ``W ~ C o W_hat`` with ``W_hat = sign(W)`` and a learnable ``C``;
  ``L_kernel = lambda1 / 2 * ||W - C o W_hat||^2`` (summed over all binary layers). ``C`` is
  one value per output channel, which is exactly the runtime's ``alpha`` (inference keeps only
  ``W_hat`` and ``C``, as in the paper).
* **Adversarial loss.** One discriminator per stage compares the full-precision teacher's stage
  output ``R`` with the 1-bit student's ``T``: ``L_adv = log D(R) + log(1 - D(T))``; D maximises
  it, the student minimises ``-log D(T)`` (the usual non-saturating form of the same game).
* **Update order** per step: ``W`` (and every other network parameter), then ``C`` with its own
  learning rate — the kernel loss's gradient for ``C`` is taken at the *updated* ``W`` — then
  the discriminators.
* **BatchNorm update** after every epoch with ``W`` and ``C`` fixed: running statistics
  re-estimated on training batches (:func:`models.train.recalibrate_bn`).
* Sign gradients: Bi-Real's piecewise polynomial for activations (the shared layers), clipped
  straight-through for weights.

Choices the paper leaves open
* **Teacher**: the float ResNet of the backbone zoo at the same width (``create_model('resnet20',
  base=...)``), trained once per dataset with :func:`models.train.train` and cached
  (:func:`models.binary.teacher.float_twin`).
* **Discriminators**: per stage, ``Linear(C, 64) -> LeakyReLU(0.2) -> Linear(64, 1)`` on the
  stage output after ReLU, global average pooling and unit L2 norm per image
  (:func:`disc_input`); Adam (betas 0.5, 0.999, lr 0.2 x the main rate). The teacher's stage
  outputs are post-ReLU (>= 0) while the binary student's are not (its next ``sign`` needs both
  signs), hence the ReLU; the normalisation removes the scale difference, which D would
  otherwise separate trivially and whose gradient only rescales the student's BatchNorm. The
  paper's GAN acts as a mild feature regulariser; the first version here (D on 4x4-pooled,
  un-normalised maps, weight 0.1, from the first step) dominated the cross-entropy (digits,
  4 epochs: 54% with the GAN vs 85% without).
* Weights: ``lambda1 = 1e-3``, adversarial weight ``adv_weight = 0.01``, and the game starts
  after a warm-up (``gan_warmup = 0.25`` of the epochs) so the student first learns the task.
* ``C``'s learning rate is 0.1 x the main one: ``C`` is of the order of ``mean |W|`` (~0.1) and
  Adam moves every parameter by about the learning rate per step, so at the main rate (1e-2)
  ``C`` jumped by ~10% a step.
* BN update: 40 batches of 64 (the whole digits training split), cumulative average, train mode
  without gradient (:func:`models.train.recalibrate_bn`).
* Ablation (``--no-gan``): no discriminators and no ``L_adv`` (kernel approximation and BN update
  kept).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.binary.layers import (
    BinaryConv2d,
    BinaryResNet,
    ConvFactory,
    binary_convs,
    hard_sign,
    sign_ste,
)
from vistream.models.binary.methods import register_method
from vistream.models.binary.teacher import float_twin
from vistream.models.binary.xnor import Forward, XnorMethod, make_optimizer
from vistream.models.train import recalibrate_bn


class RbcnConv2d(BinaryConv2d):
    """``conv(sign(x), sign(W)) * C`` with a learnable per-output-channel ``C``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, scale="learned")

    def binary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return sign_ste(self.weight), self.alpha.abs()

    def kernel_loss(self, detach_w: bool = False, detach_c: bool = False) -> torch.Tensor:
        w = self.weight.detach() if detach_w else self.weight
        c = self.alpha.detach() if detach_c else self.alpha
        return (w - c.abs().view(-1, 1, 1, 1) * hard_sign(w)).pow(2).sum()


def discriminator(channels: int, hidden: int = 64) -> nn.Module:
    """D on a pooled, normalised stage output (see :func:`disc_input`)."""
    return nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))


def disc_input(t: torch.Tensor) -> torch.Tensor:
    """What D sees of a stage output: ReLU (the teacher's are post-ReLU), global average pool,
    unit L2 norm per image. Normalising removes the scale difference between teacher and
    student (which D would otherwise separate trivially, and whose gradient only rescales the
    student's BatchNorm), so the game acts on the *pattern* of channel activations."""
    return F.normalize(F.adaptive_avg_pool2d(F.relu(t), 1).flatten(1), dim=1)


def teacher_stages(teacher: nn.Module, x: torch.Tensor, n_stages: int) -> list[torch.Tensor]:
    """Stage outputs of a zoo CIFAR ResNet (``stem`` + ``blocks``), shaped like the student's."""
    out, h = [], teacher.stem(x)
    per = len(teacher.blocks) // n_stages
    for i, block in enumerate(teacher.blocks):
        h = block(h)
        if (i + 1) % per == 0:
            out.append(h)
    return out


@register_method
class RbcnMethod(XnorMethod):
    name = "rbcn"
    ablation = "GAN"
    ablation_flag = "gan"

    def __init__(self, ablate: bool = False, lambda1: float = 1e-3, adv_weight: float = 0.01,
                 c_lr_mult: float = 0.1, d_lr_mult: float = 0.2, bn_batches: int = 40,
                 gan_warmup: float = 0.25, **options: Any) -> None:
        super().__init__(ablate, **options)
        self.lambda1, self.adv_weight, self.c_lr_mult = lambda1, adv_weight, c_lr_mult
        self.d_lr_mult = d_lr_mult
        self.bn_batches = bn_batches
        self.gan_warmup = gan_warmup
        self.teacher: nn.Module | None = None
        self.discs: nn.ModuleList | None = None

    @property
    def use_gan(self) -> bool:
        return not self.ablate and self.adv_weight > 0

    def conv_factory(self) -> ConvFactory:
        return RbcnConv2d

    def setup(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        if not self.use_gan:
            return
        teacher = self.options.get("teacher")
        if teacher is None:
            teacher = float_twin(data, cfg, seed=0, progress=False)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        widths = [s[-1].unit2.bn.num_features for s in model.stages]
        self.discs = nn.ModuleList(discriminator(c) for c in widths)

    def optimizers(self, model: BinaryResNet, cfg: Any) -> dict[str, torch.optim.Optimizer]:
        c_params = [m.alpha for _, m in binary_convs(model)]
        ids = {id(p) for p in c_params}
        rest = [p for p in model.parameters() if id(p) not in ids]
        opts = {"main": make_optimizer(cfg, rest), "c": make_optimizer(cfg, c_params,
                                                                        cfg.lr * self.c_lr_mult)}
        if self.discs is not None:
            d_lr = cfg.lr * self.d_lr_mult
            opts["d"] = torch.optim.Adam(self.discs.parameters(), lr=d_lr, betas=(0.5, 0.999))
            for g in opts["d"].param_groups:
                g["base_lr"] = d_lr
        return opts

    def gan_active(self) -> bool:
        """The adversarial game starts after a warm-up (the first ``gan_warmup`` of the epochs)."""
        return (self.use_gan and self.discs is not None
                and self.epoch >= int(round(self.gan_warmup * self.epochs)))

    def kernel_loss(self, model: BinaryResNet, **kw: bool) -> torch.Tensor:
        return self.lambda1 / 2 * sum(m.kernel_loss(**kw) for _, m in binary_convs(model))

    def losses(self, model: BinaryResNet, fwd: Forward, y: torch.Tensor) -> dict[str, torch.Tensor]:
        # C's share of the kernel loss is applied after W has moved (after_update)
        out = {"kernel": self.kernel_loss(model, detach_c=True)}
        if self.gan_active():
            out["adv"] = self.adv_weight * sum(
                F.binary_cross_entropy_with_logits(d(disc_input(t)), torch.ones(len(t), 1))
                for d, t in zip(self.discs, fwd.stages))
        return out

    def after_update(self, model: BinaryResNet, opts: dict[str, torch.optim.Optimizer],
                     fwd: Forward, x: torch.Tensor, y: torch.Tensor) -> None:
        # C: CE/adversarial gradient from the step's backward + kernel loss at the new W
        self.kernel_loss(model, detach_w=True).backward()
        opts["c"].step()
        if self.gan_active():
            with torch.no_grad():
                real = teacher_stages(self.teacher, x, len(self.discs))
            loss = sum(F.binary_cross_entropy_with_logits(d(disc_input(r)), torch.ones(len(r), 1))
                       + F.binary_cross_entropy_with_logits(d(disc_input(t.detach())),
                                                            torch.zeros(len(t), 1))
                       for d, r, t in zip(self.discs, real, fwd.stages))
            opts["d"].zero_grad(set_to_none=True)
            loss.backward()
            opts["d"].step()

    def after_epoch(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        if self.bn_batches > 0:  # W and C fixed: only running statistics change
            recalibrate_bn(model, data, n_batches=self.bn_batches, batch_size=64,
                           seed=cfg.seed * 1000 + self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"discs": self.discs.state_dict()} if self.discs is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.discs is not None and "discs" in state:
            self.discs.load_state_dict(state["discs"])
