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
import torch.nn.functional as F
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
    ramp: float = 0.0         # share of the gated epochs over which the target falls from 1 (0: at once)
    ctrl_lr_mult: float = 1.0  # lr of controlling modules and mask classifiers / lr of the backbone
    ctrl_adam: bool = False   # Adam (lr = lr x ctrl_lr_mult) for them instead of SGD: see _optimizers
    lambda_d: float = 0.0     # distillation from the dense net's logits (KL, temperature 4)
    settle_epochs: int = 0    # last epochs: hard gates, controllers frozen, CE + distillation only
    sparsity_gates: str = "noisy"   # the sparsity term counts these gates: noisy | inference

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.lambda_k, self.lambda_m, self.lambda_s, self.target,
                           self.sparsity_gates)

    def target_at(self, progress: float) -> float:
        """Sparsity target after ``progress`` gated epochs (fractional): linear from 1 to
        ``target`` over the first ``ramp`` share of the gated epochs, then ``target``."""
        gated = max(self.epochs - self.settle_epochs, 1)
        if self.ramp <= 0:
            return self.target
        return 1.0 - (1.0 - self.target) * min(1.0, progress / (self.ramp * gated))


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


class _Optimizers:
    """SGD on the backbone; SGD or Adam on the controlling modules and mask classifiers.

    Why Adam is offered for the gates: their gradients pass through the SemHash gate's sigmoid
    at logits near the open bias (3), where its slope is ~0.05, so an SGD step moves a gate
    logit by ~lr x lambda_s x 0.05; on a small data set (17 batches an epoch on digits) the
    gates then need hundreds of epochs to reach the target, and once they do they fall
    together. Adam's steps do not depend on that scale."""

    def __init__(self, model: DecoupledResNet, cfg: DecoupleConfig) -> None:
        gate_ids = {id(p) for p in model.gate_parameters()}
        body = [p for p in model.parameters() if id(p) not in gate_ids]
        gates = [p for p in model.parameters() if id(p) in gate_ids]
        self.mult = cfg.ctrl_lr_mult
        self.opts = [torch.optim.SGD(body, lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)]
        if cfg.ctrl_adam:
            self.opts.append(torch.optim.Adam(gates, lr=cfg.lr * self.mult))
        else:
            self.opts.append(torch.optim.SGD(gates, lr=cfg.lr * self.mult, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay))

    def set_lr(self, lr: float) -> None:
        for opt, m in zip(self.opts, (1.0, self.mult)):
            for g in opt.param_groups:
                g["lr"] = lr * m

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def state_dict(self) -> list:
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states: list) -> None:
        for o, st in zip(self.opts, states):
            o.load_state_dict(st)


def _distill(logits: torch.Tensor, teacher_logits: torch.Tensor, t: float = 4.0) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1),
                    reduction="batchmean") * t * t


def _train_epoch(model: DecoupledResNet, teacher, opt, batches_it, n: int, cfg: DecoupleConfig,
                 epoch: int, progress: bool) -> tuple[dict[str, float], int]:
    """One epoch; returns (summed loss parts, batches seen). Gated epochs: the full objective
    with the ramped target; settle epochs: hard gates, CE (+ distillation) only."""
    settle = epoch >= cfg.epochs - cfg.settle_epochs
    for b in model.blocks:
        b.force_hard = settle
    bar = tqdm(batches_it, total=n, desc=f"decouple {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not progress)
    sums: dict[str, float] = {}
    seen = 0
    w = cfg.weights
    try:
        for x, y in bar:
            w.target = cfg.target_at(min(epoch, cfg.epochs - cfg.settle_epochs) + seen / max(n, 1))
            logits = model(x)
            if settle:
                loss = F.cross_entropy(logits, y)
                parts = {"ce": float(loss.detach())}
            else:
                loss, parts = decoupling_loss(model, logits, y, w)
            if teacher is not None and cfg.lambda_d:
                with torch.no_grad():
                    t_logits = teacher(x)
                kd = _distill(logits, t_logits)
                loss = loss + cfg.lambda_d * kd
                parts["distill"] = float(kd.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(ce=f"{sums['ce'] / seen:.3f}", target=f"{w.target:.2f}")
    finally:
        for b in model.blocks:
            b.force_hard = False
    sums["target"] = w.target * seen
    return sums, seen


def finetune(model: DecoupledResNet, data: DataBundle, cfg: DecoupleConfig, out: Path,
             resume: bool = False, progress: bool = True, log=print, teacher=None) -> dict:
    """Fine-tune ``model`` in place; checkpoints in ``out``; returns the summary (also written
    to ``out/summary.json``). ``teacher``: the dense net, for ``lambda_d`` (frozen, eval mode)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.lambda_d and teacher is None:
        raise ValueError("lambda_d > 0 needs the dense teacher net")
    if teacher is not None:
        teacher.eval()
    opt = _Optimizers(model, cfg)
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
        opt.set_lr(lr)
        model.train()
        it, n = epoch_batches(train_split, data, cfg, epoch)
        sums, seen = _train_epoch(model, teacher, opt, it, n, cfg, epoch, progress)
        if cfg.recal_batches:
            recalibrate_hard(model, data, cfg.recal_batches, cfg.batch_size, cfg.seed + epoch)
        val, active = evaluate_gated(model, data.val, data.mean, data.std)
        rec = {"epoch": epoch, "lr": lr, **{k: v / max(seen, 1) for k, v in sums.items()},
               "val_acc": val, "active": active}
        history.append(rec)
        log(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4f} "
            + " ".join(f"{k} {rec[k]:.3f}" for k in ("ce", "kl", "mask_ce", "sparsity", "distill",
                                                     "target") if k in rec)
            + f" val {val:.4f} active {active:.3f}")
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
