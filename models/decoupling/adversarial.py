"""Adversarial examples (FGSM, PGD) and a detector that reads calculation paths.

Attacks run in pixel space ([0, 1] images, L-inf budget ``eps``; the default 8/255 is the usual
CIFAR budget) against the decoupled net with its *inference* gates: the gates are a step, so
no gradient flows through them; the gradient reaches the input through the active filters
(the attacker treats the path as fixed for an infinitesimal step). PGD: random start in the
eps-ball, ``steps`` signed-gradient steps of ``alpha``, projection after each.

Detector (unsupervised, fitted on clean training images only): per class c, the frequency
p_c[f] with which filter f fires on the training images of class c (the class's path,
Laplace-smoothed). The score of an input predicted as c is the mean negative log-likelihood of
its path under independent Bernoulli(p_c) filters: high when the input takes filters its
predicted class does not use (or skips the ones it always uses). AUROC: clean test images
(negatives) against the adversarial versions of the same images (positives); reported over
all adversarial examples and over the successful ones (those that change a correct
prediction).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vistream.models.decoupling.decouple import DecoupledResNet


def _norm(mean, std):
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


def attack(model: DecoupledResNet, x01: torch.Tensor, y: torch.Tensor, mean, std, method: str,
           eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
           seed: int = 0) -> torch.Tensor:
    """Adversarial versions of pixel images ``x01`` (N, 3, H, W) in [0, 1]: ``fgsm`` or ``pgd``."""
    if method not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack {method!r}: use fgsm or pgd")
    m, s = _norm(mean, std)
    model.eval()
    if method == "fgsm":
        steps, alpha, start = 1, eps, x01
    else:
        alpha = alpha or eps / 4
        gen = torch.Generator().manual_seed(seed)
        start = (x01 + (torch.rand(x01.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model((adv - m) / s), y)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + alpha * grad.sign()
            adv = torch.min(torch.max(adv, x01 - eps), x01 + eps).clamp(0, 1)
    return adv.detach()


def run_paths(model: DecoupledResNet, x01: torch.Tensor, mean, std, batch_size: int = 256
              ) -> tuple[np.ndarray, np.ndarray]:
    """(predictions (N,), paths (N, total filters) uint8) of pixel images with inference gates."""
    m, s = _norm(mean, std)
    model.eval()
    preds, paths = [], []
    with torch.no_grad():
        for i in range(0, len(x01), batch_size):
            logits = model((x01[i:i + batch_size] - m) / s)
            preds.append(logits.argmax(1).numpy())
            paths.append(model.paths().numpy().astype(np.uint8))
    return np.concatenate(preds), np.concatenate(paths)


class PathDetector:
    """Per-class Bernoulli path model; ``score`` is high for paths unlike their class's."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        self.freq = np.stack([(paths[labels == c].sum(0) + 1.0) / ((labels == c).sum() + 2.0)
                              for c in range(num_classes)])

    def score(self, paths: np.ndarray, preds: np.ndarray) -> np.ndarray:
        p = self.freq[preds]
        ll = paths * np.log(p) + (1 - paths) * np.log(1 - p)
        return -ll.mean(1)


def class_paths(paths: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, total filters) firing frequency of every filter per class."""
    return np.stack([paths[labels == c].mean(0) if (labels == c).any() else np.zeros(paths.shape[1])
                     for c in range(num_classes)])
