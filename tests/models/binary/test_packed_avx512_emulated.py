"""The AVX-512 kernel's own code run on a CPU without AVX-512: bitconv.c built with
-DBITCONV_EMULATE_AVX512 compiles the KISA 2 copy of bitconv_kern.h against scalar stand-ins
of its intrinsics (csrc/avx512_emu.h), so its layout, loops, word pairing and epilogue are
checked bit for bit against the reference here too. (What this cannot check: the real
instructions; test_packed_kernels.py runs those where the CPU has them.)"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from vistream.models.binary import packed as packed_mod
from vistream.models.binary import packed_ops
from vistream.models.binary.layers import BinaryResNet
from vistream.models.binary.packed import (
    PackedBinaryConv2d,
    PackedMaxPool2d,
    kernel_info,
    to_packed,
    use_kernel,
)

from .test_packed_kernels import SHAPES, _case, _imagenet_net, _reference

CSRC = Path(packed_mod.__file__).resolve().parent / "csrc"


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the emulated AVX-512 kernel")
    out = tmp_path_factory.mktemp("emu") / ("_bitconv" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [cc, "-shared", "-fPIC", "-O1", "-std=c11", "-ffp-contract=off", "-pthread",
           "-DBITCONV_EMULATE_AVX512", f"-I{sysconfig.get_paths()['include']}",
           str(CSRC / "bitconv.c"), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    spec = importlib.util.spec_from_file_location("_bitconv", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def avx512_emulated(emulated, monkeypatch):
    monkeypatch.setattr(packed_ops, "_bitconv", emulated)
    with use_kernel("avx512"):
        assert kernel_info()["kernel"] == "avx512-vpopcntdq-emulated"
        yield


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_avx512_conv_equals_reference(avx512_emulated, shape):
    n, c, o, h, w, k, s, p = shape
    x, wb, alpha = _case(shape)
    m = PackedBinaryConv2d(c, o, k, s, p, threads=2)
    m.set_weights(wb, alpha)
    assert torch.equal(m(x), _reference(x, wb, alpha, s, p))
    assert m._kernel.shape[3] == 1  # plain words, no nibble split


def test_emulated_avx512_resnet_and_pool(avx512_emulated):
    torch.manual_seed(0)
    net = BinaryResNet(depth=8, num_classes=7, base=4, layout="cifar", widths=[5, 70, 9]).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(to_packed(net)(x), net(x))
    y = torch.randn(2, 5, 11, 9)
    ref = torch.nn.functional.max_pool2d(y, 3, 2, 1)
    assert torch.equal(PackedMaxPool2d(3, 2, 1)(y), ref)
    big = _imagenet_net()  # channels-last stem with its BatchNorm inside the pool
    with torch.no_grad():
        z = torch.randn(1, 3, 64, 64)
        packed = to_packed(big)
        assert torch.equal(packed(z), big(z)) and torch.equal(packed(z), big(z))
