"""``vistream eval binary``: every method, its ablation, XNOR and the float twin on one split.

Rows: FP (float twin, same width), XNOR, then each method and its ablation row. GBCN without
BGA *is* RBCN (same code path, same seed), so that row repeats RBCN's runs instead of training
them twice. Every run is cached (``OUT/<dataset>/e<epochs>/<row>-s<seed>/result.json``,
checkpoints next to it), so an interrupted evaluation resumes where it stopped.

Seeds: every row is trained with seed 0; rows whose seed-0 test accuracy is within one point
of another row's get seeds ``1..N-1`` too and report mean ± sample standard deviation.

Costs are per image at the dataset's input size: *binary ops* = multiply-accumulates done by
the binary convs (XNOR/popcount in the runtime), *float FLOPs* = 2 x MACs of the float layers
(stem, 1x1 shortcuts, classifier), *weight memory* = 1 bit per binary weight (the exported
expanded ±1 tensor) + 32 bits per float parameter (alpha, BatchNorm affine, stem, shortcuts,
classifier). Training-only state (BONN's mixture parameters, RBCN's discriminators) is not
counted: it is not exported.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vistream.models.backbones import create_model
from vistream.models.binary.layers import BinaryConv2d
from vistream.models.binary.teacher import float_twin
from vistream.models.binary.train import BinaryTrainConfig, create_method, load_binary, train_binary
from vistream.models.data import DataBundle, fingerprint, load_dataset
from vistream.models.flops import binary_split, count_flops, count_params
from vistream.models.train import evaluate

# (key, label, method, ablate); "alias" rows reuse another row's runs
ROWS: list[tuple[str, str, str | None, bool]] = [
    ("fp", "FP (float twin)", None, False),
    ("xnor", "XNOR", "xnor", False),
    ("cbcn", "CBCN", "cbcn", False),
    ("cbcn-abl", "CBCN - circulant filters, centre loss", "cbcn", True),
    ("bonn", "BONN", "bonn", False),
    ("bonn-abl", "BONN - Bayesian losses", "bonn", True),
    ("rbcn", "RBCN", "rbcn", False),
    ("rbcn-abl", "RBCN - GAN", "rbcn", True),
    ("gbcn", "GBCN", "gbcn", False),
    ("gbcn-abl", "GBCN - BGA (= RBCN)", "gbcn", True),
]
ALIASES = {"gbcn-abl": "rbcn"}


def binary_cost(model, input_size: tuple[int, int], in_chans: int = 3) -> dict[str, float]:
    """Binary MACs, float FLOPs and weight memory of one image's forward pass of a 1-bit net
    (the float-backbone counterpart is :func:`models.flops.model_cost`)."""

    binary_ops, float_flops = binary_split(model, input_size, in_chans)
    binary_ids, bits, float_params = set(), 0, 0
    for m in model.modules():
        if isinstance(m, BinaryConv2d):
            wb, alpha = m.export()
            bits += wb.numel()
            float_params += alpha.numel()
            binary_ids |= {id(p) for p in m.parameters(recurse=False)}
    float_params += sum(p.numel() for p in model.parameters() if id(p) not in binary_ids)
    return {"binary_ops": binary_ops, "float_flops": float_flops,
            "binary_weight_bits": bits, "float_params": float_params,
            "weight_bytes": bits / 8 + 4 * float_params}


def _run(data: DataBundle, key: str, method: str | None, ablate: bool, seed: int,
         cfg: BinaryTrainConfig, out: Path, progress: bool) -> dict[str, Any]:
    # the epoch budget is part of the cache key: runs of another schedule are not reused
    folder = out / data.name / f"e{cfg.epochs}" / f"{key}-s{seed}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    c = replace(cfg, seed=seed)
    if method is None:
        model = float_twin(data, c, seed=seed, progress=progress)
    else:
        m = create_method(method, ablate=ablate)
        model, _ = train_binary(m, data, c, ckpt_dir=folder, resume=True, progress=progress)
        if (folder / "best.pt").exists():
            model = load_binary(folder / "best.pt", data, c, create_method(method, ablate=ablate))
    rec = {"row": key, "seed": seed, "val_acc": evaluate(model, data.val, data.mean, data.std),
           "test_acc": evaluate(model, data.test, data.mean, data.std),
           "seconds": round(time.perf_counter() - t0, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rec))
    return rec


def row_costs(data: DataBundle, cfg: BinaryTrainConfig) -> dict[str, dict[str, float]]:
    size, ch = data.input_size, int(data.train.x.shape[1])
    fp = create_model(f"resnet{cfg.depth}", num_classes=data.num_classes, base=cfg.base)
    costs = {"fp": {"binary_ops": 0, "float_flops": count_flops(fp, size), "binary_weight_bits": 0,
                    "float_params": count_params(fp), "weight_bytes": 4 * count_params(fp)}}
    for key, _, method, ablate in ROWS:
        if method is not None:
            torch.manual_seed(0)
            m = create_method(method, ablate=ablate)
            costs[key] = binary_cost(m.build(data.num_classes, ch, cfg.base, cfg.depth), size, ch)
    return costs


def _print(line: str) -> None:
    print(line, flush=True)


# longest runs first, so that a pool of workers finishes together
_COST_ORDER = ("gbcn", "cbcn", "rbcn", "rbcn-abl", "bonn", "bonn-abl", "cbcn-abl", "xnor", "fp")


def _run_task(name: str, key: str, seed: int, cfg: BinaryTrainConfig, out: Path,
              progress: bool) -> dict[str, Any]:
    """One (dataset, row, seed) run in a worker process (one torch thread)."""
    torch.set_num_threads(cfg.threads or 1)
    _, _, method, ablate = next(r for r in ROWS if r[0] == key)
    return _run(load_dataset(name), key, method, ablate, seed, cfg, out, progress)


def evaluate_dataset(name: str, cfg: BinaryTrainConfig, seeds: int, out: Path, progress: bool = True,
                     echo: Callable[[str], None] = _print, pool: Any = None) -> dict[str, Any]:
    """Every row on one dataset (seed 0 for all, more seeds for rows within a point); with a
    ``pool`` (``concurrent.futures`` executor) the runs of each phase go to its workers."""
    torch.set_num_threads(cfg.threads or 1)
    data = load_dataset(name)

    def run_all(tasks: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        srcs = sorted({(ALIASES.get(k, k), s) for k, s in tasks},
                      key=lambda t: (_COST_ORDER.index(t[0]) if t[0] in _COST_ORDER else 0, t[1]))
        if pool is None:
            done = {t: _run_task(name, t[0], t[1], cfg, out, progress) for t in srcs}
        else:
            futs = {t: pool.submit(_run_task, name, t[0], t[1], cfg, out, False) for t in srcs}
            done = {t: f.result() for t, f in futs.items()}
        recs = {}
        for k, s in tasks:
            rec = recs[(k, s)] = done[(ALIASES.get(k, k), s)]
            echo(f"{data.name} {k} seed {s}: test {rec['test_acc']:.4f} ({rec['seconds']} s)")
        return recs

    first = run_all([(k, 0) for k, _, _, _ in ROWS])
    runs: dict[str, list[dict]] = {k: [first[(k, 0)]] for k, _, _, _ in ROWS}
    acc0 = {k: v[0]["test_acc"] for k, v in runs.items()}
    close = sorted({a for a in acc0 for b in acc0
                    if a != b and ALIASES.get(a) != b and ALIASES.get(b) != a
                    and abs(acc0[a] - acc0[b]) < 0.01})
    more = run_all([(k, s) for s in range(1, seeds) for k in close])
    for s in range(1, seeds):
        for k in close:
            runs[k].append(more[(k, s)])
    costs = row_costs(data, cfg)
    rows = {}
    for k, _, _, _ in ROWS:
        accs = [r["test_acc"] for r in runs[k]]
        rows[k] = {"test_acc": accs, "mean": statistics.fmean(accs),
                   "sd": statistics.stdev(accs) if len(accs) > 1 else None,
                   "train_seconds": sum(r["seconds"] for r in runs[k]), **costs[ALIASES.get(k, k)]}
    return {"rows": rows, "close_rows": close, "test_images": len(data.test),
            "fingerprint": fingerprint(data)}


def evaluate_binary(names: list[str], cfg: BinaryTrainConfig, seeds: int | dict[str, int], out: Path,
                    jobs: int = 1,
                    progress: bool = True, echo: Callable[[str], None] = _print) -> dict[str, Any]:
    """Train / load every row on every dataset (with ``jobs > 1`` the single runs go to
    ``jobs`` worker processes, one torch thread each); returns the figures (see
    :func:`format_table`)."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {"config": asdict(cfg), "seeds": seeds, "datasets": {},
                              "rows": [(k, lab) for k, lab, _, _ in ROWS]}
    per = seeds if isinstance(seeds, dict) else {n: seeds for n in names}
    if jobs > 1:
        # the float twins first, in the main process: workers must not train them concurrently
        for n in names:
            float_twin(load_dataset(n), cfg, seed=0, progress=progress)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for n in names:
                result["datasets"][n] = evaluate_dataset(n, cfg, per[n], out, progress, echo, pool)
    else:
        for n in names:
            result["datasets"][n] = evaluate_dataset(n, cfg, per[n], out, progress, echo)
    # keys are the bundles' names (digits-composite, ...)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["ordering"] = ordering_check(result)
    return result


