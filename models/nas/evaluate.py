"""``vistream eval bnas``: the searched 1-bit network against the project's hand-made 1-bit
ResNets on the harder labelled set, and the search cost with and without space reduction.

Rows (each trained by the same 1-bit loop, :func:`models.binary.train.train_binary`, same
epochs, optimiser and seeds; scored once on the test split at the best validation epoch):

* ``xnor``: XNOR ResNet-20 at base width ``base`` (the project's 1-bit baseline);
* the best of CBCN/BONN/RBCN/GBCN (``handmade``; BONN by the project's composite table,
  docs/binary.md) at the same layout;
* ``bnas``: the genotype of the search with reduction, its width ``C`` the largest whose binary
  operations are <= XNOR ResNet-20's (:func:`models.nas.train.fit_width`);
* ``pc-darts`` (when a search without reduction is given): that search's genotype, same rule.

The search-cost part reads both searches' ``search.json``: epochs, epochs of the full space
(FLOP-weighted), multiply-accumulates (training and sampling) and seconds. Finished runs are
cached in ``out/<row>-s<seed>/result.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistream.models.binary.evaluate import binary_cost
from vistream.models.binary.train import BinaryTrainConfig, create_method, train_binary
from vistream.models.data import DataBundle
from vistream.models.nas.genotype import load_genotype
from vistream.models.nas.train import BnasMethod, fit_width
from vistream.models.train import evaluate


def _train_row(data: DataBundle, row: str, method, cfg: BinaryTrainConfig, out: Path,
               progress: bool) -> dict[str, Any]:
    folder = out / f"{row}-s{cfg.seed}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    model, res = train_binary(method, data, cfg, ckpt_dir=folder, resume=True, progress=progress)
    seconds = round(time.perf_counter() - t0, 1)
    if (folder / "summary.json").exists():  # trained by `vistream train bnas --out` this folder
        seconds = json.loads((folder / "summary.json").read_text()).get("seconds", seconds)
    rec = {"row": row, "seed": cfg.seed, "val_acc": res.best_val,
           "test_acc": evaluate(model, data.test, data.mean, data.std), "seconds": seconds,
           **{k: float(v) for k, v in binary_cost(model, data.input_size).items()}}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rec))
    return rec


def search_cost(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "search.json"
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: no finished search there ({exc})") from None
    keep = ("epochs", "rounds", "full_epochs", "cost_in_full_epochs", "search_macs", "train_macs",
            "sample_macs", "seconds", "reduce", "ucb")
    return {k: s.get(k) for k in keep}


def evaluate_bnas(data: DataBundle, search: Path, cfg: BinaryTrainConfig, seeds: int, out: Path,
                  baseline_search: Path | None = None, handmade: str = "bonn", layers: int = 5,
                  progress: bool = True, echo=print) -> dict[str, Any]:
    """Train every row for ``seeds`` seeds and compare; returns the result dict."""
    out = Path(out)
    budget = binary_cost(create_method("xnor").build(data.num_classes, 3, cfg.base, cfg.depth),
                         data.input_size)
    genotypes = {"bnas": load_genotype(search)}
    if baseline_search is not None:
        genotypes["pc-darts"] = load_genotype(baseline_search)
    widths = {k: fit_width(g, layers, budget["binary_ops"], data.input_size) for k, g in genotypes.items()}
    rows: dict[str, list[dict]] = {}
    for seed in range(seeds):
        c = replace(cfg, seed=seed)
        plan = [("xnor", lambda: create_method("xnor")), (handmade, lambda: create_method(handmade))]
        plan += [(k, lambda k=k: BnasMethod(genotypes[k], widths[k], layers)) for k in genotypes]
        for row, make in plan:
            torch.manual_seed(seed)
            rec = _train_row(data, row, make(), c, out, progress)
            rows.setdefault(row, []).append(rec)
            echo(json.dumps({k: rec[k] for k in ("row", "seed", "val_acc", "test_acc", "seconds")}))
    table = {}
    for row, recs in rows.items():
        accs = [r["test_acc"] for r in recs]
        table[row] = {"test_acc_mean": float(np.mean(accs)),
                      "test_acc_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
                      "test_accs": accs, "n": len(accs), "binary_ops": recs[0]["binary_ops"],
                      "float_flops": recs[0]["float_flops"], "weight_bytes": recs[0]["weight_bytes"],
                      "seconds_mean": float(np.mean([r["seconds"] for r in recs]))}
        if row in widths:
            table[row]["C"], table[row]["layers"] = widths[row], layers
    best_hand = max(("xnor", handmade), key=lambda r: table[r]["test_acc_mean"])
    result: dict[str, Any] = {
        "dataset": data.name, "epochs": cfg.epochs, "seeds": seeds, "base": cfg.base, "rows": table,
        "best_handmade": best_hand,
        "bnas_ge_best_handmade": table["bnas"]["test_acc_mean"] >= table[best_hand]["test_acc_mean"],
        "bnas_bitops_le_handmade": table["bnas"]["binary_ops"] <= table[best_hand]["binary_ops"],
        "search": {"bnas": search_cost(search)}}
    if baseline_search is not None:
        a, b = result["search"]["bnas"], search_cost(baseline_search)
        result["search"]["pc-darts"] = b
        result["search_saving"] = {
            k: round(1 - a[k] / b[k], 3) if a.get(k) and b.get(k) else None
            for k in ("full_epochs", "cost_in_full_epochs", "search_macs", "seconds")}
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"| row | top-1 % {result['dataset']} (test) | n | binary ops (M) | float FLOPs (M) | "
             "weight memory (KiB) |", "|---|---|---|---|---|---|"]
    for row, r in result["rows"].items():
        acc = f"{100 * r['test_acc_mean']:.2f}"
        if r["test_acc_sd"] is not None:
            acc += f" ± {100 * r['test_acc_sd']:.2f}"
        name = row + (f" (C={r['C']}, {r['layers']} cells)" if "C" in r else "")
        lines.append(f"| {name} | {acc} | {r['n']} | {r['binary_ops'] / 1e6:.2f} | "
                     f"{r['float_flops'] / 1e6:.2f} | {r['weight_bytes'] / 1024:.1f} |")
    s = result["search"]
    lines += ["", "| search | epochs | full-space epochs (FLOP-weighted) | search cost in full-space "
              "epochs (incl. sampling) | search MACs (G) | seconds |", "|---|---|---|---|---|---|"]
    for name, c in s.items():
        lines.append(f"| {name} | {c['epochs']} | {c['full_epochs']} | {c['cost_in_full_epochs']} | "
                     f"{c['search_macs'] / 1e9:.1f} | {c['seconds']} |")
    if "search_saving" in result:
        lines.append("")
        lines.append("saving of the search with reduction: " + ", ".join(
            f"{k} {100 * v:.0f}%" for k, v in result["search_saving"].items() if v is not None))
    return "\n".join(lines)
