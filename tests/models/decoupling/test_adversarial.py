import numpy as np
import pytest
import torch

from vistream.models.backbones import create_model
from vistream.models.decoupling.adversarial import (PathDetector, SupervisedPathDetector, attack,
                                                    class_paths, path_features)
from vistream.models.decoupling.decouple import DecoupledResNet


def test_detector_scores_foreign_paths_higher():
    rng = np.random.default_rng(0)
    a = (rng.random((50, 40)) < np.r_[np.full(20, 0.9), np.full(20, 0.1)]).astype(np.uint8)
    b = (rng.random((50, 40)) < np.r_[np.full(20, 0.1), np.full(20, 0.9)]).astype(np.uint8)
    det = PathDetector(np.r_[a, b], np.r_[np.zeros(50, int), np.ones(50, int)], 2)
    own = det.score(a[:10], np.zeros(10, int))
    foreign = det.score(b[:10], np.zeros(10, int))  # class-1 paths predicted as class 0
    assert foreign.min() > own.max()
    freq = class_paths(np.r_[a, b], np.r_[np.zeros(50, int), np.ones(50, int)], 2)
    assert freq.shape == (2, 40) and freq[0, :20].mean() > 0.8


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attacks_stay_in_the_budget_and_raise_the_loss(method):
    torch.manual_seed(0)
    net = DecoupledResNet(create_model("resnet20", num_classes=10)).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.arange(4)
    adv = attack(net, x, y, (0.5,) * 3, (0.25,) * 3, method, eps=0.03, steps=3)
    assert float((adv - x).abs().max()) <= 0.03 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(net((x - 0.5) / 0.25), y)
        after = torch.nn.functional.cross_entropy(net((adv - 0.5) / 0.25), y)
    assert after > before


def test_unknown_attack_is_a_clear_error():
    net = DecoupledResNet(create_model("resnet20", num_classes=10))
    with pytest.raises(ValueError, match="unknown attack"):
        attack(net, torch.rand(1, 3, 32, 32), torch.zeros(1, dtype=torch.long), (0.5,) * 3,
               (0.25,) * 3, "cw")


def test_supervised_detector_learns_what_sets_attacked_paths_apart():
    rng = np.random.default_rng(0)
    widths = [20, 20]
    labels = np.arange(200) % 2
    means = np.where(labels[:, None] == 0, np.r_[np.full(20, 0.9), np.full(20, 0.1)],
                     np.r_[np.full(20, 0.1), np.full(20, 0.9)])
    clean = (rng.random((200, 40)) < means).astype(np.uint8)
    det = PathDetector(clean, labels, 2)
    # "attacked": the other class's path, predicted as this class
    adv = (rng.random((200, 40)) < means[::-1]).astype(np.uint8)
    adv_preds = labels
    sup = SupervisedPathDetector(det, widths).fit((clean[:100], labels[:100]),
                                                  (adv[:100], adv_preds[:100]))
    s_clean = sup.score(clean[100:], labels[100:])
    s_adv = sup.score(adv[100:], adv_preds[100:])
    assert s_adv.mean() > 0.9 and s_clean.mean() < 0.1
    feats = path_features(clean[:3], labels[:3], det, widths)
    assert feats.shape == (3, 40 + 2 + 3)