def ordering_check(result: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """The papers' claim FP > {CBCN, BONN, RBCN, GBCN} > XNOR, per dataset and method (means)."""
    out = {}
    for name, d in result["datasets"].items():
        r = d["rows"]
        out[name] = {m: bool(r["fp"]["mean"] > r[m]["mean"] > r["xnor"]["mean"])
                     for m in ("cbcn", "bonn", "rbcn", "gbcn")}
    return out


def _acc(row: dict[str, Any]) -> str:
    if row["sd"] is None:
        return f"{100 * row['mean']:.2f}"
    return f"{100 * row['mean']:.2f} ± {100 * row['sd']:.2f} (n={len(row['test_acc'])})"


def format_table(result: dict[str, Any]) -> str:
    """One markdown table: a top-1 column per dataset, then the costs (same for every dataset
    of the same input size)."""
    names = list(result["datasets"])
    first = result["datasets"][names[0]]["rows"]
    head = ["method", *[f"top-1 % {n}" for n in names], "binary ops (M)", "float FLOPs (M)",
            "weight memory (KiB)", "x smaller than fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp_bytes = first["fp"]["weight_bytes"]
    for key, label in result["rows"]:
        c = first[key]
        cells = [label, *[_acc(result["datasets"][n]["rows"][key]) for n in names],
                 f"{c['binary_ops'] / 1e6:.2f}", f"{c['float_flops'] / 1e6:.2f}",
                 f"{c['weight_bytes'] / 1024:.1f}", f"{fp_bytes / c['weight_bytes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


DOCS_START, DOCS_END = "<!-- binary-table:start -->", "<!-- binary-table:end -->"


def write_docs(path: Path, table: str, command: str, result: dict[str, Any]) -> None:
    """Put ``table`` (with the command and when it was measured) between the table markers of
    the Markdown file ``path``, replacing what was there, or append it."""
    block = (f"{DOCS_START}\nMeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in "
             f"{result['seconds'] / 60:.1f} min with\n\n```bash\n{command}\n```\n\n{table}\n{DOCS_END}")
    text = path.read_text() if path.exists() else "# 1-bit networks\n\n"
    if DOCS_START in text and DOCS_END in text:
        pre, rest = text.split(DOCS_START, 1)
        text = pre + block + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_evaluation(names: list[str], cfg: BinaryTrainConfig, seeds: dict[str, int], out: Path,
                   command: str, docs: Path | None = None, json_path: Path | None = None,
                   jobs: int = 1, progress: bool = True,
                   echo: Callable[[str], None] = _print) -> dict[str, Any]:
    """``vistream eval binary``: :func:`evaluate_binary`, then echo the table and the ordering
    check, write the table into ``docs`` and the figures to ``json_path`` (when given);
    returns the figures."""
    result = evaluate_binary(names, cfg, seeds, out, jobs=jobs, progress=progress, echo=echo)
    table = format_table(result)
    result["command"] = command
    echo(table)
    for name, checks in result["ordering"].items():
        held = [m for m, ok in checks.items() if ok]
        echo(f"{name}: FP > method > XNOR holds for {', '.join(held) or 'none'}; "
             f"not for {', '.join(m for m in checks if m not in held) or 'none'}")
    if docs:
        write_docs(docs, table, command, result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    return result
