"""Rebuilding the shipped backbones (``vistream artifacts build``, ``make artifacts``).

Three recipes, each a pure function of its seed (torch on the CPU, fixed thread count):

* ``abc-resnet20-composite``: the zoo's float ``resnet20`` (base width 8) pre-trained on plain
  digits, trained on the hard set, then ABCPruner at 50% of its FLOPs (widths aligned to 4
  channels) and fine-tuned; a float artifact (:func:`models.artifacts.export_artifact`).
* ``binary-resnet20-composite``: a 1-bit ResNet-20 (base width 16, XNOR; :func:`compare_binary`
  compares the methods at one budget), pre-trained on plain digits, trained on the hard set; a
  bit-packed artifact (:func:`models.binary.packed.export_binary_artifact`).
* ``binary-resnet20-crops``: the same net and the same digits pre-training (same settings and
  normalisation, so the same weights: the shipped build resumed from a copy of the composite
  build's pre-training checkpoint), then trained on *tracker crops* of digits
  (:func:`models.data.digit_crops.digit_crops`: a small digit filmed over a photo with motion
  blur and noise, cropped by a jittered or fragmentary box and stretched to 32 x 32, as the
  features stage crops tracked boxes), the domain ``vistream demo`` embeds. On the demo's
  ground-truth crops its head is right 2 times as often as the composite net's (issue 23,
  docs/hashing.md, "The demo's retrieval").

Rebuilds are deterministic for a given thread count (the shipped files: 1 thread, recorded in
``index.json``); torch's float reductions may round differently with another.

**The hard set** (:func:`hard_data`) is the hardest labelled set this project builds offline:
digits composited on photo crops (:func:`models.data.digits_composite`), with ``train_copies``
composites of every training digit for training, and the standard validation and test splits
(2 composites per digit, photos and source digits disjoint from training). **Pre-training on
plain digits** (same normalisation) is what makes the nets leave chance level on it within a CPU
budget: from scratch a 1-bit ResNet-20 stayed at 10-12% training accuracy for 4 epochs at base
widths 8 and 16, with lr 2e-3 or 1e-2, and even with float activations (docs/binary.md,
"Shipped backbone").

Every step checkpoints under the work folder (``out/artifacts/<name>/``) and resumes: an
interrupted build continues where training stopped. The test split is scored once, on the
final model, for the manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from vistream.models.artifacts import export_artifact
from vistream.models.backbones import create_model
from vistream.models.binary.packed import export_binary_artifact
from vistream.models.binary.train import BinaryTrainConfig, create_method, train_binary
from vistream.models.data import DataBundle, digits32, digits_composite
from vistream.models.data.digit_crops import digit_crops
from vistream.models.data.images import _bundle, fingerprint
from vistream.models.pruning import run_method
from vistream.models.pruning.abc import ABCConfig
from vistream.models.train import BackboneTrainConfig, evaluate, load_checkpoint_model, train
from vistream.models.zoo import INDEX, sha256_file


@dataclass(frozen=True)
class Recipe:
    """How one shipped artifact is trained (recorded in its manifest and in ``index.json``)."""

    name: str
    kind: str                       # binary | abc
    arch: str = "resnet20"
    base: int = 16                  # stage widths base, 2*base, 4*base
    seed: int = 0
    train_copies: int = 2           # composites per training digit
    pretrain_epochs: int = 4        # on plain digits, before the hard set
    epochs: int = 8                 # on the hard set
    lr: float = 1e-2
    batch_size: int = 32
    method: str = "xnor"            # binary: the 1-bit method
    teacher_epochs: int = 10        # binary: float teacher of RBCN/GBCN (compare-binary)
    # abc: the pruning search and fine-tuning
    flops_target: float = 0.5
    food: int = 4
    cycles: int = 2
    limit: int = 2
    fitness_subset: int | None = 1500
    finetune_epochs: int = 8
    finetune_lr: float = 0.01
    channel_multiple: int = 8
    train_subset: int | None = None  # quick builds only
    dataset: str = "composite"      # composite (digits_composite) | crops (tracker crops)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("binary-resnet20-composite", "binary", base=16, train_copies=2, pretrain_epochs=4,
           epochs=10, lr=5e-3, batch_size=32, method="xnor"),
    # the features stage's default: the same net and digits pre-training (shared, see
    # data_for), then trained on tracker crops of digits, the domain it embeds in a stream
    Recipe("binary-resnet20-crops", "binary", base=16, train_copies=3, pretrain_epochs=4,
           epochs=14, lr=5e-3, batch_size=32, method="xnor", dataset="crops"),
    Recipe("abc-resnet20-composite", "abc", base=8, train_copies=2, pretrain_epochs=3, epochs=15,
           lr=0.05, batch_size=64, food=3, cycles=1, limit=1, fitness_subset=1000,
           finetune_epochs=5, channel_multiple=4),
)}


def quick(r: Recipe) -> Recipe:
    """The same recipe cut to a smoke run (1 epoch per step, 256 images, tiny search)."""
    return replace(r, train_copies=2, pretrain_epochs=1, epochs=1, train_subset=256, food=2,
                   cycles=1, limit=1, fitness_subset=128, finetune_epochs=1, teacher_epochs=1)


def hard_data(train_copies: int = 2) -> DataBundle:
    """The hard set: ``train_copies`` composites of every training digit; standard val/test."""
    std = digits_composite()
    train_split = std.train if train_copies == 2 else digits_composite(copies=train_copies).train
    return _bundle("digits-composite", {"train": train_split, "val": std.val, "test": std.test},
                   std.classes)


def data_for(r: Recipe) -> DataBundle:
    """The training set of a recipe: the hard set, or tracker crops of the digits
    (:func:`models.data.digit_crops.digit_crops`). The crops are normalised with the hard set's
    statistics, so that the plain-digits pre-training (normalised the same way) is exactly the
    composite recipe's (a copy of its checkpoint in this recipe's work folder resumes as is)."""
    if r.dataset == "composite":
        return hard_data(r.train_copies)
    if r.dataset != "crops":
        raise ValueError(f"unknown recipe dataset {r.dataset!r}; known: composite, crops")
    crops = digit_crops(r.train_copies)
    hard = hard_data()
    crops.mean, crops.std = hard.mean, hard.std
    return crops


def pretrain_data(hard: DataBundle) -> DataBundle:
    """Plain digits with the hard set's normalisation (so the weights transfer as they are)."""
    d = digits32()
    out = _bundle("digits", {"train": d.train, "val": d.val, "test": d.test}, d.classes)
    out.mean, out.std = hard.mean, hard.std
    return out


