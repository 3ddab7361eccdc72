import pytest
import torch

from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import DecoupledResNet, decoupling_terms
from vistream.models.decoupling.finetune import DecoupleConfig, _Optimizers


def test_target_ramps_linearly_over_the_gated_epochs():
    cfg = DecoupleConfig(epochs=12, settle_epochs=2, ramp=0.5, target=0.5)
    assert cfg.target_at(0) == 1.0
    assert cfg.target_at(2.5) == pytest.approx(0.75)   # half of the 5-epoch ramp
    assert cfg.target_at(5) == pytest.approx(0.5)
    assert cfg.target_at(9) == pytest.approx(0.5)
    assert DecoupleConfig(target=0.6).target_at(0) == 0.6   # no ramp: the target at once


def test_gate_optimizer_is_separate_and_scaled():
    net = DecoupledResNet(create_model("resnet20", num_classes=10))
    opt = _Optimizers(net, DecoupleConfig(lr=0.01, ctrl_lr_mult=5, ctrl_adam=True))
    assert isinstance(opt.opts[1], torch.optim.Adam)
    opt.set_lr(0.002)
    assert opt.opts[0].param_groups[0]["lr"] == pytest.approx(0.002)
    assert opt.opts[1].param_groups[0]["lr"] == pytest.approx(0.01)
    n_gate = sum(p.numel() for g in opt.opts[1].param_groups for p in g["params"])
    assert n_gate == sum(p.numel() for p in net.gate_parameters())


def test_sparsity_term_reads_the_inference_gates_and_pulls_open_logits_down():
    torch.manual_seed(0)
    net = DecoupledResNet(create_model("resnet20", num_classes=10)).train()
    net(torch.randn(4, 3, 32, 32))
    terms = decoupling_terms(net, torch.arange(4), target=0.5, sparsity_gates="inference")
    # every noise-free logit starts at ~3: the inference share is 1 whatever the training noise
    assert terms["sparsity"].item() == pytest.approx(0.5 * sum(net.layer_widths()), rel=1e-4)
    terms["sparsity"].backward()
    bias_grad = net.blocks[0].ctrl1.fc2.bias.grad
    assert bool((bias_grad > 0).all())   # gradient descent lowers the logits
