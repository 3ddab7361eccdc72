"""Training and evaluation loop for the backbones (and for pruning's fitness / fine-tuning).

SGD with momentum (0.9) and weight decay (5e-4), cosine or step learning-rate schedule,
cross-entropy, tqdm progress bars. With ``ckpt_dir`` a checkpoint (model, optimizer,
scheduler, epoch, history) is written atomically after every epoch (``last.pt``) and the best
validation epoch is kept (``best.pt``); ``resume=True`` continues from ``last.pt``.
Checkpoints hold only tensors and plain Python values and are read with
``torch.load(weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vistream.models.artifacts import export_artifact
from vistream.models.backbones import create_model
from vistream.models.data import DataBundle, Split, batches


@dataclass
class BackboneTrainConfig:
    """How :func:`train` trains a backbone classifier (also the base of
    :class:`models.binary.train.BinaryTrainConfig`)."""

    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    schedule: str = "cosine"               # cosine | step | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions (step)
    gamma: float = 0.1
    seed: int = 0
    augment: bool = True
    max_batches: int | None = None         # per epoch (fitness runs on a subset)
    train_subset: int | None = None        # use n training images (seeded)
    threads: int | None = 1                # torch.set_num_threads; None leaves it alone
    device: str = "cpu"


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_val: float = 0.0
    best_epoch: int = -1
    epochs_run: int = 0      # epochs executed in this call (for search-cost accounting)
    seconds: float = 0.0


def _eval_logits(model, split: Split, mean, std, batch_size: int, device: str,
                 max_batches: int | None):
    """(logits on the CPU, labels) per batch of ``split``, model in eval mode, no autograd."""
    model.eval()
    with torch.no_grad():
        for x, y in batches(split, batch_size, mean, std, max_batches=max_batches):
            yield model(x.to(device)).cpu(), y


def evaluate(model, split: Split, mean, std, batch_size: int = 256, device: str = "cpu",
             max_batches: int | None = None) -> float:
    """Top-1 accuracy in [0, 1]."""
    correct = total = 0
    for logits, y in _eval_logits(model, split, mean, std, batch_size, device, max_batches):
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def evaluate_loss(model, split: Split, mean, std, batch_size: int = 256,
                  device: str = "cpu") -> float:
    """Mean cross-entropy over ``split``."""
    total, n = 0.0, 0
    for logits, y in _eval_logits(model, split, mean, std, batch_size, device, None):
        total += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
    return total / max(n, 1)


def lr_at(cfg: BackboneTrainConfig, epoch: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    if cfg.schedule == "step":
        drops = sum(epoch >= int(m * cfg.epochs) if m < 1 else epoch >= m for m in cfg.milestones)
        return cfg.lr * cfg.gamma ** drops
    return cfg.lr


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def epoch_batches(train_split: Split, data: DataBundle, cfg: BackboneTrainConfig, epoch: int):
    """(shuffled, augmented batch iterator of one epoch, its length), seeded by seed and epoch;
    shared by every training loop so all methods see the same batches."""
    n_batches = math.ceil(len(train_split) / cfg.batch_size)
    if cfg.max_batches:
        n_batches = min(n_batches, cfg.max_batches)
    it = batches(train_split, cfg.batch_size, data.mean, data.std, shuffle=True,
                 augment=cfg.augment, seed=cfg.seed * 1000 + epoch, max_batches=cfg.max_batches)
    return it, n_batches


def train(model, data: DataBundle, cfg: BackboneTrainConfig, ckpt_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, eval_val: bool = True) -> TrainResult:
    """Train ``model`` in place on ``data.train``; validation accuracy after every epoch."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model.to(cfg.device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=False)
    result = TrainResult()
    start_epoch = 0
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    if ckpt:
        ckpt.mkdir(parents=True, exist_ok=True)
        if resume and (ckpt / "last.pt").exists():
            state = torch.load(ckpt / "last.pt", map_location=cfg.device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"]) + 1
            result.history = list(state["history"])
            result.best_val = float(state["best_val"])
            result.best_epoch = int(state["best_epoch"])
    train_split = data.train.subset(cfg.train_subset, cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        lr = lr_at(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        it, n_batches = epoch_batches(train_split, data, cfg, epoch)
        bar = tqdm(it, total=n_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress)
        tot_loss = correct = seen = 0.0
        for x, y in bar:
            x, y = x.to(cfg.device), y.to(cfg.device)
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss.detach()) * len(y)
            correct += float((out.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        val = evaluate(model, data.val, data.mean, data.std, device=cfg.device) if eval_val else 0.0
        rec = {"epoch": epoch, "lr": lr, "train_loss": tot_loss / max(seen, 1),
               "train_acc": correct / max(seen, 1), "val_acc": val}
        result.history.append(rec)
        result.epochs_run += 1
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4f} loss {rec['train_loss']:.3f} "
                       f"train {rec['train_acc']:.4f} val {val:.4f}")
        is_best = val >= result.best_val
        if is_best:
            result.best_val, result.best_epoch = val, epoch
        if ckpt:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "history": result.history, "best_val": result.best_val,
                     "best_epoch": result.best_epoch, "config": asdict(cfg),
                     "model_config": dict(getattr(model, "config", {}))}
            save_atomic(state, ckpt / "last.pt")
            if is_best:
                save_atomic({"model": model.state_dict(), "epoch": epoch, "val_acc": val,
                              "model_config": dict(getattr(model, "config", {}))}, ckpt / "best.pt")
    result.seconds = time.perf_counter() - t0
    return result


def load_checkpoint_model(path: str | Path, which: str = "model"):
    """Rebuild a registered backbone from a checkpoint written by :func:`train`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(state["model_config"])
    arch = cfg.pop("arch")
    model = create_model(arch, **cfg)
    model.load_state_dict(state[which])
    return model


def recalibrate_bn(model, data: DataBundle, n_batches: int = 20, batch_size: int = 64,
                   seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on training images (no gradient).

    After channel surgery the stored statistics of the layers *behind* a pruned layer
    describe the unpruned network; a short training only partly refreshes them (momentum
    0.1), so eval-mode accuracy would measure stale statistics rather than the structure."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for x, _ in batches(data.train, batch_size, data.mean, data.std, shuffle=True, seed=seed,
                            max_batches=n_batches):
            model(x.to(next(model.parameters()).device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def train_and_export(model, arch: str, data: DataBundle, cfg: BackboneTrainConfig, out: Path,
                     resume: bool = False, progress: bool = True, export: Path | None = None,
                     init: Path | None = None) -> dict:
    """``vistream train backbone``: train ``model`` with checkpoints in ``out``, measure the best
    epoch on the test split, export it to ``export`` when given (``init`` is only recorded);
    writes ``out/summary.json`` and returns the summary."""
    res = train(model, data, cfg, ckpt_dir=out, resume=resume, progress=progress)
    best = load_checkpoint_model(out / "best.pt")
    test = evaluate(best, data.test, data.mean, data.std)
    summary = {"arch": arch, "dataset": data.name, "epochs": cfg.epochs, "best_val": res.best_val,
               "best_epoch": res.best_epoch, "test_acc": test, "seconds": round(res.seconds, 1),
               "checkpoint": str(out / "best.pt"), "init": str(init) if init else None}
    if export:
        export_artifact(best, export, method="baseline", data=data,
                        metrics={"val_acc": res.best_val, "test_acc": test,
                                 "train_epochs": cfg.epochs})
        summary["artifact"] = str(export)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
