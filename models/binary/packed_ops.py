"""The parts of the bit-packed runtime around the binary conv (see :mod:`models.binary.packed`):
access to the C extension and the choice of its kernel, the bit layouts of the weights, and the
float modules that run faster than torch's with torch's own arithmetic — pooling in the
extension, the channels-last stem, and the per-shape bit-for-bit check that guards every such
fusion (:func:`_fast_if_exact`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

try:
    from vistream.models.binary import _bitconv
except ImportError:  # pragma: no cover - only without a build; _ext() says what to do
    _bitconv = None


def _ext():
    if _bitconv is None:
        raise RuntimeError("the bit-packed kernel models.binary._bitconv is not built; run `make install` "
                           "(or `pip install -e .`) to compile models/binary/csrc/bitconv.c")
    return _bitconv


def kernel_info() -> dict:
    """What the extension runs: ``kernel`` (the active kernel's name: ``avx512-vpopcntdq``,
    ``avx2-vpshufb-nibble`` or ``portable-popcount``), ``option`` (its ``VISTREAM_KERNEL``
    name), ``available`` (the kernels this CPU runs), ``compiled`` (those in the build),
    ``cpu_features`` (what the CPU offers), ``block`` and ``nibbles`` (the weight layout),
    ``threads`` and ``error`` (why no kernel is active: a ``VISTREAM_KERNEL`` the CPU lacks)."""
    return dict(_ext().info())


def available_kernels() -> list[str]:
    """The kernels this CPU runs, widest first (``avx512``, ``avx2``, ``portable``)."""
    return list(_ext().info()["available"])


_KERNEL_GEN = [0]  # bumped at every switch: packed convs then lay their weights out anew


def set_kernel(name: str) -> str | None:
    """Make ``name`` (``avx512``, ``avx2`` or ``portable``) the active kernel for the whole
    process; :class:`ValueError` when this CPU lacks it. Returns the previous one's name."""
    old = _ext().set_kernel(name)
    _KERNEL_GEN[0] += 1
    return old


@contextmanager
def use_kernel(name: str):
    """Run the packed runtime on kernel ``name`` inside the block (tests, benchmarks)."""
    old = set_kernel(name)
    try:
        yield
    finally:
        if old is not None:
            set_kernel(old)


# ----------------------------------------------------------------------------- bit storage
def pack_bits(wb: torch.Tensor) -> torch.Tensor:
    """±1 weights -> uint8 tensor of ``ceil(numel / 8)`` bytes (bit set = -1, little bit order)."""
    neg = (wb.detach().cpu().reshape(-1) < 0).numpy()
    return torch.from_numpy(np.packbits(neg, bitorder="little"))


