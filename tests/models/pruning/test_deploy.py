"""The deployed form of pruned nets: zero-padded widths compute the same function, the padding
is chosen by measurement and recorded in the manifest, and deploying a loaded artifact applies
it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vistream.models.artifacts import export_artifact, load_artifact
from vistream.models.backbones import create_model
from vistream.models.deploy import optimize_for_cpu
from vistream.models.pruning.deploy import (
    deploy_pruned,
    export_deployed,
    interleaved_times,
    load_deployed,
    pad_widths,
    padded,
)
from vistream.models.pruning.surgery import prune

ODD = [5, 7, 9, 11, 13, 15, 20, 30, 41]


def _pruned(widths=ODD, seed=0):
    torch.manual_seed(seed)
    full = create_model("resnet20", num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics: folding and padding both see them
        for m in full.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return prune(full.eval(), widths).eval()


def test_padded_rounds_up():
    assert padded([5, 8, 9, 16, 17], 8) == [8, 8, 16, 16, 24]
    assert padded([5, 8], 1) == [5, 8]


@pytest.mark.parametrize("multiple", [8, 16])
def test_padding_keeps_the_function(multiple):
    model = _pruned()
    big = pad_widths(model, multiple)
    assert big.config["widths"] == padded(ODD, multiple) and model.config["widths"] == ODD
    assert all(w % multiple == 0 for w in big.config["widths"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), big(x)
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
        # deployed (BN folded, channels-last) too
        dep = optimize_for_cpu(big)
        assert torch.allclose(dep(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-4, rtol=1e-4)
    # the new channels are dead: zero conv1 filters and zero conv2 inputs
    w1 = big.blocks[0].conv1.weight
    assert w1.shape[0] == padded([5], multiple)[0] and not w1[5:].any()
    assert not big.blocks[0].conv2.weight[:, 5:].any()


def test_padding_is_not_trivially_equal():
    """The check above can fail: a padded channel with a live weight changes the output."""
    model = _pruned()
    big = pad_widths(model, 8)
    with torch.no_grad():
        big.blocks[0].bn1.bias[6] = 1.0  # padded channel 6 now outputs relu(1) = 1 ...
        big.blocks[0].conv2.weight[:, 6] = 0.5  # ... and conv2 reads it
        x = torch.randn(2, 3, 32, 32)
        assert not torch.allclose(big(x), model(x), atol=1e-3)


def test_aligned_or_unsupported_models_are_left_alone():
    model = _pruned([8] * 3 + [16] * 3 + [32] * 3)
    assert pad_widths(model, 8) is model
    with pytest.raises(ValueError, match="registered ResNet"):
        pad_widths(nn.Sequential(nn.Conv2d(3, 5, 3)), 8)


def test_deploy_pruned_measures_and_records():
    model = _pruned()
    form, rec = deploy_pruned(model, (32, 32), batches=(1, 2), rounds=2)
    assert set(rec["candidates_ms"]) == {"1", "8", "16"}
    assert all(set(v) == {"1", "2"} and min(v.values()) > 0 for v in rec["candidates_ms"].values())
    best = rec["pad_multiple"]
    assert rec["relative_time"][str(best)] == min(rec["relative_time"].values())
    assert rec["deployed_widths"] == padded(ODD, best) and rec["widths"] == ODD
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(form(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-4,
                              rtol=1e-4)
    json.dumps(rec)  # goes into a manifest


def test_export_deployed_writes_the_record_and_deploying_applies_it(tmp_path, monkeypatch):
    model = _pruned()
    spec = {"size": [32, 32], "channels": 3, "color": "RGB"}
    export_artifact(model, tmp_path / "p.vsa", method="abc", input_spec=spec, onnx=False)
    import vistream.models.pruning.deploy as dep

    real = dep.deploy_pruned

    def forced(m, size, **kw):  # pretend 16 measured fastest (timings are the machine's business)
        form, rec = real(m, size, batches=(1,), rounds=2, candidates=(1, 16))
        rec["pad_multiple"] = 16
        return form, rec

    monkeypatch.setattr(dep, "deploy_pruned", forced)
    man = export_deployed(tmp_path / "p.vsa", tmp_path / "d.vsa")
    assert man["deploy"]["pad_multiple"] == 16 and man["config"]["widths"] == ODD
    loaded = load_artifact(tmp_path / "d.vsa")
    assert loaded.manifest["deploy"]["pad_multiple"] == 16
    deployed = load_deployed(tmp_path / "d.vsa")
    assert deployed.config["widths"] == padded(ODD, 16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deployed(x.contiguous(memory_format=torch.channels_last)), model(x),
                              atol=1e-4, rtol=1e-4)


def test_interleaved_times_reports_both_clocks():
    calls = []
    t = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 2)
    assert set(t) == {"a", "b"} and all(len(v["wall"]) == len(v["cpu"]) == 3 for v in t.values())
    assert calls.count("a") == calls.count("b") == 1 + 3 * 2  # warm-up + rounds x calls
    assert calls[2:4] == ["a", "a"] and calls[6:8] == ["b", "b"]  # alternating order per round
