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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bga_applies_the_best_genome_it_evaluated_and_keeps_balance(seed):
    torch.manual_seed(seed)
    data = tiny_data()
    model = tiny_method("rbcn").build(3, 3, base=4).eval()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    ga = BalancedGA(population=5, generations=2, mutation=0.5, cand_frac=0.1, seed=seed)
    before = {n: ga.imbalance(c.weight.detach()) for n, c in binary_convs(model)}
    w0 = [c.weight.detach().clone() for _, c in binary_convs(model)]
    scores = []
    inner = ga.fitness

    def fitness(*a):
        scores.append(inner(*a))
        return scores[-1]

    ga.fitness = fitness
    out = ga.run(model, x, y)
    cands = ga.candidates(model)
    identity = [torch.zeros(len(idx), dtype=torch.bool) for _, idx in cands]
    now = inner(model, identity, cands, x, y)          # CE + balance of the model as left
    # the reported base is the unchanged network's score; elitism keeps the best ever seen
    assert out["base"] == scores[0] and out["best"] == pytest.approx(min(scores))
    if out["accepted"]:
        assert out["best"] < out["base"] - 1e-6
        assert now == pytest.approx(out["best"], abs=1e-6)   # the applied genome is the best
        assert any(not torch.equal(c.weight, w) for (_, c), w in zip(binary_convs(model), w0))
    else:
        assert min(scores) >= out["base"] - 1e-6
        assert all(torch.equal(c.weight, w) for (_, c), w in zip(binary_convs(model), w0))
    for n, c in binary_convs(model):
        lim = torch.clamp(before[n], min=ga.balance_tol)
        assert bool((ga.imbalance(c.weight.detach()) <= lim + 1e-6).all())


def test_bonn_kernel_loss_matches_a_hand_computation():
    from vistream.models.binary.bonn import BonnConv2d

    conv = BonnConv2d(1, 2, kernel_size=3, nu=0.5)
    w = torch.tensor([[0.3, -0.2, 0.0, 0.5, -0.6, 0.1, -0.05, 0.4, -0.3],
                      [-0.1, 0.2, 0.7, -0.4, 0.25, -0.9, 0.15, 0.0, 0.35]])
    with torch.no_grad():
        conv.weight.copy_(w.view(2, 1, 3, 3))
        conv.modulation.copy_(torch.linspace(-0.1, 0.5, 9))   # mean 0.2 -> scale 0.2
        conv.mu.copy_(torch.tensor([0.3, 0.5]))
        conv.log_sigma.copy_(torch.tensor([0.5, 0.2]).log())
    scale, mu, sigma, nu = 0.2, [0.3, 0.5], [0.5, 0.2], 0.5
    recon = prior = logdet = 0.0
    for i in range(2):
        for v in w[i].tolist():
            s = 1.0 if v >= 0 else -1.0
            recon += (scale * s - v) ** 2
            prior += ((v - mu[i]) ** 2 if v >= 0 else (v + mu[i]) ** 2) / sigma[i] ** 2
        logdet += 9 * np.log(sigma[i] ** 2)
    want = recon + nu * (prior + logdet)
    assert float(conv.kernel_loss().detach()) == pytest.approx(want, rel=1e-5)
    # the method adds lam/2 of the sum over layers
    m = create_method("bonn", lam=0.25)
    model = m.build(3, 3, base=4)
    total = sum(float(c.kernel_loss().detach()) for _, c in binary_convs(model))
    fwd = Forward(model, torch.randn(2, 3, 8, 8))
    assert float(m.losses(model, fwd, torch.tensor([0, 1]))["kernel"].detach()) \
        == pytest.approx(0.125 * total, rel=1e-5)


@pytest.mark.parametrize("amplitude,sigma", [(2.0, 1.0), (3 * np.sqrt(2 * np.pi), 1.0),
                                             (1.0, 0.5)])
def test_cbcn_sign_gradient_is_the_gaussian_of_eq_10(amplitude, sigma):
    from vistream.models.binary.cbcn import gauss_sign

    x = torch.tensor([-2.0, -0.7, -0.1, 0.0, 0.3, 1.2, 2.5], requires_grad=True)
    up = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 3.0, 0.25])
    out = gauss_sign(x, amplitude, sigma)
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    (out * up).sum().backward()
    want = [u * amplitude / (sigma * np.sqrt(np.pi)) * np.exp(-(v / sigma) ** 2)
            for v, u in zip(x.tolist(), up.tolist())]
    assert x.grad.tolist() == pytest.approx(want, rel=1e-5)


