"""The bit-packed runtime reproduces the float 1-bit forward exactly, and 1-bit artifacts
store one bit per binary weight."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vistream.models.artifacts import ArtifactError, load_artifact, read_artifact
from vistream.models.binary.layers import BinaryConv2d, BinaryResNet, binary_convs, hard_sign
from vistream.models.binary.packed import (
    PackedAvgPool2d,
    PackedBinaryConv2d,
    PackedBinaryUnit,
    PackedMaxPool2d,
    export_binary_artifact,
    kernel_weights,
    pack_bits,
    to_packed,
    unpack_bits,
)

SHAPES = [  # (batch, in, out, h, w, kernel, stride, padding)
    (2, 3, 5, 7, 9, 3, 1, 1),
    (1, 63, 17, 8, 8, 3, 2, 1),
    (3, 65, 33, 5, 6, 1, 1, 0),
    (2, 130, 20, 9, 7, 3, 2, 2),
    (1, 64, 64, 4, 4, 3, 1, 2),
    (2, 200, 3, 3, 3, 3, 1, 0),
    (2, 16, 16, 1, 1, 3, 1, 1),
    (2, 7, 9, 10, 11, 1, 2, 1),
    (1, 128, 48, 6, 5, 3, 2, 0),
]


def _reference(x, wb, alpha, stride, padding):
    return F.conv2d(hard_sign(x), wb, None, stride, padding) * alpha.view(1, -1, 1, 1)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_packed_conv_equals_float_conv_of_signs(shape):
    n, c, o, h, w, k, s, p = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w, generator=g)
    x.view(-1)[:5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.0])  # sign(0) = sign(-0) = +1
    wb = torch.where(torch.rand(o, c, k, k, generator=g) < 0.5, -1.0, 1.0)
    alpha = torch.rand(o, generator=g) + 0.01
    m = PackedBinaryConv2d(c, o, k, s, p)
    m.set_weights(wb, alpha)
    ref = _reference(x, wb, alpha, s, p)
    for threads in (1, 2):
        m.threads = threads
        assert torch.equal(m(x), ref)


def test_packed_conv_is_not_trivially_equal():
    """The check above can fail: a single flipped weight changes the output."""
    x = torch.randn(1, 65, 5, 5)
    wb = torch.ones(4, 65, 3, 3)
    m = PackedBinaryConv2d(65, 4, 3, 1, 1)
    m.set_weights(wb, torch.ones(4))
    wb2 = wb.clone()
    wb2[0, 64, 1, 1] = -1
    assert not torch.equal(m(x), _reference(x, wb2, torch.ones(4), 1, 1))


def test_from_binary_conv_matches_its_forward():
    torch.manual_seed(0)
    for scale in ("mean_abs", "learned"):
        conv = BinaryConv2d(70, 19, 3, 2, 1, scale=scale)
        if scale == "learned":  # a negative learned alpha is exported as |alpha| with flipped signs
            conv.alpha.data[3] = -conv.alpha.data[3]
        x = torch.randn(2, 70, 9, 9)
        with torch.no_grad():
            assert torch.equal(PackedBinaryConv2d.from_binary(conv)(x), conv(x))


def test_bit_storage_round_trip_and_kernel_layout():
    g = torch.Generator().manual_seed(3)
    wb = torch.where(torch.rand(5, 70, 3, 3, generator=g) < 0.5, -1.0, 1.0)
    bits = pack_bits(wb)
    assert bits.dtype == torch.uint8 and bits.numel() == (5 * 70 * 9 + 7) // 8
    assert torch.equal(unpack_bits(bits, tuple(wb.shape)), wb)
    planes = kernel_weights(wb, 16)  # [O/16][k*k][Cw][low/high nibbles][16]
    assert planes.shape == (1, 9, 2, 2, 16) and planes.dtype == np.uint64
    assert not (planes & np.uint64(0xF0F0F0F0F0F0F0F0)).any()  # each plane holds nibbles only
    words = planes[:, :, :, 0] | (planes[:, :, :, 1] << np.uint64(4))
    o, c, t = 4, 66, 5  # channel 66 -> word 1, bit 2
    assert bool((int(words[0, t, 1, o]) >> 2) & 1) == bool(wb[o, c, t // 3, t % 3] < 0)
    assert int(words[0, 0, 1, 7]) >> 6 == 0 and not words[0, :, :, 5:].any()  # padding stays 0


def _small_net(seed: int = 0) -> BinaryResNet:
    torch.manual_seed(seed)
    net = BinaryResNet(depth=8, num_classes=7, base=4, layout="cifar", widths=[5, 6, 9])
    with torch.no_grad():  # non-trivial BN statistics, so every float op matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_packed_resnet_logits_are_bit_identical():
    net = _small_net()
    packed = to_packed(net)
    assert len(packed.packed_convs()) == len(list(binary_convs(net))) == 6
    x = torch.randn(5, 3, 20, 20)
    with torch.no_grad():
        ref, got = net(x), packed(x)
        assert torch.equal(ref, got) and torch.equal(ref.argmax(1), got.argmax(1))
        assert torch.equal(net.forward_features(x), packed.forward_features(x))
    assert packed.num_features == net.num_features == 16
    with pytest.raises(RuntimeError):
        packed.train()


def _imagenet_net(seed: int = 0) -> BinaryResNet:
    torch.manual_seed(seed)
    net = BinaryResNet(depth=18, num_classes=5, base=8, layout="imagenet")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def test_packed_imagenet_layout_uses_fast_float_paths_and_stays_bit_identical():
    """Channels-last stem, packed pools and fused unit tails: same logits on every call (the
    first call at a shape checks each fast path, later calls use the ones that matched)."""
    net = _imagenet_net()
    packed = to_packed(net)
    kinds = {type(m).__name__ for m in packed.modules()}
    assert {"ChannelsLastConv2d", "PackedMaxPool2d", "PackedAvgPool2d", "PackedBinaryUnit"} <= kinds
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (2, 3, 64, 64), (1, 3, 96, 64), (1, 3, 96, 64)]:
            x = torch.randn(shape)
            assert torch.equal(packed(x), net(x))
            assert torch.equal(packed.forward_features(x), net.forward_features(x))
    units = [m for m in packed.modules() if isinstance(m, PackedBinaryUnit)]
    assert len(units) == 16 and all(set(u._exact) == {(2, 8, 16, 16), (1, 8, 24, 16)} for u in units[:2])
    binary = {f"{name}.weight" for name, _ in binary_convs(net)}
    floats = {k: v for k, v in net.state_dict().items() if k not in binary}
    state = packed.state_dict()  # the float tensors keep their names (artifacts load unchanged)
    assert all(torch.equal(state[f"net.{k}"], v) for k, v in floats.items())


def test_fused_unit_falls_back_when_its_arithmetic_differs(monkeypatch):
    """A fused tail that does not reproduce torch's BatchNorm bit for bit is detected at the
    first call and never used: the outputs stay the unfused ones."""
    import vistream.models.binary.packed_ops as packed_ops

    def off_by_one_ulp(bn):
        a, b = real_terms(bn)
        return np.nextafter(a, np.float32(np.inf)), b

    real_terms = packed_ops._bn_terms
    monkeypatch.setattr(packed_ops, "_bn_terms", off_by_one_ulp)
    net = _imagenet_net(1)
    packed = to_packed(net)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(packed(x), net(x))
    units = [m for m in packed.modules() if isinstance(m, PackedBinaryUnit)]
    assert units and all(v is False for u in units for v in u._exact.values())


def test_binary_artifact_round_trip_and_one_bit_storage(tmp_path):
    from safetensors.torch import load as st_load

    net = _small_net(1)
    path = tmp_path / "b.vsa"
    man = export_binary_artifact(net, path, method="xnor", metrics={"test_acc": 0.5})
    assert man["runtime"] == "packed" and man["method"] == "xnor" and man["arch"] == "binary_resnet"
    back = load_artifact(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
        assert torch.equal(back.forward_features(x), net.forward_features(x))
    assert back.model_id == man["model_id"] and back.input_spec["size"] == [32, 32]
    # one bit per binary weight, nothing else stored for those convs
    _, weights, _ = read_artifact(path)
    state = st_load(weights)
    n_bits = 0
    for name, conv in binary_convs(net):
        assert f"{name}.weight" not in state
        bits = state[f"{name}.weight_bits"]
        assert bits.dtype == torch.uint8 and bits.numel() == (conv.weight.numel() + 7) // 8
        n_bits += conv.weight.numel()
    size = man["binary"]["size"]
    assert size["binary_weights"] == n_bits and size["artifact_weight_bytes"] == len(weights)
    assert size["fp32_weight_bytes"] - size["artifact_weight_bytes"] >= n_bits * 4 - (n_bits + 7) // 8 - 6 * 8


def test_resnet18_layout_artifact_uses_registered_arch(tmp_path):
    torch.manual_seed(0)
    net = BinaryResNet(depth=18, layout="imagenet", num_classes=5, base=4).eval()
    man = export_binary_artifact(net, tmp_path / "r.vsa", method="rbcn",
                                 input_spec={"size": [64, 64], "channels": 3, "color": "RGB"})
    assert man["arch"] == "binary_resnet18"
    back = load_artifact(tmp_path / "r.vsa")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_tampered_binary_artifact_is_rejected(tmp_path):
    path = tmp_path / "b.vsa"
    export_binary_artifact(_small_net(2), path, method="xnor")
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 0x01  # a weight byte
    bad = tmp_path / "bad.vsa"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(bad)
    (n,) = struct.unpack_from("<Q", blob, 8)  # an edited manifest
    man = json.loads(bytes(blob[16:16 + n]))
    man["config"]["base"] = 8
    mb = json.dumps(man, sort_keys=True, indent=1).encode()
    edited = bytes(blob[:8]) + struct.pack("<Q", len(mb)) + mb + bytes(blob[16 + n:])
    (tmp_path / "ed.vsa").write_bytes(edited)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "ed.vsa")
    with pytest.raises(ArtifactError, match="CPU"):
        load_artifact(path, device="cuda")


def test_export_refuses_a_model_its_twin_cannot_reproduce(tmp_path):
    class Shifted(BinaryResNet):
        def forward(self, x):
            return super().forward(x) + 1.0

    torch.manual_seed(0)
    net = Shifted(depth=8, num_classes=3, base=4).eval()
    with pytest.raises(ArtifactError, match="reproduce"):
        export_binary_artifact(net, tmp_path / "s.vsa", method="odd")
    man = export_binary_artifact(net, tmp_path / "s.vsa", method="odd", strict=False)
    assert man["binary"]["exact_vs_source"] is False


def test_features_stage_runs_a_binary_artifact(tmp_path):
    import vistream.stages.features  # noqa: F401
    from tests.conftest import make_frame
    from vistream.models.artifacts import preprocess
    from vistream.stages.base import create_stage

    net = _small_net(3)
    man = export_binary_artifact(net, tmp_path / "b.vsa", method="xnor")
    st = create_stage("features", {"artifact": str(tmp_path / "b.vsa"), "batch_size": 2})
    st.setup()
    frames = [make_frame(i) for i in range(3)]
    out = st.process(frames)
    assert [o.model_id for o in out] == [man["model_id"]] * 3 and out[0].vector.shape == (16,)
    x = preprocess([f.image for f in frames], man["input_spec"], man["normalization"])
    with torch.no_grad():  # same batches as the stage (float convs may round per batch size)
        ref = torch.cat([net.forward_features(x[:2]), net.forward_features(x[2:])]).numpy()
    assert np.array_equal(np.stack([o.vector for o in out]), ref)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), (1, 1, 0), (4, 2, 2)])
def test_packed_maxpool_equals_torch_bit_for_bit(k, s, p):
    """Same values, same NaN payloads and the same sign of every zero as torch's max_pool2d."""
    g = torch.Generator().manual_seed(k * 100 + s * 10 + p)
    x = torch.randn(2, 5, 13, 11, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.2, torch.zeros(()), x)  # +0 ...
    x = torch.where(torch.rand(x.shape, generator=g) < 0.1, -torch.zeros(()), x)  # ... and -0 ties
    x = torch.where(torch.rand(x.shape, generator=g) < 0.03, float("nan"), x)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.05, float("-inf"), x)
    x[0, 0] = -x[0, 0].abs() - 1.0  # a plane with no zero: a negative maximum
    x[0, 1] = float("-inf")  # all -inf
    ref = torch.nn.functional.max_pool2d(x, k, s, p)
    got = PackedMaxPool2d(k, s, p, threads=2)(x)
    assert got.shape == ref.shape
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 3), (3, 2), (2, 1)])
def test_packed_avgpool_equals_torch_bit_for_bit(k, s):
    g = torch.Generator().manual_seed(k * 10 + s)
    # magnitudes from 1e-6 to 1e6 in one window make every rounding of the running sum count
    x = torch.randn(2, 6, 15, 13, generator=g) * torch.exp(torch.randn(2, 6, 15, 13, generator=g) * 6)
    x[0, 0, :2] = -0.0
    m = torch.nn.AvgPool2d(k, s)
    fast = PackedAvgPool2d.maybe_from(m, threads=2)
    assert fast is not None and PackedAvgPool2d.maybe_from(torch.nn.AvgPool2d(2, 2, padding=1)) is None
    ref = m(x)
    got = fast(x)
    assert got.shape == ref.shape
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32))
