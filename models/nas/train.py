"""Training a searched genotype into a 1-bit network and an artifact (``vistream train bnas``).

The network (:class:`models.nas.network.BnasNetwork`) is trained by the project's 1-bit loop
(:func:`models.binary.train.train_binary`: Adam, cosine schedule, checkpoints every epoch,
``--resume``, best validation epoch) through :class:`BnasMethod`, the XNOR method whose
``build`` makes the genotype's net instead of a ResNet, so the searched net and the
hand-made 1-bit ResNets it is compared with are trained the same way.

:func:`fit_width` picks the largest initial width ``C`` whose binary operations stay at or
under a budget (the hand-made XNOR ResNet-20's, for the comparison at equal bit-operations).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from vistream.models.binary.evaluate import binary_cost
from vistream.models.binary.train import BinaryTrainConfig, train_binary
from vistream.models.binary.xnor import XnorMethod
from vistream.models.data import DataBundle
from vistream.models.nas.export import export_bnas_artifact
from vistream.models.nas.genotype import Genotype
from vistream.models.nas.network import BnasNetwork
from vistream.models.train import evaluate


class BnasMethod(XnorMethod):
    """XNOR training of a genotype's network (not registered: it needs a genotype)."""

    name = "bnas"

    def __init__(self, genotype: Genotype, C: int = 8, layers: int = 5, **options: Any) -> None:
        super().__init__(**options)
        self.genotype, self.C, self.layers = genotype, C, layers

    def build(self, num_classes: int, in_chans: int = 3, base: int = 16, depth: int = 20,
              layout: str = "cifar") -> BnasNetwork:
        return BnasNetwork(self.genotype, self.C, self.layers, num_classes, in_chans)


def net_cost(genotype: Genotype, C: int, layers: int, size: tuple[int, int] = (32, 32),
             num_classes: int = 10) -> dict[str, float]:
    return binary_cost(BnasNetwork(genotype, C, layers, num_classes), size)


def fit_width(genotype: Genotype, layers: int, budget_binary_ops: float, size: tuple[int, int] = (32, 32),
              widths: range = range(4, 65, 2)) -> int:
    """The largest even ``C`` whose binary ops are <= the budget (at least the smallest width)."""
    best = widths[0]
    for c in widths:
        if net_cost(genotype, c, layers, size)["binary_ops"] <= budget_binary_ops:
            best = c
        else:
            break
    return best


def train_genotype(genotype: Genotype, data: DataBundle, cfg: BinaryTrainConfig, C: int, layers: int,
                   out: Path, resume: bool = False, progress: bool = True,
                   export: Path | None = None) -> dict[str, Any]:
    """Train the genotype's net (checkpoints in ``out``), score it on the test split, export it
    when asked; writes and returns ``out/summary.json``."""
    method = BnasMethod(genotype, C, layers)
    model, res = train_binary(method, data, replace(cfg), ckpt_dir=out, resume=resume, progress=progress)
    test = evaluate(model, data.test, data.mean, data.std)
    cost = binary_cost(model, data.input_size)
    summary = {"method": "bnas", "C": C, "layers": layers, "dataset": data.name, "epochs": cfg.epochs,
               "seed": cfg.seed, "best_val": res.best_val, "best_epoch": res.best_epoch, "test_acc": test,
               "seconds": round(res.seconds, 1), "checkpoint": str(Path(out) / "best.pt"),
               "genotype": genotype.to_dict(), **{k: float(v) for k, v in cost.items()}}
    if export is not None:
        manifest = export_bnas_artifact(model, export, data=data,
                                        metrics={"val_acc": res.best_val, "test_acc": test,
                                                 "train_epochs": cfg.epochs})
        summary["artifact"] = str(export)
        summary["fallback_convs"] = len(manifest["binary"]["fallback"])
        summary["packed_convs"] = manifest["binary"]["packed_convs"]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
