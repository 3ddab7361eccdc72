"""Adversarial examples (FGSM, PGD) and a detector that reads calculation paths.

Attacks run in pixel space ([0, 1] images, L-inf budget ``eps``; the default 8/255 is the usual
CIFAR budget) against the decoupled net with its *inference* gates: the gates are a step, so
no gradient flows through them; the gradient reaches the input through the active filters
(the attacker treats the path as fixed for an infinitesimal step). PGD: random start in the
eps-ball, ``steps`` signed-gradient steps of ``alpha``, projection after each.

Detectors. (1) Unsupervised, fitted on clean training images only: per class c, the frequency
p_c[f] with which filter f fires on the training images of class c (the class's path,
Laplace-smoothed). The score of an input predicted as c is the mean negative log-likelihood of
its path under independent Bernoulli(p_c) filters: high when the input takes filters its
predicted class does not use (or skips the ones it always uses). AUROC: clean test images
(negatives) against the adversarial versions of the same images (positives); reported over
all adversarial examples and over the successful ones (those that change a correct
prediction). (2) Supervised (:class:`SupervisedPathDetector`): a logistic regression on the
path bits and on how well the path fits each class's path model, fitted on clean and attacked
*training* images (same attack), evaluated on the attacked *test* images.
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


def path_features(paths: np.ndarray, preds: np.ndarray, det: PathDetector,
                  widths: list[int]) -> np.ndarray:
    """Features of a path for the supervised detector: the path bits, the per-layer mean
    negative log-likelihood under the predicted class's path model, that model's overall NLL,
    the smallest NLL over all classes and the gap between the two (an adversarial input is
    pushed into a class whose path it does not take, so its path is likelier under another)."""
    p = det.freq[preds]
    ll = paths * np.log(p) + (1 - paths) * np.log(1 - p)
    bounds = np.cumsum([0, *widths])
    per_layer = np.stack([-ll[:, a:b].mean(1) for a, b in zip(bounds[:-1], bounds[1:])], 1)
    logf, log1f = np.log(det.freq), np.log(1 - det.freq)
    all_nll = -(paths.astype(np.float64) @ logf.T + (1 - paths) @ log1f.T) / paths.shape[1]
    own = -ll.mean(1)
    best = all_nll.min(1)
    return np.c_[paths, per_layer, own, best, own - best]


class SupervisedPathDetector:
    """Logistic regression on :func:`path_features`, fitted on clean vs adversarial paths of
    *training* images (the per-class path model it reads is fitted on clean training images);
    ``score`` is the probability that an input is adversarial."""

    def __init__(self, det: PathDetector, widths: list[int], c: float = 0.1) -> None:
        from sklearn.linear_model import LogisticRegression  # deferred: heavy, eval only
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.det, self.widths = det, widths
        self.clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    def fit(self, clean: tuple[np.ndarray, np.ndarray], adv: tuple[np.ndarray, np.ndarray]
            ) -> SupervisedPathDetector:
        """``clean``, ``adv``: (paths, predictions) of clean and adversarial training images."""
        x = np.r_[path_features(*clean, self.det, self.widths),
                  path_features(*adv, self.det, self.widths)]
        y = np.r_[np.zeros(len(clean[0])), np.ones(len(adv[0]))]
        self.clf.fit(x, y)
        return self

    def score(self, paths: np.ndarray, preds: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(path_features(paths, preds, self.det, self.widths))[:, 1]
