"""Bit-packed CPU runtime for 1-bit networks, and their one-file artifacts.

:class:`PackedBinaryConv2d` runs ``conv2d(sign(x), W_b, stride, zero padding) * alpha`` — the
contract of :mod:`models.binary.layers` — with XNOR/popcount on 64-bit words in the C
extension ``models.binary._bitconv`` (``models/binary/csrc/bitconv.c``, built by
``make install`` / ``pip install -e .``): the activation signs are packed along the channels
in one pass per call, the weights once at load time; no float im2col exists. The integer dot
products are exact and get the same single float32 multiply by alpha as torch, so the output
is bit-identical to the training-time conv.

:func:`to_packed` copies a trained network (a :class:`~models.binary.layers.BinaryResNet` of any
method: every :class:`~models.binary.layers.BinaryConv2d` is read through its ``export()``) and
swaps each binary conv for its packed twin; the float parts (stem, BN, shortcuts, fc) keep
torch's arithmetic, so ``to_packed(model)(x)`` equals ``model.eval()(x)`` bit for bit. What
changes is only how some of them run: max and average pooling in the extension
(:class:`PackedMaxPool2d`, :class:`PackedAvgPool2d`, torch's order and NaN rule), the
3-channel stem conv on channels-last input (:class:`ChannelsLastConv2d`), and each Bi-Real
unit's BatchNorm and residual add inside its packed conv's output loop
(:class:`PackedBinaryUnit`); the last two check themselves bit for bit against the plain
path at the first call for each input shape and keep the plain path otherwise.

Artifacts (:func:`export_binary_artifact`, same file format as the float backbones, see
:mod:`models.artifacts`): each binary conv is stored as ``<name>.weight_bits`` — ``np.packbits``
of ``W_b < 0`` over the flattened ``(out, in, k, k)`` weight, little bit order, i.e. exactly
one bit per weight — plus ``<name>.alpha`` (float32); everything else is the float state dict.
The manifest says ``runtime: "packed"``, the method, the registered ``arch``
(:mod:`models.binary.zoo`) and ``binary.size`` (artifact weight bytes vs the fp32 state dict).
:func:`models.artifacts.load_artifact` returns the packed runtime model for such a file.

Alpha sign: the contract makes alpha non-negative; should a method export a negative one, the
export flips that filter's weights and stores ``|alpha|`` — ``(-d) * |a| == d * a`` exactly in
IEEE arithmetic, so nothing changes numerically.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from vistream.models.artifact_format import (
    FORMAT_VERSION,
    ArtifactError,
    input_specs,
    load_checked,
    state_bytes,
    write_artifact,
)
from vistream.models.backbones import create_model
from vistream.models.binary import packed_ops as _ops
from vistream.models.binary import zoo
from vistream.models.binary.layers import BinaryConv2d, BinaryUnit, binary_convs
from vistream.models.binary.packed_ops import (
    _KERNEL_GEN,
    ChannelsLastConv2d,
    PackedAvgPool2d,
    PackedMaxPool2d,
    _aligned,
    _channels_last_stems,
    _ext,
    _fast_if_exact,
    available_kernels,
    kernel_info,
    kernel_weights,
    pack_bits,
    set_kernel,
    unpack_bits,
    use_kernel,
)
from vistream.models.flops import binary_split, count_params

__all__ = [
    "ChannelsLastConv2d", "PackedAvgPool2d", "PackedBinaryConv2d", "PackedBinaryNet", "PackedBinaryUnit",
    "PackedMaxPool2d", "available_kernels", "export_binary_artifact", "kernel_info", "kernel_weights",
    "load_packed", "pack_bits", "set_kernel", "to_packed", "unpack_bits", "use_kernel",
]


def exported(conv: BinaryConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv.export()`` with any negative alpha folded into the filter's signs (exact)."""
    wb, alpha = conv.export()
    neg = alpha < 0
    if bool(neg.any()):
        wb = torch.where(neg.view(-1, 1, 1, 1), -wb, wb)
        alpha = alpha.abs()
    return wb.contiguous(), alpha.contiguous()


