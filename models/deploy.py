"""Inference preparation of float backbones for the CPU: what the features stage runs and what
the latency benchmarks measure.

Two standard deployment steps, both numerically equivalent to the eval-mode model up to float
rounding (checked on a probe input; a model that fails the check is left as it was):

* **BatchNorm folding** - an eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` is a
  per-channel affine map, so it is merged into that conv's weights and bias and replaced by an
  identity. Pairs are found by running the model once with hooks: a BN whose input tensor *is*
  the output of a conv (the same object) is that conv's BN. In the zoo's networks every conv
  output feeds only its BN; a model where that does not hold fails the probe check and is
  returned unfolded. A pruned ResNet keeps its outer (block) widths, so the BN, ReLU and add
  work on them does not shrink with the FLOPs; folding removes the BN part of that fixed cost.
* **Channels-last memory** - oneDNN's NCHW convolutions lose most of their speed at channel
  counts that are not a multiple of the SIMD width, which pruning produces; NHWC kernels do
  far better there (measured on this CPU, 1 thread, batch 32: a 50%-FLOPs ResNet-56 with
  7/17/33-channel layers was 1.12x faster than the full net in NCHW and 1.78x in NHWC).

The bit-packed 1-bit runtime is returned unchanged: it has its own layout and must stay
bit-exact to its training-time forward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of eval-mode ``model`` with every conv->BN pair merged into the conv."""
    model = copy.deepcopy(model).eval()
    outputs: dict[int, nn.Conv2d] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_hook(m, inp, out):
        outputs[id(out)] = m

    def bn_hook(m, inp, out):
        conv = outputs.get(id(inp[0]))
        if conv is not None and conv.groups == 1:
            pairs.append((conv, m))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(bn_hook) for m in model.modules()
              if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    folded = {id(bn) for _, bn in pairs}
    with torch.no_grad():
        for conv, bn in pairs:
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
                bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            conv.bias = nn.Parameter(bias * scale + shift)
    for name, m in list(model.named_modules()):
        if id(m) in folded:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model


def deployable(model: nn.Module) -> bool:
    """Whether :func:`optimize_for_cpu` changes ``model`` (and its input should then be
    channels-last): every float model, not a runtime that is deployed as it is and says so
    with ``runs_as_deployed = True`` (the bit-packed 1-bit runtime,
    :class:`models.binary.packed.PackedBinaryNet`)."""
    return not getattr(model, "runs_as_deployed", False)


def optimize_for_cpu(model: nn.Module, channels_last: bool = True, fold_bn: bool = True,
                     input_size: tuple[int, int] = (32, 32), atol: float = 1e-3) -> nn.Module:
    """The deployable form of an eval-mode float backbone (a new object; ``model`` is not
    changed): BN folded, channels-last weights. Falls back to the unfolded copy when the
    folded model's output differs from the original's by more than ``atol`` (relative to the
    output's scale) on a seeded probe batch."""
    if not deployable(model):
        return model
    model = model.eval()
    out = copy.deepcopy(model)
    if fold_bn:
        in_chans = int(getattr(model, "config", {}).get("in_chans", 3))
        probe = torch.randn(2, in_chans, *input_size, generator=torch.Generator().manual_seed(0))
        candidate = fold_batchnorm(model, probe)
        with torch.no_grad():
            ref, got = model(probe), candidate(probe)
        if torch.allclose(got, ref, atol=atol * max(1.0, float(ref.abs().max())), rtol=1e-3):
            out = candidate
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out
