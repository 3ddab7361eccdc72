"""Every kernel of the bit-packed runtime (AVX-512, AVX2, portable; chosen by cpuid at load,
forced by VISTREAM_KERNEL or set_kernel) gives the reference result bit for bit. Kernels this
CPU lacks are skipped with the reason; the portable one always runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vistream.models.binary import packed as packed_mod
from vistream.models.binary import packed_ops
from vistream.models.binary.layers import BinaryResNet, hard_sign
from vistream.models.binary.packed import (
    PackedAvgPool2d,
    PackedBinaryConv2d,
    PackedMaxPool2d,
    available_kernels,
    kernel_info,
    kernel_weights,
    set_kernel,
    to_packed,
    use_kernel,
)

ALL = ("avx512", "avx2", "portable")


@pytest.fixture(params=ALL)
def kernel(request):
    name = request.param
    if name not in available_kernels():
        pytest.skip(f"this CPU lacks the {name} kernel (it offers {available_kernels()}, "
                    f"features {kernel_info()['cpu_features']})")
    with use_kernel(name):
        yield name


SHAPES = [  # (batch, in, out, h, w, kernel, stride, padding): border-only, interior fast path,
    (2, 3, 5, 7, 9, 3, 1, 1),          # windows longer than 31 words (byte-counter folding on
    (1, 63, 17, 8, 8, 3, 2, 1),        # AVX2), odd word counts (AVX-512 pairs of words), output
    (3, 65, 33, 5, 6, 1, 1, 0),        # blocks with fewer than 16 channels, rows over 64 wide
    (2, 130, 20, 9, 7, 3, 2, 2),
    (1, 256, 32, 6, 6, 3, 1, 1),
    (1, 512, 16, 5, 5, 3, 1, 1),
    (1, 200, 3, 3, 3, 3, 1, 0),
    (2, 16, 16, 1, 1, 3, 1, 1),
    (1, 64, 18, 3, 70, 3, 1, 1),
    (1, 192, 24, 6, 5, 1, 2, 0),
]


def _reference(x, wb, alpha, stride, padding):
    return F.conv2d(hard_sign(x), wb, None, stride, padding) * alpha.view(1, -1, 1, 1)


def _case(shape):
    n, c, o, h, w, k, s, p = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=g)
    x.view(-1)[:6] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("nan"), 0.0])  # NaN -> -1
    wb = torch.where(torch.rand(o, c, k, k, generator=g) < 0.5, -1.0, 1.0)
    alpha = torch.rand(o, generator=g) + 0.01
    return x, wb, alpha


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_kernel_equals_the_float_conv_of_signs(kernel, shape):
    n, c, o, h, w, k, s, p = shape
    x, wb, alpha = _case(shape)
    m = PackedBinaryConv2d(c, o, k, s, p)
    m.set_weights(wb, alpha)
    ref = _reference(x, wb, alpha, s, p)
    assert kernel_info()["option"] == kernel
    for threads in (1, 2):
        m.threads = threads
        assert torch.equal(m(x), ref)


def test_kernel_fused_bn_and_residual_tail(kernel):
    """conv -> fma(., a, b) -> + residual: one correctly rounded fma per value on every kernel
    (an instruction or libm's fmaf), so all kernels agree bit for bit."""
    x, wb, alpha = _case((2, 96, 40, 7, 7, 3, 1, 1))
    m = PackedBinaryConv2d(96, 40, 3, 1, 1)
    m.set_weights(wb, alpha)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(40, generator=g) + 0.5, torch.randn(40, generator=g)
    r = torch.randn(2, 40, 7, 7, generator=g)
    got = m(x, a.numpy(), b.numpy(), residual=r)
    with use_kernel("portable"):
        ref = m(x, a.numpy(), b.numpy(), residual=r)
    assert torch.equal(got, ref)
    conv = _reference(x, wb, alpha, 1, 1)
    assert torch.allclose(got, conv * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1) + r, atol=1e-5)


def test_switching_kernels_relays_the_weights():
    """A conv prepared for one kernel lays its weights out again after a switch (the AVX2
    layout is nibble-split, the others are not), and the results agree across kernels."""
    x, wb, alpha = _case((1, 130, 20, 6, 6, 3, 1, 1))
    m = PackedBinaryConv2d(130, 20, 3, 1, 1)
    m.set_weights(wb, alpha)
    outs = []
    for name in available_kernels():
        with use_kernel(name):
            outs.append(m(x))
            assert m._kernel.shape[3] == kernel_info()["nibbles"]
    assert all(torch.equal(o, outs[-1]) for o in outs)


def test_weights_laid_out_for_another_kernel_are_refused():
    x, wb, alpha = _case((1, 70, 16, 4, 4, 3, 1, 1))
    with use_kernel("portable"):
        ext = packed_mod._ext()
        words = kernel_weights(wb, 16, nibbles=2)  # the AVX2 layout: twice as many words
        out = np.empty((1, 16, 4, 4), np.float32)
        with pytest.raises(ValueError, match="layout"):
            ext.conv(x.numpy(), words, alpha.numpy(), out, 1, 70, 4, 4, 16, 3, 1, 1, 1)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (5, 3, 2)])
