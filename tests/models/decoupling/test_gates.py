import torch

from vistream.models.decoupling.gates import (ControlModule, hard_gate, saturating_sigmoid,
                                              semhash_gate)


def test_control_module_starts_open_whatever_the_input():
    torch.manual_seed(0)
    cm = ControlModule(16, 32)
    logits = cm(torch.randn(8, 16) * 10)
    assert logits.shape == (8, 32)
    assert bool((hard_gate(logits) == 1).all())


def test_hard_gate_is_a_step():
    g = torch.tensor([[-2.0, -1e-3, 0.0, 1e-3, 5.0]])
    assert hard_gate(g).tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]


def test_saturating_sigmoid_clamps_to_unit_interval():
    s = saturating_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    assert s.tolist() == [0.0, 0.5, 1.0] or torch.allclose(s, torch.tensor([0.0, 0.5, 1.0]))


def test_semhash_values_are_binary_or_soft_and_gradients_pass_straight_through():
    gen = torch.Generator().manual_seed(1)
    g = torch.zeros(4, 256, requires_grad=True)
    m = semhash_gate(g, noise=False, generator=gen)
    assert set(m[m.detach() % 1 == 0].detach().unique().tolist()) <= {0.0, 1.0}
    m.sum().backward()
    # without noise at g = 0: every element (hard or soft) gets d soft/dg = 1.2 * 0.25 = 0.3
    assert torch.allclose(g.grad, torch.full_like(g, 0.3))


def test_semhash_noise_closes_some_open_gates_in_training():
    gen = torch.Generator().manual_seed(2)
    m = semhash_gate(torch.ones(64, 64), generator=gen)
    closed = float((m < 0.5).float().mean())
    assert 0.05 < closed < 0.3  # P(N(1, 1) < 0) ~ 0.16


def test_control_module_flops():
    assert ControlModule(16, 32).flops() == 2 * (16 * 4 + 4 * 32)