def dataset_record(data: DataBundle, r: Recipe) -> dict:
    return {"name": data.name, "train_copies": r.train_copies, "train": len(data.train),
            "val": len(data.val), "test": len(data.test), "fingerprint": fingerprint(data),
            "pretrain": f"digits ({r.pretrain_epochs} epochs)" if r.pretrain_epochs else None}


# ----------------------------------------------------------------------------- 1-bit
def _binary_cfg(r: Recipe, epochs: int, threads: int, work: Path) -> BinaryTrainConfig:
    return BinaryTrainConfig(epochs=epochs, base=r.base, depth=int(r.arch.removeprefix("resnet")),
                             lr=r.lr, batch_size=r.batch_size, seed=r.seed, threads=threads,
                             train_subset=r.train_subset, float_epochs=r.teacher_epochs,
                             out_root=str(work.parent / "teachers"))


def train_binary_recipe(r: Recipe, data: DataBundle, work: Path, threads: int = 1,
                        progress: bool = True, method: str | None = None):
    """(model at its best validation epoch, its TrainResult) of the 1-bit recipe: digits
    pre-training, then the hard set; checkpoints and resumes under ``work``."""
    name = method or r.method
    ablate = name.endswith("-abl")
    name = name.removesuffix("-abl")
    init = None
    if r.pretrain_epochs:
        pre, _ = train_binary(create_method(name, ablate=ablate), pretrain_data(data),
                              _binary_cfg(r, r.pretrain_epochs, threads, work),
                              ckpt_dir=work / "pretrain",
                              resume=True, progress=progress)
        init = pre.state_dict()
    return train_binary(create_method(name, ablate=ablate), data,
                        _binary_cfg(r, r.epochs, threads, work), ckpt_dir=work / "train",
                        resume=True, progress=progress, init_state=init)


def build_binary(r: Recipe, out: Path, work: Path, threads: int = 1, progress: bool = True) -> dict:
    data = data_for(r)
    model, res = train_binary_recipe(r, data, work, threads, progress)
    test = evaluate(model, data.test, data.mean, data.std)
    path = out / f"{r.name}.vsa"
    man = export_binary_artifact(
        model, path, method=f"binary-{r.method}", data=data,
        metrics={"val_acc": res.best_val, "test_acc": test, "best_epoch": res.best_epoch,
                 "train_epochs": r.epochs},
        extra={"zoo": {"name": r.name, "recipe": asdict(r), "dataset": dataset_record(data, r)}})
    return man


# ----------------------------------------------------------------------------- ABC-pruned float
def _float_cfg(r: Recipe, epochs: int, threads: int) -> BackboneTrainConfig:
    return BackboneTrainConfig(epochs=epochs, lr=r.lr, batch_size=r.batch_size, seed=r.seed,
                               threads=threads, train_subset=r.train_subset)