def test_every_kernel_pools_like_torch(kernel, k, s, p):
    g = torch.Generator().manual_seed(k + s + p)
    x = torch.randn(2, 9, 13, 11, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.1, -torch.zeros(()), x)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.03, float("nan"), x)
    ref = F.max_pool2d(x, k, s, p)
    assert torch.equal(PackedMaxPool2d(k, s, p, threads=2)(x).view(torch.int32), ref.view(torch.int32))
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(PackedMaxPool2d(k, s, p, threads=2)(nhwc).view(torch.int32), ref.view(torch.int32))
    if p == 0:
        got = PackedAvgPool2d(k, s, threads=2)(x)
        assert torch.equal(got.view(torch.int32), F.avg_pool2d(x, k, s).view(torch.int32))


def test_every_kernel_runs_a_resnet_bit_identically(kernel):
    torch.manual_seed(0)
    net = BinaryResNet(depth=8, num_classes=7, base=4, layout="cifar", widths=[5, 70, 9]).eval()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
        x = torch.randn(3, 3, 16, 16)
        assert torch.equal(to_packed(net)(x), net(x))


def test_info_reports_the_choice_and_the_cpu():
    info = kernel_info()
    assert info["option"] in info["available"] and "portable" in info["available"]
    assert set(info["compiled"]) >= {"portable"} and set(info["available"]) <= set(info["compiled"])
    assert info["available"][0] == info["option"]  # the widest available is the default
    if "avx512" in info["available"]:
        assert {"avx512f", "avx512bw", "avx512vl", "avx512vpopcntdq"} <= set(info["cpu_features"])
    if "avx2" in info["available"]:
        assert {"avx2", "fma", "popcnt"} <= set(info["cpu_features"])
    with pytest.raises(ValueError, match="unknown kernel"):
        set_kernel("sse9")


def _probe(env_value: str) -> subprocess.CompletedProcess:
    code = ("import torch, json\n"
            "from vistream.models.binary.packed import PackedBinaryConv2d, kernel_info\n"
            "print(json.dumps(kernel_info()))\n"
            "m = PackedBinaryConv2d(8, 16, 3, 1, 1)\n"
            "m(torch.randn(1, 8, 5, 5))\n"
            "print('ran')\n")
    env = {**os.environ, "VISTREAM_KERNEL": env_value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_vistream_kernel_forces_a_kernel_or_says_why_not():
    got = _probe("portable")
    assert got.returncode == 0, got.stderr
    assert '"option": "portable"' in got.stdout and "ran" in got.stdout
    missing = [k for k in ALL if k not in available_kernels()]
    bad = _probe(missing[0] if missing else "bogus")
    assert bad.returncode != 0 and "ran" not in bad.stdout
    assert "RuntimeError" in bad.stderr and "VISTREAM_KERNEL" in bad.stderr
    assert ("not supported by this CPU" if missing else "unknown kernel") in bad.stderr


def _imagenet_net() -> BinaryResNet:
    torch.manual_seed(0)
    net = BinaryResNet(depth=18, layout="imagenet", num_classes=10, base=16).eval()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return net


def test_stem_batchnorm_runs_inside_the_pool_bit_identically(kernel):
    net = _imagenet_net()
    packed = to_packed(net)
    stem = packed.net.stem
    assert type(stem).__name__ == "_StemSequential" and isinstance(stem[2], PackedMaxPool2d)
    assert set(dict(stem.named_parameters())) == set(dict(net.stem.named_parameters()))  # same keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(packed(x), net(x)) and torch.equal(packed(x), net(x))
    assert stem[2]._exact == {(2, 16, 32, 32): True}  # the fused path is the one in use


def test_stem_fusion_falls_back_when_its_arithmetic_differs(monkeypatch):
    net = _imagenet_net()
    packed = to_packed(net)

    def off_by_one_ulp(bn):
        a, b = real(bn)
        return np.nextafter(a, np.float32(np.inf)), b

    real = packed_ops._bn_terms
    monkeypatch.setattr(packed_ops, "_bn_terms", off_by_one_ulp)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(packed(x), net(x)) and torch.equal(packed(x), net(x))
    assert packed.net.stem[2]._exact == {(1, 16, 32, 32): False}


def test_stem_fusion_under_inference_mode_and_after_new_statistics():
    """Built and run under torch.inference_mode (as the bench does), and a state dict loaded
    into the packed net afterwards gives the new BatchNorm constants to the fused pool."""
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        net = _imagenet_net()
        packed = to_packed(net)
        assert torch.equal(packed(x), net(x)) and torch.equal(packed(x), net(x))
    net = _imagenet_net()
    packed = to_packed(net)
    with torch.no_grad():
        assert torch.equal(packed(x), net(x)) and torch.equal(packed(x), net(x))
        other = _imagenet_net()
        other.stem[1].running_mean.add_(0.5)
        other.stem[1].bias.sub_(0.25)
        packed.net.load_state_dict(other.state_dict(), strict=False)
        assert torch.equal(packed(x), other(x)) and not torch.equal(packed(x), net(x))
