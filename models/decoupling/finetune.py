"""Fine-tuning a trained backbone into a decoupled net (``vistream train decouple``).

SGD (momentum 0.9, weight decay 1e-4 as in the paper) on all parameters, step or cosine
schedule from :mod:`models.train`, the same seeded batches as every other training loop
(:func:`models.train.epoch_batches`). The loss is :func:`decouple.decoupling_loss`. After every
epoch: validation accuracy with the hard (inference) gates and the share of active filters;
``last.pt`` (model, optimizer, history) is written atomically and ``best.pt`` keeps the best
epoch by validation accuracy *among epochs whose active share is within 0.05 of the target*
(an epoch that has not reached its sparsity yet is no candidate; if none ever does, the last
epoch is kept).

Before every validation the BatchNorm running statistics are re-estimated with the *inference*
gates (:func:`recalibrate_hard`, ``recal_batches`` training batches): in training the BN of a
conv2 sees inputs scaled by noisy soft SemHash gates, at inference by 0/1 hard gates, and the
statistics gathered under the former made the validation accuracy of the digits ResNet-20 swing
between 0.70 and 0.92 from epoch to epoch (docs/decoupling.md). The paper does not mention this
step; it changes no weight, only the statistics the deployed net uses.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from vistream.models.data import DataBundle, Split, batches
from vistream.models.decoupling.decouple import DecoupledResNet, LossWeights, decoupling_loss
from vistream.models.train import BackboneTrainConfig, lr_at, save_atomic, epoch_batches


@dataclass
class DecoupleConfig(BackboneTrainConfig):
    lr: float = 0.01
    weight_decay: float = 1e-4
    schedule: str = "step"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lambda_k: float = 1.0
    lambda_m: float = 0.01
    lambda_s: float = 1.5e-4
    target: float = 0.6
    recal_batches: int = 10   # BN recalibration with inference gates before validation (0: off)

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.lambda_k, self.lambda_m, self.lambda_s, self.target)


def evaluate_gated(model: DecoupledResNet, split: Split, mean, std, batch_size: int = 256
                   ) -> tuple[float, float]:
    """(top-1 accuracy, mean share of active filters) with the inference gates."""
    model.eval()
    correct = total = 0
    active = 0.0
    with torch.no_grad():
        for x, y in batches(split, batch_size, mean, std):
            logits = model(x)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
            active += float(model.paths().mean(1).sum())
    return correct / max(total, 1), active / max(total, 1)


def recalibrate_hard(model: DecoupledResNet, data: DataBundle, n_batches: int = 10,
                     batch_size: int = 64, seed: int = 0) -> None:
    """Re-estimate BN running statistics on training images with the inference gates."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    for b in model.blocks:
        b.force_hard = True
    model.train()
    try:
        with torch.no_grad():
            for x, _ in batches(data.train, batch_size, data.mean, data.std, shuffle=True, seed=seed,
                                max_batches=n_batches):
                model(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        for b in model.blocks:
            b.force_hard = False
        model.eval()


def _checkpoint(model: DecoupledResNet, cfg: DecoupleConfig, data: DataBundle, extra: dict) -> dict:
    return {"model": model.state_dict(), "backbone_config": model.backbone_config,
            "config": asdict(cfg), "dataset": data.name, "mean": list(data.mean),
            "std": list(data.std), **extra}


def finetune(model: DecoupledResNet, data: DataBundle, cfg: DecoupleConfig, out: Path,
             resume: bool = False, progress: bool = True, log=print) -> dict:
    """Fine-tune ``model`` in place; checkpoints in ``out``; returns the summary (also written
    to ``out/summary.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start, best = 0, {"score": -1.0}
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, best = int(state["epoch"]) + 1, list(state["history"]), dict(state["best"])
    base_acc, _ = evaluate_gated(model, data.val, data.mean, data.std) if start == 0 else (None, 0)
    train_split = data.train.subset(cfg.train_subset, cfg.seed)
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        lr = lr_at(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        it, n = epoch_batches(train_split, data, cfg, epoch)
        bar = tqdm(it, total=n, desc=f"decouple {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress)
        sums: dict[str, float] = {}
        seen = 0
        for x, y in bar:
            loss, parts = decoupling_loss(model, model(x), y, cfg.weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(ce=f"{sums['ce'] / seen:.3f}", sp=f"{sums['sparsity'] / seen:.1f}")
        if cfg.recal_batches:
            recalibrate_hard(model, data, cfg.recal_batches, cfg.batch_size, cfg.seed + epoch)
        val, active = evaluate_gated(model, data.val, data.mean, data.std)
        rec = {"epoch": epoch, "lr": lr, **{k: v / max(seen, 1) for k, v in sums.items()},
               "val_acc": val, "active": active}
        history.append(rec)
        log(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4f} ce {rec['ce']:.3f} kl {rec['kl']:.3f} "
            f"mask_ce {rec['mask_ce']:.3f} sparsity {rec['sparsity']:.1f} val {val:.4f} "
            f"active {active:.3f}")
        near = abs(active - cfg.target) <= 0.05
        score = val + (1.0 if near else 0.0)  # on-target epochs rank above all others
        is_best = score >= best["score"] or epoch == cfg.epochs - 1 and best["score"] < 1.0
        if is_best:
            best = {"score": score, "epoch": epoch, "val_acc": val, "active": active}
        save_atomic(_checkpoint(model, cfg, data, {"optimizer": opt.state_dict(), "epoch": epoch,
                                                    "history": history, "best": best}),
                     out / "last.pt")
        if is_best:
            save_atomic(_checkpoint(model, cfg, data, {"epoch": epoch, "val_acc": val,
                                                        "active": active}), out / "best.pt")
    summary = {"dataset": data.name, "epochs": cfg.epochs, "base_val_acc": base_acc,
               "best": best, "seconds": round(time.perf_counter() - t0, 1),
               "checkpoint": str(out / "best.pt"), "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