def train_float_recipe(r: Recipe, data: DataBundle, work: Path, threads: int = 1,
                       progress: bool = True):
    """The trained float base of the ABC recipe (digits pre-training, then the hard set)."""
    torch.manual_seed(r.seed)
    model = create_model(r.arch, num_classes=data.num_classes, base=r.base)
    if r.pretrain_epochs:
        train(model, pretrain_data(data), _float_cfg(r, r.pretrain_epochs, threads),
              ckpt_dir=work / "float-pretrain", resume=True, progress=progress)
        model = load_checkpoint_model(work / "float-pretrain" / "best.pt")
    train(model, data, _float_cfg(r, r.epochs, threads), ckpt_dir=work / "float", resume=True,
          progress=progress)
    return load_checkpoint_model(work / "float" / "best.pt").eval()


def build_abc(r: Recipe, out: Path, work: Path, threads: int = 1, progress: bool = True) -> dict:
    data = hard_data(r.train_copies)
    base = train_float_recipe(r, data, work, threads, progress)
    base_val = evaluate(base, data.val, data.mean, data.std)
    cfg = ABCConfig(food_number=r.food, max_cycle=r.cycles, limit=r.limit,
                    fitness_subset=r.fitness_subset)
    pruned, rec = run_method("abc", base, data, r.flops_target, r.seed, r.finetune_epochs,
                             r.finetune_lr, cfg, work / "abc", progress=progress, resume=True,
                             channel_multiple=r.channel_multiple)
    torch.set_num_threads(threads)
    path = out / f"{r.name}.vsa"
    return export_artifact(
        pruned, path, method="abc", data=data,
        metrics={"val_acc": rec["val_acc"], "test_acc": rec["test_acc"],
                 "unpruned_val_acc": base_val, "flops_ratio": rec["flops_ratio"],
                 "search_epochs": rec["search_epochs"], "finetune_epochs": r.finetune_epochs},
        extra={"zoo": {"name": r.name, "recipe": asdict(r), "dataset": dataset_record(data, r),
                       "widths": rec["widths"]}})


BUILDERS: dict[str, Callable[..., dict]] = {"binary": build_binary, "abc": build_abc}


def index_entry(path: Path, man: dict, seconds: float | None = None, threads: int = 1) -> dict:
    """The catalogue line of one built artifact (figures copied from its manifest)."""
    zoo = man.get("zoo", {})
    return {"file": path.name, "bytes": path.stat().st_size, "file_sha256": sha256_file(path),
            "sha256": man["sha256"], "model_id": man["model_id"], "method": man["method"],
            "arch": man["arch"], "runtime": man.get("runtime", "torch"),
            "num_features": man["num_features"], "flops": man["flops"],
            "binary_ops": man.get("binary_ops"), "params": man["params"],
            "val_acc": man["metrics"]["val_acc"], "test_acc": man["metrics"]["test_acc"],
            "dataset": zoo.get("dataset"), "recipe": zoo.get("recipe"),
            "build_seconds": None if seconds is None else round(seconds, 1),
            "threads": threads, "torch": torch.__version__}


def build(names: list[str] | None, out: Path, work: Path, threads: int = 1, progress: bool = True,
          smoke: bool = False, echo: Callable[[str], Any] = print) -> dict:
    """Build the named recipes (all by default) into ``out`` and update ``out/index.json``."""
    names = names or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown artifact {unknown[0]!r}; known: {', '.join(RECIPES)}")
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {"artifacts": {}}
    for name in names:
        r = quick(RECIPES[name]) if smoke else RECIPES[name]
        t0 = time.perf_counter()
        echo(f"building {name} ({r.kind}) ...")
        man = BUILDERS[r.kind](r, out, work / name, threads, progress)
        entry = index_entry(out / f"{name}.vsa", man, time.perf_counter() - t0, threads)
        index["artifacts"][name] = entry
        index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        echo(f"{name}: val {entry['val_acc']:.4f} test {entry['test_acc']:.4f} "
             f"{entry['bytes']} bytes, {entry['build_seconds']} s")
    return index


# ----------------------------------------------------------------------------- method choice
def compare_binary(methods: list[str], r: Recipe, work: Path, threads: int = 1,
                   progress: bool = True, echo: Callable[[str], Any] = print) -> list[dict]:
    """Each 1-bit method trained with the same recipe (same epochs, data, seed); validation
    accuracy only: the shipped recipe takes the best, the test split is not touched here."""
    data = hard_data(r.train_copies)
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        _, res = train_binary_recipe(r, data, work / m, threads, progress, method=m)
        rows.append({"method": m, "val_acc": res.best_val, "best_epoch": res.best_epoch,
                     "seconds": round(time.perf_counter() - t0, 1)})
        echo(json.dumps(rows[-1]))
    return rows


__all__ = ["BUILDERS", "RECIPES", "Recipe", "build", "compare_binary", "data_for", "hard_data",
           "index_entry", "pretrain_data", "quick"]
