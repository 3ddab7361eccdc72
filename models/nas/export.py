"""BNAS networks as one-file artifacts, and their packed runtime.

Same file format as every artifact (:mod:`models.artifact_format`) and the same 1-bit storage
as :func:`models.binary.packed.export_binary_artifact`: each binary conv is stored as
``<name>.weight_bits`` (one bit per weight) plus ``<name>.alpha``; everything else is the float
state dict. The manifest says ``runtime: "packed"``, ``arch: "bnas_network"`` (rebuilt by
:func:`models.nas.network.bnas_network` from ``config``: genotype, C, layers), and under
``binary.fallback`` every binary conv the packed kernel does not take (depthwise and dilated
convs of the separable and dilated operations: :func:`models.nas.ops.packable`) with the
runtime that runs it instead.

:func:`load_bnas` rebuilds the network, swaps the unsupported convs for
:class:`FallbackBinaryConv2d` (the same ``conv2d(sign(x), W_b) * alpha`` in torch, from the
stored ±1 weights: integer dot products, exact in float32, so the result is the same) and hands
the rest to :func:`models.binary.packed.to_packed` (XNOR/popcount convs, packed pools). It logs
how many convs run packed and which run on the fallback.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vistream.models.artifact_format import (
    ArtifactError,
    input_specs,
    load_checked,
)
from vistream.models.binary.layers import BinaryConv2d, binary_convs, hard_sign
from vistream.models.binary.packed import (
    PackedBinaryNet,
    exported,
    to_packed,
    unpack_bits,
    write_packed_artifact,
)
from vistream.models.nas.network import BnasNetwork, bnas_network
from vistream.models.nas.ops import packable

log = logging.getLogger(__name__)

ARCH = "bnas_network"
FALLBACK = "torch-conv2d-sign"  # the float fallback's name, in the manifest and the log


def fallback_convs(model: nn.Module) -> list[dict]:
    """The binary convs the packed kernel does not run, with the reason."""
    out = []
    for name, conv in binary_convs(model):
        if not packable(conv):
            why = []
            if conv.groups != 1:
                why.append(f"groups={conv.groups}")
            if tuple(conv.dilation) != (1, 1):
                why.append(f"dilation={conv.dilation[0]}")
            out.append({"conv": name, "runtime": FALLBACK, "reason": ", ".join(why) or "shape"})
    return out


class FallbackBinaryConv2d(nn.Module):
    """Inference-only ``conv2d(sign(x), W_b, stride, padding, dilation, groups) * alpha`` in
    torch, for the shapes the packed kernel does not take."""

    runtime = FALLBACK

    def __init__(self, conv: BinaryConv2d) -> None:
        super().__init__()
        wb, alpha = exported(conv)
        self.register_buffer("weight", wb.float())
        self.register_buffer("alpha", alpha.float().view(1, -1, 1, 1))
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(hard_sign(x), self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return out * self.alpha


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def to_runtime(model: BnasNetwork, threads: int | None = None) -> PackedBinaryNet:
    """The inference runtime of a trained net: packed convs where the kernel supports the shape,
    :class:`FallbackBinaryConv2d` elsewhere (``model`` is not changed)."""
    net = copy.deepcopy(model).cpu().eval()
    for name, conv in list(binary_convs(net)):
        if not packable(conv):
            _set(net, name, FallbackBinaryConv2d(conv))
    if not list(binary_convs(net)):
        return PackedBinaryNet(net)
    return to_packed(net, threads)


def _twin(model: BnasNetwork) -> BnasNetwork:
    """The learned-scale net rebuilt from ``model.config`` holding its exported binary weights."""
    twin = bnas_network(**model.config).eval()
    state, src = twin.state_dict(), model.state_dict()
    convs = dict(binary_convs(model))
    for key in state:
        owner = key.rpartition(".")[0]
        if owner in convs:
            continue
        if key not in src or src[key].shape != state[key].shape:
            raise ArtifactError(f"the model has no tensor {key!r} of shape {tuple(state[key].shape)}")
        state[key] = src[key].detach().cpu().clone()
    for name, conv in convs.items():
        wb, alpha = exported(conv)
        state[f"{name}.weight"], state[f"{name}.alpha"] = wb, alpha
    twin.load_state_dict(state, strict=True)
    return twin


def export_bnas_artifact(model: BnasNetwork, path: str | Path, data=None, metrics: dict | None = None,
                         extra: dict | None = None) -> dict:
    """Write a trained :class:`BnasNetwork` as a packed-runtime artifact; checks first that the
    rebuilt net reproduces ``model.eval()`` logits exactly on a seeded probe. Returns the manifest."""
    was_training = model.training
    model.eval()
    try:
        twin = _twin(model)
        input_spec, normalization = input_specs(model.config, data)
        size = tuple(int(v) for v in input_spec["size"])
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(2, int(model.config["in_chans"]), *size, generator=gen)
        with torch.no_grad():
            ref, got = model(probe), twin(probe)
    finally:
        model.train(was_training)
    if not torch.equal(ref, got):
        raise ArtifactError(f"the rebuilt BNAS net does not reproduce the model's logits "
                            f"(max |difference| {float((ref - got).abs().max()):.3g})")
    fallback = fallback_convs(twin)
    return write_packed_artifact(
        path, twin, arch=ARCH, config=model.config, method="bnas", input_spec=input_spec,
        normalization=normalization, size=size, metrics=metrics, extra=extra,
        binary={"packed_convs": len(dict(binary_convs(twin))) - len(fallback), "fallback": fallback},
        weight_layout="(out, in/groups, k, k)")


def load_bnas(manifest: dict, state: dict, path: str | Path) -> PackedBinaryNet:
    """The runtime model of a verified BNAS artifact (``state``: its safetensors payload)."""
    try:
        twin = bnas_network(**manifest["config"]).eval()
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot rebuild the BNAS network from its manifest: {exc}") from None
    for name, conv in binary_convs(twin):
        bits = state.pop(f"{name}.weight_bits", None)
        shape = tuple(conv.weight.shape)
        if bits is None or bits.dtype != torch.uint8 or bits.numel() != (int(np.prod(shape)) + 7) // 8:
            raise ArtifactError(f"{path}: binary conv {name!r} has no 1-bit weights of shape {shape}")
        state[f"{name}.weight"] = unpack_bits(bits, shape)
    load_checked(twin, state, manifest, path)
    runtime = to_runtime(twin)
    fallback = [n for n, m in runtime.named_modules() if isinstance(m, FallbackBinaryConv2d)]
    packed = len(runtime.packed_convs())
    log.info("BNAS artifact %s: %d binary convs on the packed XNOR/popcount kernel, %d on the %s "
             "fallback (depthwise/dilated shapes the kernel does not take)%s", path, packed,
             len(fallback), FALLBACK, f": {', '.join(fallback[:6])}..." if fallback else "")
    runtime.fallback = fallback
    return runtime
