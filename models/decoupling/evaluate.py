"""``vistream eval decouple``: accuracy, FLOPs skipped, the paths picture, batch-1 CPU latency
with inactive filters skipped, and adversarial detection from the paths.

Every figure is measured in one run against the dense base network it was fine-tuned from:
* accuracy: top-1 on the test split, base vs decoupled (inference gates);
* FLOPs: mean over test images of the FLOPs each needs (:class:`sparse.FlopsModel`, the
  controlling modules' cost included), against the dense base;
* latency: batch 1, one thread by default, per image over ``latency_images`` test images,
  :class:`sparse.SparseResNet` against the dense base (as it is, deployed, and in the same
  runtime with every gate open); interleaved rounds (:func:`models.flops.interleaved_timings`),
  median over rounds, with the load average;
* adversarial detection: :mod:`adversarial` (template and supervised detectors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from vistream.models.decoupling.adversarial import (PathDetector, SupervisedPathDetector, attack,
                                                    class_paths, run_paths)
from vistream.models.decoupling.decouple import build_from_state
from vistream.models.decoupling.picture import draw_paths
from vistream.models.decoupling.sparse import FlopsModel, SparseResNet
from vistream.models.deploy import optimize_for_cpu
from vistream.models.flops import count_flops, interleaved_timings
from vistream.models.train import evaluate


def load_decoupled(path: str | Path):
    """(decoupled net in eval mode, its checkpoint dict) from a ``train decouple`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run `vistream train decouple` first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "backbone_config" not in state:
        raise ValueError(f"{path} is not a `vistream train decouple` checkpoint")
    return build_from_state(state), state


def measure_latency(model, base, images: torch.Tensor, rounds: int = 15, calls: int = 2,
                    threads: int = 1, progress: bool = True) -> dict:
    """ms per image at batch 1: the skip-inactive runtime vs the dense base (as it is; BN folded
    and channels-last as the features stage deploys it; and the same runtime with every gate
    open and no controller, which isolates what the skipping saves). Interleaved rounds; per
    round the fastest of ``calls`` passes over the images; reported: the median over rounds
    (and the minimum), with the load average of the machine during the measurement."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        base = base.eval()
        nets = {"sparse": SparseResNet(model), "sparse_nhwc": SparseResNet(model, channels_last=True),
                "dense_same_runtime": SparseResNet(model, gates=False), "dense": base,
                "dense_deployed": optimize_for_cpu(base, input_size=tuple(images.shape[2:]))}
        singles = [images[i:i + 1] for i in range(len(images))]
        nhwc = [x.contiguous(memory_format=torch.channels_last) for x in singles]

        def run(name, net):
            xs = nhwc if name == "dense_deployed" else singles
            return lambda: [net(x) for x in xs]

        bar = tqdm(total=rounds, desc="latency", leave=False, disable=not progress)
        load0 = os.getloadavg()[0]
        with torch.inference_mode():
            t = interleaved_timings({k: run(k, v) for k, v in nets.items()}, rounds, calls,
                                    progress=bar.update)
        load1 = os.getloadavg()[0]
        bar.close()
    finally:
        torch.set_num_threads(old)
    med = {k: float(np.median(v)) / len(singles) for k, v in t.items()}
    low = {k: min(v) / len(singles) for k, v in t.items()}
    best_sparse = min(med["sparse"], med["sparse_nhwc"])
    return {"ms_per_image_median": {k: round(v, 4) for k, v in med.items()},
            "ms_per_image_min": {k: round(v, 4) for k, v in low.items()},
            "speedup_vs_dense": round(med["dense"] / best_sparse, 3),
            "speedup_vs_deployed": round(med["dense_deployed"] / best_sparse, 3),
            "speedup_vs_same_runtime": round(med["dense_same_runtime"] / med["sparse"], 3),
            "images": len(singles), "threads": threads, "rounds": rounds, "calls": calls,
            "load_average_1min": [round(load0, 2), round(load1, 2)]}


def _attack_all(model, x, y, data, name, eps, pgd_steps, seed0=0):
    return torch.cat([attack(model, x[i:i + 64], y[i:i + 64], data.mean, data.std, name, eps=eps,
                             steps=pgd_steps, seed=seed0 + i) for i in range(0, len(x), 64)])


def _aurocs(clean: np.ndarray, adv: np.ndarray, fooled: np.ndarray) -> dict:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
    rec = {"auroc_all": float(roc_auc_score(labels, np.r_[clean, adv]))}
    if fooled.sum() >= 2:
        lab = np.r_[np.zeros(len(clean)), np.ones(int(fooled.sum()))]
        rec["auroc_successful"] = float(roc_auc_score(lab, np.r_[clean, adv[fooled]]))
    return rec


def adversarial_detection(model, data, attacks: list[str], eps: float, n: int, pgd_steps: int,
                          progress: bool = True, train_n: int = 400) -> dict:
    """Per attack: success rate, and the AUROC of clean vs attacked test images of the
    unsupervised template detector and of the supervised one (fitted on ``train_n`` clean and
    attacked *training* images; the test images are never seen in fitting)."""
    mean, std = data.mean, data.std
    tr_x = torch.from_numpy(data.train.x)
    tr_preds, tr_paths = run_paths(model, tr_x, mean, std)
    det = PathDetector(tr_paths, data.train.y, data.num_classes)
    pick = np.random.default_rng(1).permutation(len(tr_x))[:train_n]
    fx, fy = tr_x[pick], torch.from_numpy(data.train.y[pick])
    x = torch.from_numpy(data.test.x[:n])
    y = torch.from_numpy(data.test.y[:n])
    preds, paths = run_paths(model, x, mean, std)
    clean = det.score(paths, preds)
    out = {"n": int(len(y)), "train_n": int(len(fy)), "eps": eps,
           "detectors": {"template": "class-path Bernoulli NLL (fitted on clean train)",
                         "logistic": "logistic regression on path bits + class-path fit "
                                     "(fitted on clean and attacked train)"}}
    for name in tqdm(attacks, desc="attacks", leave=False, disable=not progress):
        adv = _attack_all(model, x, y, data, name, eps, pgd_steps)
        a_preds, a_paths = run_paths(model, adv, mean, std)
        fooled = (preds == y.numpy()) & (a_preds != y.numpy())
        f_preds, f_paths = run_paths(
            model, _attack_all(model, fx, fy, data, name, eps, pgd_steps, 10_000), mean, std)
        sup = SupervisedPathDetector(det, model.layer_widths()).fit(
            (tr_paths[pick], tr_preds[pick]), (f_paths, f_preds))
        rec = {"adv_accuracy": float((a_preds == y.numpy()).mean()),
               "success_rate": float(fooled.sum() / max((preds == y.numpy()).sum(), 1)),
               "template": _aurocs(clean, det.score(a_paths, a_preds), fooled),
               "logistic": _aurocs(sup.score(paths, preds), sup.score(a_paths, a_preds), fooled)}
        rec["auroc_all"] = rec["logistic"]["auroc_all"]
        out[name] = rec
    return out


def run_evaluation(checkpoint: Path, base, data, out: Path, attacks: list[str], eps: float = 8 / 255,
                   adv_n: int = 300, pgd_steps: int = 10, latency_images: int = 32,
                   latency_rounds: int = 15, threads: int = 1, progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model, state = load_decoupled(checkpoint)
    if model.fc.out_features != data.num_classes:
        raise ValueError(f"{checkpoint} has {model.fc.out_features} classes, {data.name} has "
                         f"{data.num_classes}")
    mean, std = data.mean, data.std
    xt, yt = torch.from_numpy(data.test.x), data.test.y
    base_acc = evaluate(base, data.test, mean, std)
    preds, paths = run_paths(model, xt, mean, std)
    acc = float((preds == yt).mean())
    fm = FlopsModel(model, tuple(data.input_size))
    per = fm.per_input(torch.from_numpy(paths).float(), model.layer_widths()).numpy()
    dense = count_flops(base, tuple(data.input_size))
    freq = class_paths(paths, yt, data.num_classes)
    png = draw_paths(freq, model.layer_widths(), data.classes or [str(c) for c in range(data.num_classes)],
                     out / "paths.png")
    res = {"checkpoint": str(checkpoint), "dataset": data.name,
           "accuracy": {"base": base_acc, "decoupled": acc, "loss_points": round(100 * (base_acc - acc), 2)},
           "flops": {"dense": dense, "mean_per_image": float(per.mean()), "min": float(per.min()),
                     "max": float(per.max()), "controllers": fm.controllers,
                     "skipped": round(1 - float(per.mean()) / dense, 4)},
           "active_share": float(paths.mean()), "paths_png": str(png),
           "path_distinctness": _distinctness(freq)}
    idx = np.random.default_rng(0).permutation(len(yt))[:latency_images]
    xn = (xt[idx] - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    res["latency"] = measure_latency(model, base, xn.float(), rounds=latency_rounds,
                                     threads=threads, progress=progress)
    if attacks:
        res["adversarial"] = adversarial_detection(model, data, attacks, eps, adv_n, pgd_steps, progress)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return res


def _distinctness(freq: np.ndarray) -> float:
    """Mean over class pairs of the mean absolute difference of their filter frequencies (0: all
    classes take the same path; 1: disjoint, always-on paths)."""
    c = len(freq)
    d = [np.abs(freq[i] - freq[j]).mean() for i in range(c) for j in range(i + 1, c)]
    return round(float(np.mean(d)) if d else 0.0, 4)
