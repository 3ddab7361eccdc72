"""The 1-bit training methods: circulant filters, the extra losses, the BGA, the runtime contract
and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vistream.models.binary.cbcn import (CirculantConv2d, CirculantExpand, circulant_perms, explicit_expand,
                                inverse_perms, rotation_permutation)
from vistream.models.binary.evaluate import binary_cost
from vistream.models.binary.gbcn import BalancedGA
from vistream.models.binary.layers import BinaryConv2d, binary_convs, hard_sign
from vistream.models.binary.train import BinaryTrainConfig, create_method, train_binary
from vistream.models.binary.xnor import Forward
from vistream.models.data import DataBundle, Split

METHODS = ["xnor", "cbcn", "bonn", "rbcn", "gbcn"]


@pytest.fixture(autouse=True)
def one_thread():
    # tiny tensors: thread hand-offs cost more than the maths on a loaded 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_teacher():
    from vistream.models.backbones import create_model

    torch.manual_seed(1)
    return create_model("resnet20", num_classes=3, base=4).eval()


def tiny_method(name: str, ablate: bool = False, **kw):
    if name in ("rbcn", "gbcn"):
        kw.setdefault("teacher", tiny_teacher())
    return create_method(name, ablate=ablate, **kw)


def tiny_data(n: int = 12, size: int = 8) -> DataBundle:
    rng = np.random.default_rng(0)
    x = rng.random((n, 3, size, size), dtype=np.float32)
    y = np.arange(n) % 3
    s = Split(x, y.astype(np.int64))
    return DataBundle("tiny", s, s, s, 3, ["a", "b", "c"])


# ------------------------------------------------------------------ circulant filters
def test_rotation_is_a_permutation_with_fixed_centre():
    for s in range(8):
        p = rotation_permutation(s)
        assert sorted(p.tolist()) == list(range(9))
        assert int(p[4]) == 4
    one = rotation_permutation(1)
    p = torch.arange(9)
    for _ in range(8):
        p = p[one]
    assert p.tolist() == list(range(9))                  # 8 x 45 deg = identity
    assert rotation_permutation(1)[rotation_permutation(1)].tolist() == rotation_permutation(2).tolist()
    w = torch.arange(9.0).view(3, 3)
    assert torch.equal(w.flatten()[rotation_permutation(2)].view(3, 3), torch.rot90(w, -1))
    assert not torch.equal(rotation_permutation(1), torch.arange(9))
    perms = circulant_perms(4)
    assert perms.shape == (4, 9) and torch.equal(perms[0], torch.arange(9))
    inv = inverse_perms(perms)
    for j in range(4):
        assert torch.equal(perms[j][inv[j]], torch.arange(9))
    with pytest.raises(ValueError):
        circulant_perms(3)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_circulant_backprop_sums_gradients_of_the_copies(k):
    torch.manual_seed(0)
    w = torch.randn(3, 5, 3, 3, requires_grad=True)
    w2 = w.detach().clone().requires_grad_(True)
    perms = circulant_perms(k)
    g = CirculantExpand.apply(w, perms, inverse_perms(perms))
    ref = explicit_expand(w2, k)
    assert torch.equal(g, ref)
    assert torch.equal(g[1], w.detach()[0].flatten(1)[:, perms[1]].view(5, 3, 3))
    up = torch.randn_like(g)
    (g * up).sum().backward()
    (ref * up).sum().backward()
    assert torch.allclose(w.grad, w2.grad, atol=1e-6)
    # the centre weight's gradient is the plain sum over the copies (it never moves)
    assert torch.allclose(w.grad[:, :, 1, 1], up.view(3, k, 5, 3, 3)[:, :, :, 1, 1].sum(1), atol=1e-6)


def test_circulant_conv_learns_out_over_k_filters():
    conv = CirculantConv2d(6, 8, k=4)
    assert conv.weight.shape == (2, 6, 3, 3)
    wb, alpha = conv.export()
    assert wb.shape == (8, 6, 3, 3)
    assert torch.allclose(alpha[:4], alpha[0].expand(4))  # rotation keeps mean |w|
    plain = CirculantConv2d(6, 8, k=4, circulant=False)
    assert plain.weight.shape == (8, 6, 3, 3)


def test_paper_cbcn_shares_each_filter_over_the_k_channels_of_a_feature_map():
    torch.manual_seed(0)
    conv = CirculantConv2d(8, 12, k=4, share_in=True)     # 2 -> 3 feature maps of K=4 channels
    assert conv.weight.shape == (3, 2, 3, 3)               # one 2D filter per (out map, in map)
    g = conv.expanded_weight()
    assert g.shape == (12, 8, 3, 3)
    perms = circulant_perms(4)
    for h in range(3):
        for j in range(4):
            for gi in range(2):
                ref = conv.weight.detach()[h, gi].flatten()[perms[j]].view(3, 3)
                for c in range(4):
                    assert torch.equal(g.detach()[h * 4 + j, gi * 4 + c], ref)
    g.sum().backward()                                     # each replica/copy adds 1 to every weight
    assert torch.allclose(conv.weight.grad, torch.full_like(conv.weight, 16.0))


def test_paper_cbcn_learns_as_many_filters_as_xnor_on_k_times_wider_maps():
    def learned(name, **kw):
        model = create_method(name, **kw).build(3, 3, base=4)
        return sum(c.weight.numel() for _, c in binary_convs(model)), model

    n_xnor, xnor = learned("xnor")
    n_cbcn, cbcn = learned("cbcn", k=4)
    assert n_cbcn == n_xnor
    assert cbcn.num_features == 4 * xnor.num_features
    n_abl, abl = learned("cbcn", ablate=True)
    assert n_abl == n_xnor and abl.num_features == xnor.num_features


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", METHODS)
def test_every_method_obeys_the_runtime_contract(name):
    torch.manual_seed(0)
    m = tiny_method(name)
    model = m.build(3, 3, base=4)
    model.eval()
    seen = []

    def check(conv, inp, out):
        wb, alpha = conv.export()
        assert set(torch.unique(wb).tolist()) <= {-1.0, 1.0}
        assert wb.shape == (conv.out_channels, conv.in_channels, 3, 3)
        assert alpha.shape == (conv.out_channels,) and bool((alpha >= 0).all())
        ref = F.conv2d(hard_sign(inp[0]), wb, None, conv.stride, conv.padding) * alpha.view(1, -1, 1, 1)
        assert torch.allclose(out, ref, atol=1e-5)
        seen.append(conv)

    hooks = [c.register_forward_hook(check) for _, c in binary_convs(model)]
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    for h in hooks:
        h.remove()
    assert len(seen) == 18 and all(isinstance(c, BinaryConv2d) for c in seen)
    cost = binary_cost(model, (8, 8))
    assert cost["binary_weight_bits"] == sum(c.export()[0].numel() for c in seen)


# ------------------------------------------------------------------ extra losses fall
def _overfit(name: str, steps: int, **kw) -> tuple[dict, dict]:
    torch.manual_seed(0)
    data = tiny_data()
    m = tiny_method(name, **kw)
    model = m.build(3, 3, base=4)
    cfg = BinaryTrainConfig(lr=5e-3)
    m.epoch, m.epochs = 1, 1                      # the fine-tuning phase (centre / feature losses)
    m.setup(model, data, cfg)
    opts = m.optimizers(model, cfg)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    first = last = None
    for _ in range(steps):
        _, parts = m.step(model, opts, x, y)
        first = first or parts
        last = parts
    return first, last


@pytest.mark.parametrize("name,term,kw", [
    ("cbcn", "center", {"center_weight": 1.0}),
    ("bonn", "kernel", {"lam": 1.0}),
    ("bonn", "feature", {"theta": 1.0}),
    ("rbcn", "kernel", {"lambda1": 1.0}),
    ("gbcn", "kernel", {"lambda1": 1.0, "bga_every": 3}),
])
def test_extra_loss_is_finite_and_falls(name, term, kw):
    first, last = _overfit(name, 15, **kw)
    assert np.isfinite(first[term]) and np.isfinite(last[term])
    assert last[term] < first[term]
    assert sum(last.values()) < sum(first.values())   # the whole objective falls too


def test_adversarial_game_waits_for_its_warm_up():
    m = tiny_method("rbcn", gan_warmup=0.5)
    model = m.build(3, 3, base=4)
    m.setup(model, tiny_data(), BinaryTrainConfig())
    m.epochs = 4
    m.epoch = 1
    assert not m.gan_active()
    m.epoch = 2
    assert m.gan_active()


def test_adversarial_loss_is_finite_and_ablation_removes_it():
    first, last = _overfit("rbcn", 3)
    assert np.isfinite(last["adv"]) and last["adv"] > 0
    _, abl = _overfit("rbcn", 2, ablate=True)
    assert "adv" not in abl
    _, bonn_abl = _overfit("bonn", 2, ablate=True)
    assert set(bonn_abl) == {"ce"}


def test_bga_round_never_worsens_the_probe_and_keeps_balance():
    torch.manual_seed(0)
    data = tiny_data()
    model = tiny_method("rbcn").build(3, 3, base=4).eval()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    ga = BalancedGA(population=5, generations=2, mutation=0.5, cand_frac=0.1, seed=0)
    before = {n: ga.imbalance(c.weight.detach()) for n, c in binary_convs(model)}
    with torch.no_grad():
        base_ce = float(F.cross_entropy(model(x), y))
    out = ga.run(model, x, y)
    assert out["best"] <= out["base"] + 1e-9
    with torch.no_grad():
        after_ce = float(F.cross_entropy(model(x), y))
    if out["accepted"]:
        assert after_ce < base_ce + ga.balance_weight  # fitness = CE + balance penalty improved
        assert ga.flipped > 0
    else:
        assert after_ce == pytest.approx(base_ce)
    for n, c in binary_convs(model):
        lim = torch.clamp(before[n], min=ga.balance_tol)
        assert bool((ga.imbalance(c.weight.detach()) <= lim + 1e-6).all())


# ------------------------------------------------------------------ loop, checkpoints, resume
def test_train_loop_checkpoints_and_resumes(tmp_path):
    data = tiny_data(24)
    cfg = BinaryTrainConfig(epochs=1, batch_size=12, base=4, augment=False)
    model, res = train_binary(tiny_method("gbcn", bga_every=1), data, cfg, ckpt_dir=tmp_path,
                              progress=False)
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    assert len(res.history) == 1 and "loss_kernel" in res.history[0]
    cfg.epochs = 2
    m = tiny_method("gbcn", bga_every=1)
    _, res2 = train_binary(m, data, cfg, ckpt_dir=tmp_path, resume=True, progress=False)
    assert res2.epochs_run == 1 and len(res2.history) == 2
    assert m.ga.rounds == 4                           # 2 steps restored + 2 new


def test_forward_keeps_stage_features_for_teacher_losses():
    m = tiny_method("xnor")
    model = m.build(3, 3, base=4)
    fwd = Forward(model, torch.randn(2, 3, 8, 8))
    assert [f.shape[1] for f in fwd.stages] == [4, 8, 16]
    assert fwd.logits.shape == (2, 3)


# ------------------------------------------------------------------ CLI
def test_cli_help_and_clear_errors():
    from typer.testing import CliRunner

    from vistream.cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "binary", "--help"])
    assert r.exit_code == 0 and "--method" in r.output and "--no-gan" in r.output
    r = runner.invoke(app, ["train", "binary", "--method", "bnn"])
    assert r.exit_code == 2 and "unknown method 'bnn'" in r.output
    r = runner.invoke(app, ["train", "binary", "--method", "xnor", "--no-gan"])
    assert r.exit_code == 2 and "does not apply" in r.output
    r = runner.invoke(app, ["train", "binary", "--method", "xnor", "--arch", "resnet18"])
    assert r.exit_code == 2 and "6n+2" in r.output
    r = runner.invoke(app, ["eval", "binary", "--help"])
    assert r.exit_code == 0 and "--seeds" in r.output
