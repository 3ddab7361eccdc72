"""PC-DARTS partial-channel mixing, the operation mask and the sampled sub-networks."""

from __future__ import annotations

import pytest
import torch

from vistream.models.nas.bnas import derive_genotype
from vistream.models.nas.ops import PRIMITIVES, NasBinaryConv2d, make_op, packable
from vistream.models.nas.supernet import PartialMixedOp, SuperNet, channel_shuffle


def _unshuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_mixed_op_shapes_and_bypass(stride):
    torch.manual_seed(0)
    op = PartialMixedOp(8, stride, k=4).eval()
    x = torch.randn(2, 8, 8, 8)
    w = torch.full((len(PRIMITIVES),), 1 / len(PRIMITIVES))
    out = op(x, w, list(range(len(PRIMITIVES))))
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    # channel shuffle puts the 2 mixed channels first after un-shuffling; the other 6 bypass the ops
    back = _unshuffle(out, 4)
    bypass = x[:, 2:] if stride == 1 else torch.nn.functional.max_pool2d(x[:, 2:], 2)
    assert torch.equal(back[:, 2:], bypass)
    # and every op saw only C/k = 2 channels
    assert all(getattr(m, "in_channels", 2) <= 2 for m in op.ops.modules() if isinstance(m, torch.nn.Conv2d))


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert sorted(channel_shuffle(x, 4).flatten().tolist()) == list(range(8))
    assert torch.equal(_unshuffle(channel_shuffle(x, 4), 4), x)


def test_partial_channels_need_a_multiple_of_k():
    with pytest.raises(ValueError, match="multiple"):
        PartialMixedOp(6, 1, k=4)


def test_dropped_operations_are_not_computed_and_cost_less():
    torch.manual_seed(0)
    net = SuperNet(C=4, layers=3, steps=2, k=2)
    full = net.forward_macs((8, 8))
    net.mask[:, :, 4:] = False  # drop every conv op
    assert net.forward_macs((8, 8)) < full
    w = net.op_weights()
    assert torch.all(w[:, :, 4:] == 0) and torch.allclose(w.sum(-1), torch.ones(2, net.n_edges))
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_a_sampled_choice_runs_one_op_per_edge_and_gives_a_genotype():
    torch.manual_seed(0)
    net = SuperNet(C=4, layers=3, steps=2, k=2)
    choice = torch.full((2, net.n_edges), PRIMITIVES.index("sep_conv_3x3"))
    assert net(torch.randn(2, 3, 8, 8), choice).shape == (2, 10)
    with torch.no_grad():
        net.alphas.zero_()
        net.alphas[:, :, PRIMITIVES.index("dil_conv_3x3")] = 3.0
    g = derive_genotype(net)
    assert {op for op, _ in g.normal + g.reduce} == {"dil_conv_3x3"}
    assert len(g.normal) == 2 * net.steps


def test_binarized_ops_and_what_the_packed_kernel_takes():
    sep = make_op("sep_conv_3x3", 4, 1)
    convs = [m for m in sep.modules() if isinstance(m, NasBinaryConv2d)]
    assert len(convs) == 4 and [packable(c) for c in convs] == [False, True, False, True]
    dil = [m for m in make_op("dil_conv_5x5", 4, 2).modules() if isinstance(m, NasBinaryConv2d)]
    assert dil[0].dilation == (2, 2) and not packable(dil[0])
    x = torch.randn(1, 4, 8, 8)
    # a binarized conv sees only signs: scaling the input does not change its output
    assert torch.equal(convs[1](x), convs[1](3 * x))
