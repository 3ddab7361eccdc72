"""CBCN: Circulant Binary Convolutional Networks (Liu et al., CVPR 2019; papers/cbcn-cvpr2019.txt).

Implemented
* **Circulant filters (CiFs).** A learned 3x3 filter ``W`` gives ``K`` orientation copies by
  rotating its 8 outer weights in 45-degree steps (``K = 8``: 0..315 deg; ``K = 4``: 0, 90,
  180, 270 deg, i.e. shifts of 2 ring positions), the centre weight is never moved
  (:func:`rotation_permutation`, the columns of the paper's transfer matrix ``M``).
* **Circulant back-propagation (CBP).** Only ``W`` is learned; the gradient of every copy is
  mapped back through the inverse permutation (the paper's matrix ``P``) and the ``K`` results
  are summed onto ``W`` (eq. 8) — an explicit autograd function, :class:`CirculantExpand`.
* **Sign gradient.** ``d sign(g)/dg ~ A / (sigma sqrt(pi)) exp(-g^2 / sigma^2)`` (eq. 10),
  sigma = 1, for weights and activations.
* **Centre loss in fine-tuning**: during the last ``finetune_frac`` of the epochs a centre loss
  (Wen et al. 2016) on the pooled FC features is added (weight ``center_weight``).
* Bi-Real's per-conv shortcuts are the paper's "doubled shortcuts".

Choices the paper leaves open (or that the shared runtime contract forces)
* **Where the copies go (the paper's layout, default ``wide=True``).** In the paper a feature
  map is 3D with ``K`` channels (eq. 5-6): output map ``h``, channel ``j`` is
  ``sum_{g} F_g * rot_j(W_hg)``, the learned 2D filter ``W_hg`` replicated over the ``K``
  channels of input map ``g`` (Fig. 4a: "replicating it three times and concatenating") and
  rotated by ``m_j``. So a network with "stage kernels" 8-16-32 has 8-16-32 feature maps of
  ``K`` channels = ``K`` x wider tensors, the *same number of learned filters* as XNOR at
  8-16-32, and ``K^2`` times XNOR's binary operations; the paper compares at that equal
  learned-parameter count and the extra cost is the point of the method. Here
  ``CbcnMethod.build(base=b)`` builds the shared binary ResNet at width ``b*K`` with
  :class:`CirculantConv2d` ``(share_in=True)``: learned weight ``(out/K, in/K, 3, 3)``, expanded
  to ``G[h*K + j, g*K + c] = rot_j(W[h, g])``. The exported weight is that expanded ±1 tensor,
  so the runtime sees a plain (wider) binary conv; the float stem, 1x1 shortcuts and BatchNorms
  are ``K`` times wider too. The table reports these costs as measured (``K^2`` x the binary
  ops of XNOR, more weight bits at export although the learned filters are as many).
  ``wide=False`` keeps the earlier equal-cost variant (``out/K`` learned filters over all ``in``
  channels, copies as ordinary output channels of an XNOR-width layer); at 4 epochs on digits
  it was clearly below XNOR (86.5 ± 3.4 vs 93.1).
* **Scale.** XNOR's ``alpha = mean |G|`` per output channel (rotation keeps it equal across
  the copies of one filter).
* **Amplitude A.** The paper sets ``A = 3 sqrt(2 pi)`` (area 7.5 under the surrogate
  derivative, vs. 2 for the true jump of sign). Stacked over 18 binary units this amplified
  the activation gradients; ``A = 2`` (the area of the real jump, same as Bi-Real's
  ApproxSign) is the default and ``amplitude`` changes it. With Adam, a constant factor on the
  *weight* surrogate does not change the update.
* **Centre-loss weight and schedule**: 0.01 on the pooled features, last half of the epochs,
  centres updated with rate 0.5 (Wen et al.'s defaults), not by SGD.
* Ablation (``--no-circulant``): the same learned filters without the ``K`` orientation
  channels, i.e. a plain XNOR-width net (every filter learned, no rotation) and no centre loss;
  the Gaussian sign gradient is kept. (Keeping the ``K``-channel maps with unrotated copies
  would compute ``K`` identical channels per map: the same function.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vistream.models.binary.layers import BinaryConv2d, BinaryResNet, ConvFactory, hard_sign
from vistream.models.binary.methods import register_method
from vistream.models.binary.xnor import ClassCentres, Forward, XnorMethod

# Outer ring of a 3x3 filter (flattened indices), in one circular order. Rotating the filter
# by 45 degrees moves every ring weight one place along it; the centre (index 4) stays.
RING = (0, 1, 2, 5, 8, 7, 6, 3)


def rotation_permutation(steps: int) -> torch.Tensor:
    """Index map ``p`` (length 9) with ``rotated.flatten() = w.flatten()[p]``: the filter turned
    by ``steps`` x 45 degrees, centre fixed."""
    p = list(range(9))
    for k in range(8):
        p[RING[(k + steps) % 8]] = RING[k]
    return torch.tensor(p, dtype=torch.long)


def circulant_perms(k: int) -> torch.Tensor:
    """The ``K`` columns of the circulant transfer matrix: rotations by ``j * 8 / K`` steps."""
    if k not in (1, 2, 4, 8):
        raise ValueError(f"K must be 1, 2, 4 or 8 (45-degree steps of a 3x3 ring), got {k}")
    return torch.stack([rotation_permutation(j * (8 // k)) for j in range(k)])


def inverse_perms(perms: torch.Tensor) -> torch.Tensor:
    """Inverse permutations (the paper's ``P``)."""
    inv = torch.empty_like(perms)
    ar = torch.arange(perms.shape[1])
    for j in range(perms.shape[0]):
        inv[j, perms[j]] = ar
    return inv


class CirculantExpand(torch.autograd.Function):
    """``W (n, in, 3, 3) -> G (n*K, in, 3, 3)`` with ``G[i*K + j] = rot_j(W[i])``.

    Backward is the circulant back-propagation of eq. 8: each copy's gradient is rotated back
    (inverse permutation) and the ``K`` of them are summed onto ``W``."""

    @staticmethod
    def forward(ctx, w, perms, inv):
        n, c = w.shape[:2]
        flat = w.reshape(n, c, 9)
        g = flat[:, :, perms]                      # (n, c, K, 9)
        ctx.save_for_backward(inv)
        ctx.shape = w.shape
        return g.permute(0, 2, 1, 3).reshape(n * perms.shape[0], c, 3, 3)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        n, c = ctx.shape[:2]
        k = inv.shape[0]
        gg = grad.reshape(n, k, c, 9)
        dw = torch.zeros(n, c, 9, dtype=grad.dtype, device=grad.device)
        for j in range(k):
            dw += gg[:, j][:, :, inv[j]]           # rotate the copy's gradient back, sum
        return dw.reshape(ctx.shape), None, None


class _GaussSign(torch.autograd.Function):
    """Forward: hard_sign. Backward: ``A / (sigma sqrt(pi)) exp(-x^2 / sigma^2)`` (CBCN eq. 10)."""

    @staticmethod
    def forward(ctx, x, amplitude, sigma):
        ctx.save_for_backward(x)
        ctx.coef = (amplitude / (sigma * math.sqrt(math.pi)), sigma)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        a, s = ctx.coef
        return grad * a * torch.exp(-(x / s) ** 2), None, None


def gauss_sign(x: torch.Tensor, amplitude: float = 2.0, sigma: float = 1.0) -> torch.Tensor:
    return _GaussSign.apply(x, amplitude, sigma)


class CirculantConv2d(BinaryConv2d):
    """CBConv: ``out / K`` learned filters, each expanded to ``K`` rotated output channels;
    with ``share_in`` each learned filter is 2D per input feature map of ``K`` channels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, k: int = 4, circulant: bool = True, amplitude: float = 2.0,
                 share_in: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, scale="mean_abs")
        self.k = k if circulant else 1
        self.amplitude = amplitude
        self.share_in = share_in and self.k > 1
        if self.k > 1:
            if kernel_size != 3:
                raise ValueError("circulant filters are defined for 3x3 kernels")
            if out_ch % self.k or (self.share_in and in_ch % self.k):
                raise ValueError(f"channels {in_ch}->{out_ch} not divisible by K={self.k}")
            # only the learned filters are parameters; re-register a smaller weight. With
            # share_in (the paper's CiF) one 2D filter serves all K channels of an input map.
            n_in = in_ch // self.k if self.share_in else in_ch
            w = self.weight.detach()[: out_ch // self.k, :n_in].clone()
            del self.weight
            self.weight = torch.nn.Parameter(w)
            perms = circulant_perms(self.k)
            self.register_buffer("perms", perms, persistent=False)
            self.register_buffer("inv_perms", inverse_perms(perms), persistent=False)

    def expanded_weight(self) -> torch.Tensor:
        if self.k == 1:
            return self.weight
        g = CirculantExpand.apply(self.weight, self.perms, self.inv_perms)
        # paper's CiF: the learned filter replicated over the K channels of each input map
        # (autograd sums the replicas' gradients onto it, as CBP sums the copies)
        return g.repeat_interleave(self.k, dim=1) if self.share_in else g

    def binary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.expanded_weight()
        return gauss_sign(g, self.amplitude), g.abs().mean(dim=(1, 2, 3))

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return gauss_sign(x, self.amplitude)


@register_method
class CbcnMethod(XnorMethod):
    name = "cbcn"
    ablation = "circulant filters / centre loss"
    ablation_flag = "circulant"

    def __init__(self, ablate: bool = False, k: int = 4, center_weight: float = 0.01,
                 finetune_frac: float = 0.5, amplitude: float = 2.0, wide: bool = True,
                 **options: Any) -> None:
        super().__init__(ablate, **options)
        self.k, self.center_weight, self.finetune_frac = k, center_weight, finetune_frac
        self.amplitude = amplitude
        self.wide = wide and not ablate and k > 1
        self.centres: ClassCentres | None = None

    def conv_factory(self) -> ConvFactory:
        def factory(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                    padding: int = 1) -> BinaryConv2d:
            return CirculantConv2d(in_ch, out_ch, kernel_size, stride, padding, k=self.k,
                                   circulant=not self.ablate, amplitude=self.amplitude,
                                   share_in=self.wide)
        return factory

    def build(self, num_classes: int, in_chans: int = 3, base: int = 16, depth: int = 20,
              layout: str = "cifar") -> BinaryResNet:
        # paper layout: ``base`` feature maps of K channels each, i.e. K-times wider tensors
        # with as many learned filters as XNOR at ``base``
        width = base * self.k if self.wide else base
        return super().build(num_classes, in_chans, width, depth, layout)

    def setup(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        self.centres = ClassCentres(model.fc.out_features, model.num_features)

    def in_finetune(self) -> bool:
        return self.epoch >= int(round((1 - self.finetune_frac) * self.epochs))

    def losses(self, model: BinaryResNet, fwd: Forward, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.ablate or self.centres is None or not self.in_finetune() or self.center_weight <= 0:
            return {}
        loss = self.center_weight * self.centres.loss(fwd.features, y)
        self.centres.update(fwd.features, y)
        return {"center": loss}

    def state_dict(self) -> dict[str, Any]:
        return {"centres": self.centres.state_dict()} if self.centres is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.centres is not None and "centres" in state:
            self.centres.load_state_dict(state["centres"])


def explicit_expand(w: torch.Tensor, k: int) -> torch.Tensor:
    """Reference expansion with plain indexing (autograd does the back-propagation): used by
    the tests to check :class:`CirculantExpand`."""
    perms = circulant_perms(k)
    flat = w.reshape(w.shape[0], w.shape[1], 9)
    copies = [flat[:, :, perms[j]] for j in range(k)]
    return torch.stack(copies, 1).reshape(w.shape[0] * k, w.shape[1], 3, 3)


