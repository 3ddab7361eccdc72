from __future__ import annotations

import pytest

from vistream.models.backbones import create_model
from vistream.models.flops import count_flops, count_params, model_cost, torch_flops


@pytest.mark.parametrize("arch,widths", [("resnet20", None), ("resnet20", [3, 5, 7, 2, 9, 11, 4, 20, 33]),
                                         ("vgg16", [8] * 13)])
def test_flops_match_torch_counter(arch, widths):
    m = create_model(arch, num_classes=10, widths=widths)
    ours, ref = count_flops(m), torch_flops(m)
    assert abs(ours - ref) <= 0.01 * ref


def test_resnet18_other_input_and_params():
    m = create_model("resnet18", num_classes=5, widths=[8] * 8, base=8)
    assert abs(count_flops(m, (48, 48)) - torch_flops(m, (48, 48))) <= 0.01 * torch_flops(m, (48, 48))
    c = model_cost(m, (48, 48))
    assert c.params == count_params(m) == sum(p.numel() for p in m.parameters())
    assert c.macs * 2 == c.flops


def test_compare_latency_interleaved():
    from vistream.models.flops import compare_latency

    a = create_model("resnet20", num_classes=10, widths=[4] * 9, base=4)
    b = create_model("resnet20", num_classes=10, widths=[2] * 9, base=4)
    t = compare_latency([a, b], batch=2, input_size=(16, 16), rounds=1, reps=1)
    assert len(t) == 2 and all(v > 0 for v in t)

