"""Controlling modules and their gates.

A controlling module reads the *input* of a gated conv, global-average-pooled, and gives one
logit per output filter: FC(C_in -> max(C_in // 4, 1)) -> ReLU -> FC(-> C_out).

Initialisation (the pretrained net must start unchanged, every gate open): the first FC has
weights 0 and biases 1, so its ReLU output is a constant 1 whatever the input; the second FC
has small random weights (the default init scaled by ``0.1``, a choice of ours: with zero
weights on both layers the first layer would never receive a gradient) and biases
``open_bias`` (3 by default, our choice), so every logit starts near 3 and the inference gate
1[g > 0] is open for every filter. Measured on the digits ResNet-20 (docs/decoupling.md): with
bias 1 the N(0, 1) training noise closes ~16% of the gates and scales the open ones by ~0.8 at
the first step, which lifts the training cross-entropy from 0.01 to 1.17 and a short fine-tune
never recovers; with bias 3 it stays at 0.01 (0.1% of the gates closed) and the sparsity term
closes filters gradually.

Training gate ("improved SemHash", Kaiser & Bengio 2018): noisy logits g' = g + N(0, 1);
the saturating sigmoid s = clamp(1.2 sigmoid(g') - 0.1, 0, 1) and the hard step
h = 1[g' > 0] with a straight-through gradient; each *element* takes s or h with
probability 1/2 (the paper does not say whether the mix is drawn per element, per sample or
per step; per element is ours). Inference gate: 1[g > 0], no noise.

The straight-through gradient of h is that of 1.2 sigmoid(g'), *not clamped* (ours; Kaiser &
Bengio pass the clamped s's): s is flat above g' = 2.4, so with gates opened at logit 3 about
73% of the elements got no gradient at all and the sparsity term barely moved them in a short
fine-tune (docs/decoupling.md); unclamped, every hard element carries d/dg 1.2 sigmoid'(g').
"""

from __future__ import annotations

import torch
from torch import nn


def saturating_sigmoid(g: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1.2 * torch.sigmoid(g) - 0.1, 0.0, 1.0)


def hard_gate(logits: torch.Tensor) -> torch.Tensor:
    """Inference gate: 1 where the logit is positive, else 0 (float, no gradient)."""
    return (logits > 0).to(logits.dtype)


def semhash_gate(logits: torch.Tensor, noise: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Training gate: improved SemHash with a straight-through hard branch (see module doc)."""
    g = logits
    if noise:
        g = g + torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
    soft = saturating_sigmoid(g)
    ste = 1.2 * torch.sigmoid(g)  # the hard branch's gradient: the sigmoid's, unclamped (see doc)
    hard = (g > 0).to(g.dtype) + ste - ste.detach()  # forward: step; backward: d ste
    pick_soft = torch.rand(g.shape, generator=generator, device=g.device) < 0.5
    return torch.where(pick_soft, soft, hard)


class ControlModule(nn.Module):
    """One logit per filter of a gated conv, from the GAP of the conv's input."""

    def __init__(self, in_ch: int, out_ch: int, open_bias: float = 3.0) -> None:
        super().__init__()
        hidden = max(in_ch // 4, 1)
        self.fc1 = nn.Linear(in_ch, hidden)
        self.fc2 = nn.Linear(hidden, out_ch)
        self.relu = nn.ReLU(inplace=True)
        with torch.no_grad():
            self.fc1.weight.zero_()
            self.fc1.bias.fill_(1.0)
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.fill_(open_bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (N, C_in) global-average-pooled conv input -> (N, C_out) gate logits."""
        return self.fc2(self.relu(self.fc1(pooled)))

    def flops(self) -> int:
        """2 x MACs of the two FC layers for one input (the pooling is not counted)."""
        return 2 * (self.fc1.in_features * self.fc1.out_features
                    + self.fc2.in_features * self.fc2.out_features)


def gate(logits: torch.Tensor, training: bool) -> torch.Tensor:
    return semhash_gate(logits) if training else hard_gate(logits)