def test_cbcn_conv_uses_the_gaussian_sign_gradient_for_inputs_and_weights():
    torch.manual_seed(0)
    conv = CirculantConv2d(4, 8, k=4, amplitude=2.0)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    conv.binary_input(x).sum().backward()
    assert torch.allclose(x.grad, 2.0 / np.sqrt(np.pi) * torch.exp(-x.detach() ** 2), rtol=1e-5)
    wb, _ = conv.binary_weight()
    g = conv.expanded_weight().detach()
    conv.weight.grad = None
    wb.sum().backward()
    # the copies' surrogate gradients summed back onto the learned filters (circulant BP)
    surrogate = 2.0 / np.sqrt(np.pi) * torch.exp(-g ** 2)
    want = torch.zeros_like(conv.weight)
    perms = circulant_perms(4)
    sv = surrogate.view(2, 4, 4, 9)
    for j in range(4):
        back = torch.zeros(2, 4, 9)
        back[:, :, perms[j]] = sv[:, j]
        want += back.view(2, 4, 3, 3)
    assert torch.allclose(conv.weight.grad, want, rtol=1e-5, atol=1e-7)


def test_adversarial_loss_is_the_non_saturating_gan_loss_and_ablation_removes_it():
    from vistream.models.binary.rbcn import disc_input

    torch.manual_seed(0)
    data = tiny_data()
    m = tiny_method("rbcn", gan_warmup=0.0, adv_weight=0.3)
    model = m.build(3, 3, base=4)
    m.setup(model, data, BinaryTrainConfig())
    m.epoch, m.epochs = 0, 1
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    fwd = Forward(model, x)
    adv = float(m.losses(model, fwd, y)["adv"].detach())
    # -adv_weight * sum over stages of mean log sigmoid(D(T)), computed by hand
    want = 0.0
    for d, t in zip(m.discs, fwd.stages):
        z = d(disc_input(t)).detach().flatten()
        want += float(-torch.log(1 / (1 + torch.exp(-z))).mean())
    assert adv == pytest.approx(0.3 * want, rel=1e-5)
    _, abl = _overfit("rbcn", 2, ablate=True)
    assert "adv" not in abl
    _, bonn_abl = _overfit("bonn", 2, ablate=True)
    assert set(bonn_abl) == {"ce"}


def test_rbcn_updates_w_then_c_at_the_new_w_then_the_discriminators():
    torch.manual_seed(0)
    data = tiny_data()
    m = tiny_method("rbcn", gan_warmup=0.0, lambda1=1.0)
    model = m.build(3, 3, base=4)
    cfg = BinaryTrainConfig(lr=5e-2)
    m.setup(model, data, cfg)
    m.epoch, m.epochs = 0, 1
    opts = m.optimizers(model, cfg)
    convs = [c for _, c in binary_convs(model)]
    order, seen = [], {}

    def spy(name, opt):
        inner = opt.step

        def step(*a, **k):
            order.append(name)
            if name == "main":   # C's gradient so far: cross-entropy/adversarial only
                seen["ce_grad"] = [c.alpha.grad.clone() for c in convs]
                seen["w_old"] = [c.weight.detach().clone() for c in convs]
            if name == "c":
                seen["c_grad"] = [c.alpha.grad.clone() for c in convs]
                seen["w_new"] = [c.weight.detach().clone() for c in convs]
                seen["alpha"] = [c.alpha.detach().clone() for c in convs]
            return inner(*a, **k)
        opt.step = step

    for name, opt in opts.items():
        spy(name, opt)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    m.step(model, opts, x, y)
    assert order == ["main", "c", "d"]

    def kernel_grad(w, c):  # d/dC of lambda1/2 ||W - |C| sign(W)||^2, by hand
        s = torch.where(w >= 0, 1.0, -1.0)
        resid = w - c.abs().view(-1, 1, 1, 1) * s
        return (-(resid * s).sum((1, 2, 3))) * torch.sign(c)

    for i in range(len(convs)):
        w_new, w_old, c = seen["w_new"][i], seen["w_old"][i], seen["alpha"][i]
        assert not torch.equal(w_new, w_old)                     # W moved first
        at_new = seen["ce_grad"][i] + kernel_grad(w_new, c)
        at_old = seen["ce_grad"][i] + kernel_grad(w_old, c)
        assert torch.allclose(seen["c_grad"][i], at_new, rtol=1e-4, atol=1e-7)
        assert not torch.allclose(seen["c_grad"][i], at_old, rtol=1e-4, atol=1e-7)


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