def unpack_bits(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: float32 ±1 weights of ``shape``."""
    n = int(np.prod(shape))
    neg = np.unpackbits(bits.cpu().numpy().astype(np.uint8, copy=False), count=n, bitorder="little")
    return torch.from_numpy(1.0 - 2.0 * neg.astype(np.float32)).reshape(shape)


def kernel_weights(wb: torch.Tensor, block: int, nibbles: int = 2) -> np.ndarray:
    """±1 weights (O, C, k, k) -> the kernel's layout ``[ceil(O/block)][k*k][Cw][nibbles][block]``
    of uint64 words: channel ``c`` at bit ``c % 64`` of word ``c // 64`` (bit set = -1, padding
    bits 0). ``nibbles=2`` (the AVX2 kernel): each word stored as its low nibbles
    (``word & 0x0f..``) then its high nibbles (``(word >> 4) & 0x0f..``), the split its table
    popcount wants; ``nibbles=1`` (AVX-512 and portable kernels): the plain words."""
    o, c, kh, kw = wb.shape
    cw, ob = -(-c // 64), -(-o // block)
    neg = np.zeros((ob * block, kh, kw, cw * 64), dtype=bool)
    neg[:o, :, :, :c] = (wb.detach().cpu() < 0).numpy().transpose(0, 2, 3, 1)
    words = np.packbits(neg, axis=-1, bitorder="little").view("<u8").reshape(ob, block, kh * kw, cw)
    words = words.transpose(0, 2, 3, 1).astype(np.uint64)
    if nibbles == 1:
        return np.ascontiguousarray(words[:, :, :, None, :])
    if nibbles != 2:
        raise ValueError(f"nibbles must be 1 or 2, not {nibbles}")
    mask = np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.ascontiguousarray(np.stack([words & mask, (words >> np.uint64(4)) & mask], axis=3))


def _aligned(a: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``alignment``-byte boundary. numpy
    only promises 16 bytes; the kernel's 32-byte weight loads would then straddle cache lines
    in some processes and not in others (seen as 8 vs 11 ms per ResNet-18 forward)."""
    raw = np.empty(a.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _square(v) -> int | None:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return int(v[0]) if v[0] == v[1] else None


class PackedMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` computed by the extension: a max is exact, and the kernel visits each
    window in torch's order with torch's NaN rule, so the output equals torch's bit for bit
    (torch's NCHW max-pool is one of the slowest ops of a ResNet-18 at batch 1)."""

    def __init__(self, kernel_size: int, stride: int, padding: int, threads: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.threads = kernel_size, stride, padding, threads
        self._exact: dict[tuple, bool] = {}  # per input shape: the fused BatchNorm is exact
        self._terms: tuple | None = None  # (bn_a, bn_b) of the BatchNorm applied in after_bn

    @classmethod
    def maybe_from(cls, m: nn.MaxPool2d, threads: int | None = None) -> PackedMaxPool2d | None:
        k, s, p = _square(m.kernel_size), _square(m.stride), _square(m.padding)
        if None in (k, s, p) or _square(m.dilation) != 1 or m.ceil_mode or m.return_indices:
            return None
        return cls(k, s, p, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
            return torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        x = x.detach()
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        out = torch.empty((n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1))
        threads = self.threads or torch.get_num_threads()
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # read channels-last input as it lies (see ChannelsLastConv2d); output is NCHW
            _ext().maxpool_nhwc(x.permute(0, 2, 3, 1).numpy(), out.numpy(), n, c, h, w, k, s, p, threads)
        else:
            _ext().maxpool(x.contiguous().numpy(), out.numpy(), n, c, h, w, k, s, p, threads)
        return out

    def after_bn(self, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        """``self(bn(x))``; for a channels-last input (the stem conv's output, see
        :class:`ChannelsLastConv2d`) the eval BatchNorm is applied inside the pooling pass
        (``fma(x, a, b)`` per value, torch's own formula, see :func:`_bn_terms`) instead of
        writing its 112x112 output out and reading it back. Kept per input shape only if the
        first call equals ``self(bn(x))`` bit for bit."""
        if bn.training or not bn.track_running_stats or bn.running_var is None or x.dim() != 4 \
                or x.dtype != torch.float32 or x.device.type != "cpu" or x.is_contiguous() \
                or not x.is_contiguous(memory_format=torch.channels_last):
            return self(bn(x))
        return _fast_if_exact(self._exact, tuple(x.shape), lambda: self(bn(x)), lambda: self._pool_bn(x, bn))

    def _pool_bn(self, x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        if self._terms is None:  # reset when the stem loads a state dict (_StemSequential)
            self._terms = _bn_terms(bn)
        x = x.detach()
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        out = torch.empty((n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1))
        _ext().maxpool_nhwc(x.permute(0, 2, 3, 1).numpy(), out.numpy(), n, c, h, w, k, s, p,
                            self.threads or torch.get_num_threads(), *self._terms)
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _StemSequential(nn.Sequential):
    """A stem ``Sequential`` whose BatchNorm at ``_fuse_at`` is applied by the
    :class:`PackedMaxPool2d` right after it (:meth:`PackedMaxPool2d.after_bn`); the same
    children and state-dict keys as the original."""

    _fuse_at: int = -1

    def _load_from_state_dict(self, *args, **kwargs):  # new BN statistics -> new constants
        super()._load_from_state_dict(*args, **kwargs)
        if 0 <= self._fuse_at < len(self) - 1:
            self[self._fuse_at + 1]._terms = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = list(self)
        i = 0
        while i < len(mods):
            if i == self._fuse_at and not self.training:
                x = mods[i + 1].after_bn(x, mods[i])
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x


class PackedAvgPool2d(nn.Module):
    """``nn.AvgPool2d`` without padding computed by the extension in torch's own order (a float
    sum over the window row by row, then one division), so the output equals torch's bit for
    bit; torch's NCHW average pool is ~10x slower at batch 1 (the down-sampling shortcuts)."""

    def __init__(self, kernel_size: int, stride: int, threads: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.threads = kernel_size, stride, threads

    @classmethod
    def maybe_from(cls, m: nn.AvgPool2d, threads: int | None = None) -> PackedAvgPool2d | None:
        k, s, p = _square(m.kernel_size), _square(m.stride), _square(m.padding)
        if None in (k, s) or p != 0 or m.ceil_mode or m.divisor_override is not None:
            return None
        return cls(k, s, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
            return torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride)
        x = x.detach().contiguous()
        n, c, h, w = x.shape
        k, s = self.kernel_size, self.stride
        out = torch.empty((n, c, (h - k) // s + 1, (w - k) // s + 1))
        _ext().avgpool(x.numpy(), out.numpy(), n, c, h, w, k, s, 0, self.threads or torch.get_num_threads())
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same float32 bits everywhere (NaN payloads and signed zeros too)."""
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _fast_if_exact(verdicts: dict, key: tuple, plain: Callable[[], torch.Tensor],
                   fast: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fast()`` where it has been seen to equal ``plain()`` bit for bit at this ``key`` (an
    input shape: the arithmetic of the paths depends on shapes, never on values); the first
    call at a key runs both, records the verdict and returns the plain result."""
    exact = verdicts.get(key)
    if exact is None:
        ref = plain()
        verdicts[key] = _bit_equal(ref, fast())
        return ref
    return fast() if exact else plain()


class ChannelsLastConv2d(nn.Conv2d):
    """A float conv (the stem: 3 input channels) run on channels-last input *when that gives
    torch's NCHW result bit for bit*. oneDNN computes a 3-channel conv about twice as fast from
    channels-last input, and here with the same arithmetic: the first call at each input shape
    computes both and keeps the channels-last path only if the outputs are identical (the
    arithmetic depends on the shape, never on the values). The output is channels-last; the
    BatchNorm after it (same formula in either layout) and :class:`PackedMaxPool2d` read it
    as it lies, and the pooled output is NCHW again."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelsLastConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        new.load_state_dict(conv.state_dict())
        new._exact = {}
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = super().forward
        if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu" or self.training:
            return plain(x)
        return _fast_if_exact(self._exact, tuple(x.shape), lambda: plain(x),
                              lambda: plain(x.contiguous(memory_format=torch.channels_last)))


def _bn_terms(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """torch's eval BatchNorm as ``y = fma(x, a, b)``: ``a = weight / sqrt(var + eps)`` in float32
    as torch forms it, ``b`` read off torch itself (``bn(0) = fma(0, a, b) = b``)."""
    var = bn.running_var.detach().float().cpu().numpy()
    a = np.float32(1) / np.sqrt(var + np.float32(bn.eps))
    if bn.weight is not None:
        a = a * bn.weight.detach().float().cpu().numpy()
    with torch.no_grad():
        b = bn(torch.zeros(1, bn.num_features, 1, 1)).reshape(-1).numpy()
    return np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)


def _channels_last_stems(net: nn.Module) -> None:
    """Swap the float conv of every conv -> BatchNorm -> max-pool stem for a ChannelsLastConv2d,
    and let the max-pool apply the BatchNorm (:class:`_StemSequential`)."""
    for seq in list(net.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        parts = list(seq.children())
        for i in range(len(parts) - 2):
            conv, bn, pool = parts[i:i + 3]
            if type(conv) is nn.Conv2d and conv.in_channels <= 4 and isinstance(bn, nn.BatchNorm2d) \
                    and isinstance(pool, PackedMaxPool2d):
                seq[i] = ChannelsLastConv2d.from_conv(conv)
                if type(seq) is nn.Sequential:  # the BN runs inside the pool (exact, checked)
                    seq.__class__ = _StemSequential
                    seq._fuse_at = i + 1


