"""Training loop for the 1-bit networks (every registered method, :func:`list_methods`).

* **Optimiser: Adam** (lr 1e-2, batch 32, no weight decay) by default, SGD with momentum on
  request. The papers train 70-200 epochs with SGD; for the few epochs this 2-core machine
  allows, Adam (common for binary nets since Bi-Real Net: the latent weights get
  straight-through gradients of very uneven size) was used — SGD was not compared here. The
  rate is high because a small split gives few steps per epoch and the latent weights must
  cross zero (on digits, 3 epochs: lr 2e-3 / batch 64 -> 44% best validation, lr 1e-2 /
  batch 32 -> 87%). No weight decay: it only pulls latent weights onto the sign boundary.
  Cosine learning rate per epoch (:func:`models.train.lr_at`).
* Each step is the method's own (:meth:`models.binary.xnor.XnorMethod.step`: extra losses,
  RBCN's C and discriminator updates, GBCN's BGA rounds); the method's ``after_epoch`` runs
  before validation (RBCN's BN statistics update).
* tqdm progress, a checkpoint every epoch (``last.pt``: model, every optimiser, the method's
  state, history; ``best.pt``: best validation epoch), ``resume=True`` continues from
  ``last.pt``. Checkpoints hold tensors and plain values only (``weights_only=True`` loads).
* Initialisation: from scratch by default; ``init="float"`` copies the trained float twin into
  the binary net first (:func:`models.binary.teacher.init_from_float`, the Bi-Real/RBCN practice).
* :func:`models.binary.teacher.float_twin` trains (once, cached) the float ResNet of the zoo at
  the same width with :func:`models.train.train`: the FP row of the evaluation and the
  RBCN/GBCN teacher.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

# the method modules register their classes in METHODS on import
from vistream.models.binary import bonn, cbcn, gbcn, rbcn, xnor  # noqa: F401
from vistream.models.binary.methods import METHODS
from vistream.models.binary.teacher import float_twin, init_from_float
from vistream.models.data import DataBundle
from vistream.models.importer import binary_start
from vistream.models.train import (
    BackboneTrainConfig,
    TrainResult,
    lr_at,
    save_atomic,
    epoch_batches,
    evaluate,
)

ABLATION_FLAGS = {"xnor": "", "cbcn": "circulant", "bonn": "bayes", "rbcn": "gan", "gbcn": "bga"}


@dataclass
class BinaryTrainConfig(BackboneTrainConfig):
    epochs: int = 8
    lr: float = 1e-2
    batch_size: int = 32
    weight_decay: float = 0.0
    optimizer: str = "adam"        # adam | sgd
    base: int = 8                  # stage widths base, 2*base, 4*base
    depth: int = 20
    float_epochs: int = 30         # float twin / teacher epochs (SGD, models/train.py)
    float_lr: float = 0.05         # SGD, batch 64, as models/train.py trains the zoo
    out_root: str = "out/binary"   # cache of float twins (teachers)
    init: str = "scratch"          # scratch | float: start from the trained float twin (seed 0)
    #                                | a float artifact/checkpoint path (e.g. `vistream import`)
    layout: str = "cifar"          # cifar | imagenet (resnet18's 1-bit twin)


def list_methods(pattern: str = "*") -> list[str]:
    """Names of the registered methods (``bonn``, ``cbcn``, ``gbcn``, ``rbcn``, ``xnor``)."""
    return METHODS.list(pattern)


def create_method(name: str, ablate: bool = False, **options: Any):
    """A method object by name (:func:`list_methods`); an unknown name raises
    :class:`models.registry.UnknownNameError` (a ValueError) listing the known ones."""
    cls = METHODS.get(name)
    if ablate and not cls.ablation:
        raise ValueError(f"{name} has no ingredient to ablate")
    return cls(ablate=ablate, **options)


def build_model(method, data: DataBundle, cfg: BinaryTrainConfig):
    return method.build(data.num_classes, int(data.train.x.shape[1]), cfg.base, cfg.depth, cfg.layout)


def train_binary(method, data: DataBundle, cfg: BinaryTrainConfig, ckpt_dir: str | Path | None = None,
                 resume: bool = False, progress: bool = True, init_state: dict | None = None):
    """Train a fresh network of ``method`` on ``data``; returns ``(model, TrainResult)`` with
    the model at its best validation epoch. ``init_state``: start from these weights (a state
    dict of the same method and width, e.g. trained on another dataset) instead of ``cfg.init``;
    a resumed checkpoint still wins."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(method, data, cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif cfg.init == "float":
        init_from_float(model, float_twin(data, cfg, seed=0, progress=progress))
    elif cfg.init != "scratch":  # a float model from a file (models/importer.py checks it)
        init_from_float(model, binary_start(cfg.init, model))
    method.epochs = cfg.epochs
    method.setup(model, data, cfg)
    opts = method.optimizers(model, cfg)
    result, start_epoch = TrainResult(), 0
    ckpt = Path(ckpt_dir) if ckpt_dir else None
    if ckpt:
        ckpt.mkdir(parents=True, exist_ok=True)
        if resume and (ckpt / "last.pt").exists():
            state = torch.load(ckpt / "last.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            for k, o in opts.items():
                o.load_state_dict(state["optimizers"][k])
            method.load_state_dict(state["method"])
            start_epoch = int(state["epoch"]) + 1
            result.history = list(state["history"])
            result.best_val, result.best_epoch = float(state["best_val"]), int(state["best_epoch"])
            torch.set_rng_state(state["torch_rng"])
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if ckpt and (ckpt / "best.pt").exists() and start_epoch > 0:
        best_state = torch.load(ckpt / "best.pt", map_location="cpu", weights_only=True)["model"]
    train_split = data.train.subset(cfg.train_subset, cfg.seed)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        method.epoch = epoch
        factor = lr_at(cfg, epoch) / cfg.lr
        for o in opts.values():
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * factor
        model.train()
        it, n_batches = epoch_batches(train_split, data, cfg, epoch)
        bar = tqdm(it, total=n_batches, desc=f"{method.label()} {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not progress)
        sums: dict[str, float] = {}
        correct = seen = 0
        for x, y in bar:
            fwd, parts = method.step(model, opts, x, y)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(y)
            correct += int((fwd.logits.detach().argmax(1) == y).sum())
            seen += len(y)
            shown = {k: f"{v / seen:.3f}" for k, v in sums.items()}
            bar.set_postfix(shown | {"acc": f"{correct / seen:.3f}"})
        method.after_epoch(model, data, cfg)
        val = evaluate(model, data.val, data.mean, data.std)
        rec = {"epoch": epoch, "lr": cfg.lr * factor, "train_acc": correct / max(seen, 1),
               "val_acc": val, **{f"loss_{k}": v / max(seen, 1) for k, v in sums.items()}}
        result.history.append(rec)
        result.epochs_run += 1
        if progress:
            tqdm.write(f"{method.label()} epoch {epoch + 1}/{cfg.epochs} "
                       + " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"))
        if val >= result.best_val:
            result.best_val, result.best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if ckpt:
                save_atomic({"model": best_state, "epoch": epoch, "val_acc": val}, ckpt / "best.pt")
        if ckpt:
            save_atomic({"model": model.state_dict(),
                          "optimizers": {k: o.state_dict() for k, o in opts.items()},
                          "method": method.state_dict(), "epoch": epoch, "history": result.history,
                          "best_val": result.best_val, "best_epoch": result.best_epoch,
                          "config": asdict(cfg), "method_name": method.name, "ablate": method.ablate,
                          "torch_rng": torch.get_rng_state()}, ckpt / "last.pt")
    result.seconds = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    return model, result


def load_binary(path: str | Path, data: DataBundle, cfg: BinaryTrainConfig, method):
    """Rebuild a trained binary network from ``best.pt`` / ``last.pt`` (same method and config)."""

    model = build_model(method, data, cfg)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model.eval()


def train_and_export(method: str, data: DataBundle, cfg: BinaryTrainConfig, arch: str,
                     out: Path | None = None, ablate: bool = False, resume: bool = False,
                     progress: bool = True, export: Path | None = None,
                     exporter: Callable[..., Any] | None = None,
                     teacher: Any = None) -> dict[str, Any]:
    """``vistream train binary``: train one 1-bit network (checkpoints in ``out``, by default
    ``out/binary/runs/<method>-<arch>-b<base>-<dataset>-s<seed>``), measure it on the test
    split, write it with ``exporter`` to ``export`` when given; writes ``summary.json`` and
    returns the summary. ``teacher``: RBCN/GBCN's float teacher (default: the trained float
    twin), e.g. a model loaded from a ``vistream import`` artifact."""
    m = create_method(method, ablate=ablate, **({"teacher": teacher} if teacher is not None else {}))
    tag = f"{method}{'-abl' if ablate else ''}-{arch}-b{cfg.base}-{data.name}-s{cfg.seed}"
    out = out or Path("out/binary/runs") / tag
    model, res = train_binary(m, data, cfg, ckpt_dir=out, resume=resume, progress=progress)
    test = evaluate(model, data.test, data.mean, data.std)
    summary = {"method": m.label(), "arch": arch, "base": cfg.base, "dataset": data.name,
               "epochs": cfg.epochs, "seed": cfg.seed, "best_val": res.best_val,
               "best_epoch": res.best_epoch, "test_acc": test, "seconds": round(res.seconds, 1),
               "checkpoint": str(out / "best.pt")}
    if exporter is not None and export is not None:
        exporter(model, export, method=m.label(), data=data,
                 metrics={"val_acc": res.best_val, "test_acc": test, "train_epochs": cfg.epochs})
        summary["artifact"] = str(export)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
