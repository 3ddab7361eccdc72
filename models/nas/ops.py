"""BNAS's operation space: the eight DARTS operations with binarized convolutions.

``PRIMITIVES`` (K = 8, METHODS.md): none, skip_connect, max_pool_3x3, avg_pool_3x3,
sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5. Every convolution inside an operation
and in the cells' preprocessing is a 1-bit :class:`NasBinaryConv2d`; the stem and the classifier
stay in float (:mod:`models.nas.network`, :mod:`models.nas.supernet`).

Binarization is the project's 1-bit contract (:mod:`models.binary.layers`): ``sign(x)`` of the
input and ``sign(W)`` scaled by ``alpha = mean|W|`` per output channel (XNOR), so the packed
runtime can run them. The authors' released code keeps activations real and binarizes weights
only (ReLU -> binarized conv -> BN); here activations are binarized as well, and the ReLU in
front of each conv is dropped because ``sign(relu(x))`` is +1 everywhere.
:class:`NasBinaryConv2d` adds groups and dilation to :class:`~models.binary.layers.BinaryConv2d`
(separable and dilated convolutions are depthwise, the dilated ones dilated); the packed kernel
takes only groups = 1 and dilation = 1 (:func:`packable`), the others run on a named float
fallback at inference (:mod:`models.nas.export`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.binary.layers import BinaryConv2d
from vistream.models.registry import Registry

PRIMITIVES = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")

#: op name -> builder ``(C, stride, affine, scale) -> nn.Module`` (timm-style registry)
OPS: Registry[Callable[..., nn.Module]] = Registry("BNAS operation")


class NasBinaryConv2d(BinaryConv2d):
    """A 1-bit conv with groups and dilation: ``conv2d(sign(x), sign(W), ...) * alpha[o]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, scale: str = "mean_abs") -> None:
        if scale not in ("mean_abs", "learned"):
            raise ValueError(f"scale must be 'mean_abs' or 'learned', got {scale!r}")
        nn.Conv2d.__init__(self, in_ch, out_ch, kernel_size, stride, padding, dilation=dilation,
                           groups=groups, bias=False)
        self.scale_mode = scale
        if scale == "learned":
            self.alpha = nn.Parameter(self.weight.detach().abs().mean(dim=(1, 2, 3)).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wb, alpha = self.binary_weight()
        out = F.conv2d(self.binary_input(x), wb, None, self.stride, self.padding, self.dilation, self.groups)
        return out * alpha.view(1, -1, 1, 1)


def packable(conv: nn.Conv2d) -> bool:
    """Whether the packed XNOR/popcount kernel runs this conv (square kernel, equal strides and
    paddings, groups 1, dilation 1: :class:`models.binary.packed.PackedBinaryConv2d`)."""
    return conv.groups == 1 and tuple(conv.dilation) == (1, 1) \
        and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1] \
        and conv.padding[0] == conv.padding[1]


def bconv(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0, dilation: int = 1,
          groups: int = 1, scale: str = "mean_abs") -> NasBinaryConv2d:
    return NasBinaryConv2d(c_in, c_out, k, stride, padding, dilation, groups, scale)


class BinConvBN(nn.Sequential):
    """Binarized conv -> BN (DARTS's ReLUConvBN without the ReLU: see the module text)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, affine: bool = True,
                 scale: str = "mean_abs") -> None:
        super().__init__(bconv(c_in, c_out, k, stride, padding, scale=scale),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """Binarized depthwise dilated conv -> binarized pointwise conv -> BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, dilation: int,
                 affine: bool = True, scale: str = "mean_abs") -> None:
        super().__init__(bconv(c_in, c_in, k, stride, padding, dilation, groups=c_in, scale=scale),
                         bconv(c_in, c_out, 1, scale=scale), nn.BatchNorm2d(c_out, affine=affine))


class SepConv(nn.Sequential):
    """Two binarized depthwise-separable convs (the first one strided), each followed by BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, affine: bool = True,
                 scale: str = "mean_abs") -> None:
        super().__init__(DilConv(c_in, c_in, k, stride, padding, 1, affine, scale),
                         DilConv(c_in, c_out, k, 1, padding, 1, affine, scale))


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]).mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution: two binarized 1x1 stride-2 convs on offset grids, concatenated, BN."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, scale: str = "mean_abs") -> None:
        super().__init__()
        if c_out < 2:
            raise ValueError("FactorizedReduce needs at least 2 output channels")
        self.conv_1 = bconv(c_in, c_out // 2, 1, 2, scale=scale)
        self.conv_2 = bconv(c_in, c_out - c_out // 2, 1, 2, scale=scale)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_1(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))  # odd sizes: keep the grids aligned
        return self.bn(torch.cat([a, self.conv_2(shifted)[:, :, :a.shape[2], :a.shape[3]]], dim=1))


@OPS.register("none")
def _none(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return Zero(stride)


@OPS.register("skip_connect")
def _skip(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine, scale)


@OPS.register("max_pool_3x3")
def _max_pool(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return nn.MaxPool2d(3, stride, 1)


@OPS.register("avg_pool_3x3")
def _avg_pool(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return nn.AvgPool2d(3, stride, 1, count_include_pad=False)


@OPS.register("sep_conv_3x3")
def _sep3(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return SepConv(c, c, 3, stride, 1, affine, scale)


@OPS.register("sep_conv_5x5")
def _sep5(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return SepConv(c, c, 5, stride, 2, affine, scale)


@OPS.register("dil_conv_3x3")
def _dil3(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return DilConv(c, c, 3, stride, 2, 2, affine, scale)


@OPS.register("dil_conv_5x5")
def _dil5(c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    return DilConv(c, c, 5, stride, 4, 2, affine, scale)


def make_op(name: str, c: int, stride: int, affine: bool = True, scale: str = "mean_abs") -> nn.Module:
    """Build operation ``name`` (one of :data:`PRIMITIVES`) on ``c`` channels."""
    return OPS.create(name, c=c, stride=stride, affine=affine, scale=scale)


def preprocess(c_in: int, c_out: int, reduce_input: bool, affine: bool = True,
               scale: str = "mean_abs") -> nn.Module:
    """A cell's input preprocessing: binarized 1x1 conv + BN, or FactorizedReduce when the input
    comes from before a reduction cell (DARTS's preprocess0 / preprocess1)."""
    if reduce_input:
        return FactorizedReduce(c_in, c_out, affine, scale)
    return BinConvBN(c_in, c_out, 1, 1, 0, affine, scale)


def float_stem(in_chans: int, c: int) -> nn.Sequential:
    """Full-precision stem: 3x3 conv + BN, no ReLU (a ReLU before the first sign would make every
    binarized activation +1)."""
    return nn.Sequential(nn.Conv2d(in_chans, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
