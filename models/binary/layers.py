"""Building blocks shared by every 1-bit method (XNOR, CBCN, BONN, RBCN, GBCN).

The contract below is what the bit-packed runtime (:mod:`models.binary.packed`) reproduces
bit for bit, so every method must keep to it:

* ``sign(x)`` is +1 for ``x >= 0`` and -1 otherwise — never 0 — for activations and weights.
* A binary convolution computes ``conv2d(sign(x), W_b, stride, padding) * alpha[o]`` where
  ``W_b`` holds ±1, ``alpha`` is one non-negative float per output channel, and padding is
  *zero* padding (padded positions add nothing, exactly as ``torch.nn.functional.conv2d``);
  there is no bias. The integer dot products are exact in float32 (|dot| <= 2^24), so the
  runtime, which computes them with XNOR/popcount, multiplies by the same ``alpha`` and gets the
  same float32 numbers.
* A method changes *how* ``W_b`` and ``alpha`` are produced and trained by overriding
  :meth:`BinaryConv2d.binary_weight`; whatever it does, ``binary_weight()`` returns ±1 weights
  of shape ``(out, in, k, k)`` and ``alpha`` of shape ``(out,)``. :meth:`BinaryConv2d.export`
  gives the runtime exactly those tensors.

Gradients: activations use Bi-Real Net's piecewise-quadratic approximation of sign
(``ApproxSign``; Liu et al. 2018), weights a clipped straight-through estimator. The network
layout follows Bi-Real Net: every binary 3x3 conv is followed by BatchNorm and has its own
real-valued shortcut, down-sampling shortcuts are ``AvgPool2d(2)`` + float 1x1 conv + BN, the
stem and the classifier stay in float (as in every paper of the family). The stem has no ReLU:
a ReLU before the first ``sign`` would make every activation +1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.weight_init import init_weights


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, no gradient (the convention shared with the packed runtime)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _ApproxSign(torch.autograd.Function):
    """Forward: hard_sign. Backward: derivative of Bi-Real's ApproxSign, 2 - 2|x| on [-1, 1]."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class _SteSign(torch.autograd.Function):
    """Forward: hard_sign. Backward: identity where |x| <= 1 (clipped straight-through)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_approx(x: torch.Tensor) -> torch.Tensor:
    return _ApproxSign.apply(x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    return _SteSign.apply(x)


class BinaryConv2d(nn.Conv2d):
    """1-bit conv: binarised input and weights, one scale per output channel, zero padding.

    ``scale="mean_abs"`` is XNOR-Net's analytic ``alpha = mean |W|`` over each filter (gradient
    flows into W through it); ``scale="learned"`` is a free per-channel parameter initialised the
    same way (the learned modulation of RBCN/BONN-style methods). Subclasses override
    :meth:`binary_weight` and may add auxiliary losses via :meth:`extra_loss`.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, scale: str = "mean_abs") -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, bias=False)
        if scale not in ("mean_abs", "learned"):
            raise ValueError(f"scale must be 'mean_abs' or 'learned', got {scale!r}")
        self.scale_mode = scale
        if scale == "learned":
            self.alpha = nn.Parameter(self.weight.detach().abs().mean(dim=(1, 2, 3)).clone())

    def binary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(±1 weights (out, in, k, k), alpha (out,)); differentiable for training."""
        w = self.weight
        alpha = self.alpha.abs() if self.scale_mode == "learned" else w.abs().mean(dim=(1, 2, 3))
        return sign_ste(w), alpha

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return sign_approx(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wb, alpha = self.binary_weight()
        out = F.conv2d(self.binary_input(x), wb, None, self.stride, self.padding)
        return out * alpha.view(1, -1, 1, 1)

    def extra_loss(self) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def export(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference-time (±1 float32 weights, float32 alpha) the runtime must reproduce."""
        wb, alpha = self.binary_weight()
        return hard_sign(wb).float().contiguous(), alpha.detach().float().contiguous()


ConvFactory = Callable[..., BinaryConv2d]


class BinaryUnit(nn.Module):
    """Bi-Real unit: ``BN(BinaryConv3x3(x)) + shortcut(x)`` with a real-valued shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv = conv(in_ch, out_ch, 3, stride, 1)
        self.bn = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            pool: nn.Module = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


class BinaryBlock(nn.Module):
    """The binary twin of a ResNet basic block: two Bi-Real units (in -> inner -> out)."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, stride: int, conv: ConvFactory) -> None:
        super().__init__()
        self.unit1 = BinaryUnit(in_ch, inner, stride, conv)
        self.unit2 = BinaryUnit(inner, out_ch, 1, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit2(self.unit1(x))


class BinaryResNet(nn.Module):
    """A 1-bit ResNet laid out like its float twin in the backbone zoo.

    ``layout="cifar"`` mirrors ``resnet20``/``resnet56`` (3x3 stem, 3 stages of ``base * 1/2/4``
    channels, ``(depth - 2) / 6`` blocks each); ``layout="imagenet"`` mirrors ``resnet18``
    (7x7/2 stem + max-pool, 4 stages of 2 blocks). Stage outputs have the same shapes as the
    float twin's, so a teacher's per-stage features line up with the student's
    (:meth:`stage_features`).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3,
                 base: int = 16, layout: str = "cifar", widths: list[int] | None = None,
                 conv: ConvFactory = BinaryConv2d) -> None:
        super().__init__()
        if layout == "cifar":
            if (depth - 2) % 6:
                raise ValueError("CIFAR ResNet depth must be 6n+2")
            n, stage_widths = (depth - 2) // 6, [base, 2 * base, 4 * base]
            self.stem = nn.Sequential(nn.Conv2d(in_chans, base, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(base))
        elif layout == "imagenet":
            if depth != 18:
                raise ValueError("the imagenet layout is built for depth 18")
            n, stage_widths = 2, [base, 2 * base, 4 * base, 8 * base]
            self.stem = nn.Sequential(nn.Conv2d(in_chans, base, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(base), nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"layout must be 'cifar' or 'imagenet', got {layout!r}")
        widths = list(widths) if widths is not None else [w for w in stage_widths for _ in range(n)]
        if len(widths) != n * len(stage_widths):
            raise ValueError(f"expected {n * len(stage_widths)} block widths, got {len(widths)}")
        self.config = {"depth": depth, "num_classes": num_classes, "in_chans": in_chans,
                       "base": base, "layout": layout, "widths": widths}
        stages, in_ch, k = [], base, 0
        for s, out_ch in enumerate(stage_widths):
            blocks = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                blocks.append(BinaryBlock(in_ch, widths[k], out_ch, stride, conv))
                in_ch, k = out_ch, k + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = stage_widths[-1]
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        for m in self.modules():  # learned scales start at XNOR's analytic value
            if isinstance(m, BinaryConv2d) and m.scale_mode == "learned":
                m.alpha.data.copy_(m.weight.detach().abs().mean(dim=(1, 2, 3)))

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (for teacher-student losses)."""
        feats, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stage_features(x)[-1]).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def binary_convs(model: nn.Module) -> Iterator[tuple[str, BinaryConv2d]]:
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d):
            yield name, m


def extra_losses(model: nn.Module) -> torch.Tensor:
    """Sum of every binary conv's :meth:`BinaryConv2d.extra_loss` (0 when none)."""
    total = torch.zeros(())
    for _, m in binary_convs(model):
        loss = m.extra_loss()
        if loss is not None:
            total = total + loss
    return total
