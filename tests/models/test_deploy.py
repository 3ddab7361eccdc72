from __future__ import annotations

import copy

import torch
from torch import nn

from vistream.models.backbones import create_model
from vistream.models.deploy import fold_batchnorm, optimize_for_cpu
from vistream.models.flops import compare_latency


def _trained_like(arch: str, **kw) -> nn.Module:
    """A model whose BN layers hold non-trivial statistics (as after training)."""
    torch.manual_seed(0)
    m = create_model(arch, num_classes=10, **kw)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def test_folding_removes_every_conv_bn_pair_and_keeps_the_outputs():
    for arch, kw in (("resnet20", {"base": 8}), ("vgg16", {"widths": [16] * 13}), ("resnet18", {"base": 8})):
        m = _trained_like(arch, **kw)
        before = copy.deepcopy(m.state_dict())
        x = torch.randn(3, 3, 32, 32)
        d = optimize_for_cpu(m)
        assert not any(isinstance(b, nn.BatchNorm2d) for b in d.modules()), arch
        with torch.no_grad():
            assert torch.allclose(d(x.contiguous(memory_format=torch.channels_last)), m(x), atol=1e-4), arch
            assert torch.allclose(d.forward_features(x), m.forward_features(x), atol=1e-4), arch
        # a copy: the caller's model keeps its BNs and weights
        assert any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


class _SharedConvOutput(nn.Module):
    """A conv output read by its BN *and* by the residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_model_that_folding_would_change_is_left_unfolded():
    m = _SharedConvOutput().eval()
    m.bn.running_var.fill_(4.0)
    m.bn.running_mean.fill_(1.0)
    folded = fold_batchnorm(m, torch.randn(1, 3, 8, 8))
    assert not any(isinstance(b, nn.BatchNorm2d) for b in folded.modules())
    d = optimize_for_cpu(m, input_size=(8, 8))
    assert isinstance(d.bn, nn.BatchNorm2d)  # the probe check caught it
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(d(x), m(x), atol=1e-5)


def test_packed_binary_nets_are_run_as_they_are():
    from vistream.models.binary.layers import BinaryResNet
    from vistream.models.binary.packed import to_packed

    p = to_packed(BinaryResNet(depth=20, base=8).eval())
    assert optimize_for_cpu(p) is p


def test_compare_latency_measures_plain_and_deployed_forms():
    import pytest

    a = _trained_like("resnet20", widths=[4] * 9, base=4)
    t = compare_latency([a, a], batch=2, input_size=(16, 16), rounds=1, reps=1, deploy=[False, True])
    assert len(t) == 2 and all(v > 0 for v in t)
    assert any(isinstance(b, nn.BatchNorm2d) for b in a.modules())
    with pytest.raises(ValueError, match="one flag per model"):
        compare_latency([a, a], deploy=[True])