# ----------------------------------------------------------------------------- runtime modules
class PackedBinaryConv2d(nn.Module):
    """Inference-only binary conv on packed bits: ``conv2d(sign(x), W_b) * alpha``, zero padding.

    State: ``weight_bits`` (uint8, one bit per weight, see :func:`pack_bits`) and ``alpha``.
    ``threads`` = None uses ``torch.get_num_threads()``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 0, threads: int | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.threads = threads
        n = self.out_channels * self.in_channels * self.kernel_size ** 2
        self.register_buffer("weight_bits", torch.zeros((n + 7) // 8, dtype=torch.uint8))
        self.register_buffer("alpha", torch.ones(self.out_channels))
        self._kernel: np.ndarray | None = None  # weights in the kernel's layout, built lazily
        self._gen = -1  # the _KERNEL_GEN that layout was made for
        self._alpha_np: np.ndarray | None = None

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

    @classmethod
    def from_binary(cls, conv: BinaryConv2d, threads: int | None = None) -> PackedBinaryConv2d:
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1] \
                or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise ValueError("the packed runtime supports square kernels, equal strides/paddings, "
                             "groups=1 and dilation=1")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                conv.padding[0], threads)
        m.set_weights(*exported(conv))
        return m

    def set_weights(self, wb: torch.Tensor, alpha: torch.Tensor) -> None:
        if tuple(wb.shape) != self.weight_shape or tuple(alpha.shape) != (self.out_channels,):
            raise ValueError(f"weights {tuple(wb.shape)} / alpha {tuple(alpha.shape)} do not fit "
                             f"{self.weight_shape}")
        self.weight_bits = pack_bits(wb)
        self.alpha = alpha.detach().float().cpu().contiguous().clone()
        self._kernel = None

    def binary_weight(self) -> torch.Tensor:
        """The ±1 float32 weights these bits encode."""
        return unpack_bits(self.weight_bits, self.weight_shape)

    def _load_from_state_dict(self, *args, **kwargs):  # new bits -> rebuild the kernel layout
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel = None

    def _prepare(self) -> None:
        info = _ext().info()
        if info["error"]:
            raise RuntimeError(info["error"])
        self._gen = _KERNEL_GEN[0]
        self._kernel = _aligned(kernel_weights(self.binary_weight(), int(info["block"]),
                                               int(info["nibbles"])))
        self._alpha_np = self.alpha.detach().float().cpu().contiguous().numpy().copy()

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        n, _, h, w = shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return n, self.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise RuntimeError("the packed runtime runs on the CPU only")
        return x.detach().float().contiguous()

    def forward(self, x: torch.Tensor, bn_a: np.ndarray | None = None, bn_b: np.ndarray | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """The conv; optionally followed in the same pass by ``fma(out, bn_a[o], bn_b[o])`` and
        ``+ residual`` (a float32 NCHW tensor of the output's shape): see PackedBinaryUnit."""
        # Kept lean: at batch 1 the Python around the C call is ~10% of a 256-channel conv
        # (hence one combined test for the usual input, and numpy for the output allocation).
        if self._kernel is None or self._gen != _KERNEL_GEN[0]:
            self._prepare()
        if x.dtype is not torch.float32 or x.requires_grad or not x.is_cpu or not x.is_contiguous() \
                or x.dim() != 4:
            x = self._checked(x)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        out = np.empty(self.output_shape(x.shape), np.float32)
        k, s, p = self.kernel_size, self.stride, self.padding
        _ext().conv(x.numpy(), self._kernel, self._alpha_np, out, n, c, h, w,
                      self.out_channels, k, s, p, self.threads or torch.get_num_threads(), bn_a, bn_b,
                      None if residual is None else residual.numpy())
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bits={self.weight_bits.numel() * 8}")


class PackedBinaryUnit(nn.Module):
    """A Bi-Real unit, ``bn(conv(x)) + shortcut(x)``, whose BatchNorm and residual add run in
    the packed conv's output loop (one pass over the output instead of three, and two torch
    calls fewer per unit). torch's eval BatchNorm is one fused multiply-add per value with
    per-channel constants, which the kernel repeats; the first call at each input shape
    computes the unit both ways and keeps the fused path only if the two are identical bit for
    bit (a torch built without FMA would not be), so the output stays the training-time one."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.shortcut = unit.conv, unit.bn, unit.shortcut
        self._terms: tuple[np.ndarray, np.ndarray] | None = None
        self._exact: dict[tuple, bool] = {}

    @staticmethod
    def fusable(unit: nn.Module) -> bool:
        bn = getattr(unit, "bn", None)
        return type(unit) is BinaryUnit and isinstance(unit.conv, PackedBinaryConv2d) \
            and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None

    def _unfused(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + r

    def _fused(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self._terms is None:
            self._terms = _ops._bn_terms(self.bn)
        return self.conv(x, *self._terms, residual=r.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.shortcut(x)
        if self.training or x.dtype != torch.float32 or r.dtype != torch.float32 or x.dim() != 4 \
                or tuple(r.shape) != self.conv.output_shape(x.shape):
            return self._unfused(x, r)  # (odd sizes: torch broadcasts a smaller shortcut)
        return _fast_if_exact(self._exact, tuple(x.shape), lambda: self._unfused(x, r),
                              lambda: self._fused(x, r))

    def _load_from_state_dict(self, *args, **kwargs):  # new BN statistics -> new constants
        super()._load_from_state_dict(*args, **kwargs)
        self._terms = None


class PackedBinaryNet(nn.Module):
    """A trained 1-bit network whose binary convs run packed; inference only (CPU).

    ``net`` is a copy of the original network (same class, same float modules) with every
    :class:`BinaryConv2d` replaced by a :class:`PackedBinaryConv2d`; ``forward``,
    ``forward_features`` and ``stage_features`` are the original network's.
    """

    #: already in its deployed form (:func:`models.deploy.deployable`): BN folding or a
    #: channels-last copy would break the bit-exact match with the training-time forward
    runs_as_deployed = True

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.config = dict(getattr(net, "config", {}))
        self.num_features = int(getattr(net, "num_features", 0))
        self.eval()

    def train(self, mode: bool = True) -> PackedBinaryNet:
        if mode:
            raise RuntimeError("a PackedBinaryNet is inference-only; train the float BinaryResNet")
        return super().train(False)

    @property
    def fc(self) -> nn.Module:
        return self.net.fc

    def packed_convs(self) -> list[tuple[str, PackedBinaryConv2d]]:
        return [(n, m) for n, m in self.net.named_modules() if isinstance(m, PackedBinaryConv2d)]

    @torch.no_grad()
    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.stage_features(x)

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def to_packed(model: nn.Module, threads: int | None = None) -> PackedBinaryNet:
    """A packed copy of ``model`` (left untouched) that computes ``model.eval()(x)`` exactly."""
    net = copy.deepcopy(model).cpu().eval()
    convs = list(binary_convs(net))
    if not convs:
        raise ValueError("the model has no BinaryConv2d layers to pack")
    for name, conv in convs:
        _set_submodule(net, name, PackedBinaryConv2d.from_binary(conv, threads))
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.MaxPool2d):
            fast = PackedMaxPool2d.maybe_from(m, threads)
        elif isinstance(m, nn.AvgPool2d):
            fast = PackedAvgPool2d.maybe_from(m, threads)
        else:
            continue
        if fast is not None:  # exact either way; these are just faster than torch's at batch 1
            _set_submodule(net, name, fast)
    _channels_last_stems(net)
    for name, m in list(net.named_modules()):
        if PackedBinaryUnit.fusable(m):
            _set_submodule(net, name, PackedBinaryUnit(m))
    return PackedBinaryNet(net)


# ----------------------------------------------------------------------------- artifacts
def _twin(model: nn.Module) -> tuple[str, dict, nn.Module]:
    """The registered learned-scale BinaryResNet holding ``model``'s exported binary weights and
    its float state: what the artifact stores and what loading rebuilds."""
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if k != "arch"}
    if "layout" not in config or "depth" not in config:
        raise ArtifactError("only BinaryResNet-style models (config with depth/layout) can be exported")
    arch = zoo.arch_for(config)
    twin = create_model(arch, **config).eval()
    src = model.state_dict()
    state = twin.state_dict()
    packed = dict(binary_convs(model))
    twin_convs = dict(binary_convs(twin))
    if set(packed) != set(twin_convs):
        raise ArtifactError(f"binary convs of the model {sorted(packed)[:4]}... do not match "
                            f"{arch}'s {sorted(twin_convs)[:4]}...")
    for key in state:
        owner = key.rpartition(".")[0]
        if owner in twin_convs:
            continue
        if key not in src or src[key].shape != state[key].shape:
            raise ArtifactError(f"the model has no tensor {key!r} of shape {tuple(state[key].shape)} "
                                f"that {arch} needs")
        state[key] = src[key].detach().cpu().clone()
    for name, conv in packed.items():
        wb, alpha = exported(conv)
        state[f"{name}.weight"] = wb
        state[f"{name}.alpha"] = alpha
    twin.load_state_dict(state, strict=True)
    return arch, config, twin


def _size_report(twin: nn.Module, weights_bytes: int) -> dict:
    fp32 = len(state_bytes(twin))
    n_bin = sum(m.weight.numel() for _, m in binary_convs(twin))
    return {"artifact_weight_bytes": weights_bytes, "fp32_weight_bytes": fp32,
            "ratio_fp32_over_packed": round(fp32 / max(weights_bytes, 1), 3),
            "binary_weights": int(n_bin), "binary_weight_bytes": int(sum(
                (m.weight.numel() + 7) // 8 for _, m in binary_convs(twin)))}


def export_binary_artifact(model: nn.Module, path: str | Path, method: str, data=None,
                           metrics: dict | None = None, input_spec: dict | None = None,
                           normalization: dict | None = None, extra: dict | None = None,
                           strict: bool = True) -> dict:
    """Write a trained 1-bit network (any method's BinaryResNet) as a packed-runtime artifact.

    Binary conv weights are stored at one bit each; ``data`` (a :class:`models.data.DataBundle`)
    supplies input spec and normalisation unless they are given. The exported network is checked
    to reproduce ``model.eval()`` logits exactly on a seeded random probe before anything is
    written; a mismatch (a method whose eval forward leaves the shared layout) raises
    :class:`~models.artifacts.ArtifactError` unless ``strict=False``, which records it in the
    manifest (``binary.exact_vs_source``). Returns the manifest (``binary.size``: artifact vs
    fp32 weight bytes)."""
    was_training = model.training
    model.eval()
    try:
        arch, config, twin = _twin(model)
        input_spec, normalization = input_specs(config, data, input_spec, normalization)
        size = tuple(int(v) for v in input_spec["size"])
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(2, int(config.get("in_chans", 3)), *size, generator=gen)
        with torch.no_grad():
            ref, got = model(probe), twin(probe)
        same = torch.equal(ref, got)
        max_diff = float((ref - got).abs().max())
    finally:
        model.train(was_training)
    if not same and strict:
        raise ArtifactError(f"the registered binary twin does not reproduce the model's eval logits "
                            f"(max |difference| {max_diff:.3g}): the method's eval forward differs "
                            "from the shared BinaryResNet layout")
    return write_packed_artifact(path, twin, arch=arch, config=config, method=method,
                                 input_spec=input_spec, normalization=normalization, size=size,
                                 metrics=metrics, extra=extra,
                                 binary={"exact_vs_source": same, "max_logit_diff_vs_source": max_diff})


def write_packed_artifact(path: str | Path, twin: nn.Module, *, arch: str, config: dict, method: str,
                          input_spec: dict, normalization: dict, size: tuple[int, ...],
                          metrics: dict | None, extra: dict | None, binary: dict,
                          weight_layout: str = "(out, in, k, k)") -> dict:
    """Write ``twin`` (an eval-mode net whose :func:`binary_convs` are 1-bit) as a packed-runtime
    artifact: binary conv weights at one bit each, the rest as they are; ``binary`` adds to the
    manifest's ``binary`` block. Shared by every exporter of 1-bit nets (methods and BNAS)."""
    convs = dict(binary_convs(twin))
    state = {}
    for key, v in twin.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if owner in convs and leaf == "weight":
            state[f"{owner}.weight_bits"] = pack_bits(v)
        else:
            state[key] = v.detach().cpu().contiguous().clone()
    weights = save(state)
    bin_macs, float_flops = binary_split(twin, size)
    manifest: dict[str, Any] = {
        "format": "vistream-artifact", "format_version": FORMAT_VERSION, "runtime": "packed",
        "arch": arch, "config": config, "method": method,
        "input_spec": input_spec, "normalization": normalization,
        "num_features": int(twin.num_features),
        "binary_ops": int(bin_macs), "float_flops": int(float_flops),
        "flops": int(2 * bin_macs + float_flops),
        "flops_convention": "2 x MACs per image (conv+linear); binary_ops = binary MACs (XNOR+popcount "
                            "bit operations), float_flops = the float part",
        "params": count_params(twin),
        "param_shapes": {k: list(v.shape) for k, v in state.items()},
        "binary": {"storage": f"np.packbits(W_b < 0, bitorder='little') over {weight_layout}; "
                              "bit set = -1", "sign": "sign(x) = +1 for x >= 0, -1 otherwise",
                   "convs": sorted(convs), "size": _size_report(twin, len(weights)), **binary},
        "metrics": metrics or {},
        "weights": {"format": "safetensors", "bytes": len(weights),
                    "sha256": hashlib.sha256(weights).hexdigest()},
        "onnx": {"bytes": 0, "reason": "packed runtime: XNOR/popcount kernels have no ONNX form"},
        **(extra or {}),
    }
    manifest["model_id"] = f"{arch}-{method}-{manifest['weights']['sha256'][:12]}"
    return write_artifact(path, manifest, weights, b"")


def load_packed(twin: nn.Module, state: dict, manifest: dict, path: str | Path) -> PackedBinaryNet:
    """The packed runtime model of a verified ``runtime: packed`` artifact: ``twin`` is the
    registered architecture rebuilt from its manifest, ``state`` its safetensors payload with
    1-bit weights (see :func:`models.artifacts.load_artifact`)."""
    for name, conv in binary_convs(twin):
        bits = state.pop(f"{name}.weight_bits", None)
        shape = tuple(conv.weight.shape)
        if bits is None or bits.dtype != torch.uint8 or bits.numel() != (int(np.prod(shape)) + 7) // 8:
            raise ArtifactError(f"{path}: binary conv {name!r} has no 1-bit weights of shape {shape}")
        state[f"{name}.weight"] = unpack_bits(bits, shape)
    load_checked(twin, state, manifest, path)
    return to_packed(twin.eval())
