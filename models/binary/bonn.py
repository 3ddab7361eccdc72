"""BONN: Bayesian Optimized 1-bit CNNs (Gu et al., ICCV 2019; papers/bonn-iccv2019.txt).

Implemented
* **Forward** ``X_hat = w_bar * sign(X)``: ``w`` is a learned *modulation vector* per layer (one
  entry per kernel element, ``in*k*k``) whose elements are replaced by their mean in the forward
  pass (paper, after eq. 9), so each layer has one scale; it is exported as a per-output-channel
  ``alpha`` holding that scalar ``|w_bar|`` in every entry (the runtime contract).
* **Bayesian kernel loss** (eq. 7/9), per layer ``l`` and kernel ``i``:
  ``||w_bar sign(X_i) - X_i||^2`` (reconstruction)
  ``+ nu * [ sum_{X_ik >= 0} (X_ik - mu_i)^2 + sum_{X_ik < 0} (X_ik + mu_i)^2 ] / sigma_i^2``
  (two-mode Gaussian-mixture prior centred at ``+-mu_i``, the overlap of the modes neglected as
  in eq. 6) ``+ nu * N * log sigma_i^2`` (the log-det of the diagonal covariance
  ``sigma_i^2 I``). ``mu_i`` and ``sigma_i`` are learned per kernel (eqs. 17-18 by autograd).
* **Bayesian feature loss** (eq. 8) on the FC input features ``f``: ``||f - c_m||^2 +
  sum_k [sigma_{m,k}^-2 (f_k - c_{m,k})^2 + log sigma_{m,k}^2]`` with class centres ``c_m``
  updated as in the centre loss and learned per-class, per-dimension ``sigma``; used in the
  fine-tuning phase only (last ``finetune_frac`` of the epochs), as in the paper.
* Total ``L = L_CE + lambda/2 L_kernel + theta/2 L_feature`` with the paper's
  ``lambda = 1e-4``, ``theta = 1e-3``, ``nu = 1e-4`` (its WRN value).

Choices the paper leaves open
* **The reconstruction term.** Eq. 1 writes ``y = w^-1 o x_hat - x`` while Algorithm 1 uses
  ``x_hat = w o sign(x)`` in the forward pass; the two agree if the *binarised kernel*
  ``w_bar sign(X)`` reconstructs ``X``, which is what is implemented (``sign`` has no gradient
  inside the loss, so it pulls ``X`` towards ``+-w_bar`` and ``w_bar`` towards ``mean |X|``).
* ``sigma`` is parametrised by its log, clamped to ``[1e-3, 1]`` for the kernels and
  ``[1e-2, 10]`` for the features: with a learned variance the ``log sigma^2`` term is unbounded
  below once the weights sit exactly on the modes.
* Losses are *sums* (over kernel elements, over feature dimensions) as in eq. 9 and means over
  the batch, so the per-weight gradient does not depend on the network size and the paper's
  ``lambda``/``theta`` carry over to the small nets unchanged.
* Ablation (``--no-bayes``): both Bayesian losses off; the learned per-layer scale stays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vistream.models.binary.layers import (
    BinaryConv2d,
    BinaryResNet,
    ConvFactory,
    binary_convs,
    hard_sign,
    sign_ste,
)
from vistream.models.binary.methods import register_method
from vistream.models.binary.xnor import ClassCentres, Forward, XnorMethod


class BonnConv2d(BinaryConv2d):
    """Binary conv with BONN's per-layer modulation and the per-kernel mixture-prior state."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, nu: float = 1e-4) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, scale="mean_abs")
        self.nu = nu
        n = in_ch * kernel_size * kernel_size
        self.modulation = nn.Parameter(torch.full((n,), 0.1))
        self.mu = nn.Parameter(torch.full((out_ch,), 0.1))
        self.log_sigma = nn.Parameter(torch.full((out_ch,), -2.0))
        self.reset_prior()

    @torch.no_grad()
    def reset_prior(self) -> None:
        """Algorithm 1, line 1: mu and sigma estimated from the (initial) kernels."""
        a = self.weight.abs().flatten(1)
        self.modulation.fill_(float(a.mean()))
        self.mu.copy_(a.mean(1))
        self.log_sigma.copy_((a - a.mean(1, keepdim=True)).std(1).clamp(1e-3, 1).log())

    def scale(self) -> torch.Tensor:
        return self.modulation.mean().abs()

    def binary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        return sign_ste(self.weight), self.scale().expand(self.out_channels)

    def kernel_loss(self) -> torch.Tensor:
        x = self.weight.flatten(1)                               # (out, N)
        recon = (self.scale() * hard_sign(x) - x).pow(2).sum()
        sigma2 = (2 * self.log_sigma.clamp(-6.9, 0.0)).exp()      # sigma in [1e-3, 1]
        d = torch.where(x >= 0, x - self.mu[:, None], x + self.mu[:, None])
        prior = (d.pow(2).sum(1) / sigma2).sum()
        logdet = (x.shape[1] * sigma2.log()).sum()
        return recon + self.nu * (prior + logdet)


class BayesFeatureLoss(nn.Module):
    """Eq. 8 with class centres (centre-loss updates) and learned per-class, per-dim sigma."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.centres = ClassCentres(num_classes, dim)
        self.log_sigma = nn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d2 = (f - self.centres.centres[y]).pow(2)
        ls = self.log_sigma[y].clamp(-4.6, 2.3)                    # sigma in [1e-2, 10]
        per = d2.sum(1) + (d2 * (-2 * ls).exp() + 2 * ls).sum(1)
        self.centres.update(f, y)
        return per.mean()


@register_method
class BonnMethod(XnorMethod):
    name = "bonn"
    ablation = "Bayesian losses"
    ablation_flag = "bayes"

    def __init__(self, ablate: bool = False, lam: float = 1e-4, theta: float = 1e-3,
                 nu: float = 1e-4, finetune_frac: float = 0.5, **options: Any) -> None:
        super().__init__(ablate, **options)
        self.lam, self.theta, self.nu, self.finetune_frac = lam, theta, nu, finetune_frac
        self.feature_loss: BayesFeatureLoss | None = None

    def conv_factory(self) -> ConvFactory:
        def factory(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                    padding: int = 1) -> BinaryConv2d:
            return BonnConv2d(in_ch, out_ch, kernel_size, stride, padding, nu=self.nu)
        return factory

    def build(self, num_classes: int, in_chans: int = 3, base: int = 16, depth: int = 20,
              layout: str = "cifar") -> BinaryResNet:
        model = super().build(num_classes, in_chans, base, depth, layout)
        for _, m in binary_convs(model):  # the network's init re-drew the kernels
            m.reset_prior()
        return model

    def setup(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        self.feature_loss = BayesFeatureLoss(model.fc.out_features, model.num_features)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.feature_loss.log_sigma] if self.feature_loss is not None else []

    def in_finetune(self) -> bool:
        return self.epoch >= int(round((1 - self.finetune_frac) * self.epochs))

    def kernel_loss(self, model: BinaryResNet) -> torch.Tensor:
        return sum(m.kernel_loss() for _, m in binary_convs(model))

    def losses(self, model: BinaryResNet, fwd: Forward, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.ablate:
            return {}
        out = {"kernel": self.lam / 2 * self.kernel_loss(model)}
        if self.feature_loss is not None and self.in_finetune() and self.theta > 0:
            out["feature"] = self.theta / 2 * self.feature_loss(fwd.features, y)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"feature_loss": self.feature_loss.state_dict()} if self.feature_loss else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.feature_loss is not None and "feature_loss" in state:
            self.feature_loss.load_state_dict(state["feature_loss"])
