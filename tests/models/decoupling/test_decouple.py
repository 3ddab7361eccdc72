import pytest
import torch

from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import (DecoupledResNet, LossWeights, decoupling_loss,
                                                 decoupling_terms)


@pytest.fixture()
def pair():
    torch.manual_seed(0)
    backbone = create_model("resnet20", num_classes=10).eval()
    return backbone, DecoupledResNet(backbone).eval()


def test_open_gates_leave_the_pretrained_net_unchanged(pair):
    backbone, net = pair
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = backbone(x)
        out = net(x)
    assert torch.allclose(ref, out, atol=1e-5)
    assert bool((net.paths() == 1).all())
    assert net.paths().shape == (4, sum(net.layer_widths()))
    assert len(net.traces()) == 18


def test_closed_gates_zero_their_filters(pair):
    _, net = pair
    block = net.blocks[0]
    with torch.no_grad():
        block.ctrl1.fc2.bias[:8] = -100.0
    feats = {}
    block.conv2.register_forward_hook(lambda m, i, o: feats.setdefault("in", i[0]))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert float(feats["in"][:, :8].abs().sum()) == 0.0
    assert float(feats["in"][:, 8:].abs().sum()) > 0.0
    assert net.traces()[0].mask[:, :8].sum() == 0


def test_rejects_a_net_without_blocks():
    with pytest.raises(ValueError, match="CIFAR ResNet"):
        DecoupledResNet(torch.nn.Linear(3, 3))


def test_sparsity_term_measures_distance_to_target(pair):
    _, net = pair
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))  # all gates open: active share 1
    terms = decoupling_terms(net, torch.tensor([0, 1]), target=0.6)
    assert terms["sparsity"].item() == pytest.approx(0.4 * sum(net.layer_widths()), rel=1e-5)
    terms = decoupling_terms(net, torch.tensor([0, 1]), target=1.0)
    assert terms["sparsity"].item() == pytest.approx(0.0, abs=1e-5)


def test_kl_vanishes_when_gate_logits_match_the_features(pair):
    _, net = pair
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    for t in net.traces():
        t.logits = t.pooled.clone()
    assert decoupling_terms(net, torch.tensor([0, 1]), 0.6)["kl"].item() == pytest.approx(0.0, abs=1e-5)


def test_mask_classifier_term_is_cross_entropy_of_the_masks(pair):
    _, net = pair
    for h in net.mask_heads:
        torch.nn.init.zeros_(h.weight)
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    mi = decoupling_terms(net, torch.tensor([0, 1]), 0.6)["mask_ce"].item()
    assert mi == pytest.approx(18 * torch.log(torch.tensor(10.0)).item(), rel=1e-5)


def test_sparsity_gradient_pulls_the_active_share_toward_the_target():
    torch.manual_seed(0)
    net = DecoupledResNet(create_model("resnet20", num_classes=10)).train()
    opt = torch.optim.SGD(net.gate_parameters(), lr=1.0)
    w = LossWeights(lambda_k=0.0, lambda_m=0.0, lambda_s=0.5, target=0.3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(25):
        loss, _ = decoupling_loss(net, net(x), y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        net(x)
    share = float(net.paths().mean())
    assert 0.02 < share < 0.8


def test_forced_hard_gates_make_training_mode_deterministic(pair):
    _, net = pair
    net.train()
    for b in net.blocks:
        b.force_hard = True
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        net(x)
        first = net.paths().clone()
        net(x)
    assert torch.equal(first, net.paths()) and bool((first == 1).all())
