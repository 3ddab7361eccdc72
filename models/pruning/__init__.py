"""Channel pruning: ABCPruner (:mod:`models.pruning.abc`), baselines at the same FLOPs
(:mod:`models.pruning.baselines`) and the shared channel surgery (:mod:`models.pruning.surgery`).

:func:`run_method` produces one pruned, fine-tuned model by any method; :func:`evaluate_pruning`
runs every method (and seeds) at one FLOPs budget and returns the table rows that
``vistream eval pruning`` prints.
"""

from __future__ import annotations

import copy
import json
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from vistream.models.artifacts import export_artifact, load_artifact
from vistream.models.flops import compare_latency, count_flops, count_params
from vistream.models.pruning.abc import ABCConfig, ABCPruner, check_budget, finetune
from vistream.models.pruning.baselines import baseline_widths
from vistream.models.pruning.surgery import FlopsTable, prune
from vistream.models.stats import paired_differences
from vistream.models.train import evaluate, load_checkpoint_model, recalibrate_bn

ALL_METHODS = ("abc", "uniform", "l1", "random")


def load_base(path: str | Path):
    """A trained backbone from an artifact (.vsa) or a training checkpoint (.pt)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"base model {path} does not exist (train one with "
                                "`vistream train backbone`)")
    if path.suffix == ".pt":
        return load_checkpoint_model(path).eval()

    return load_artifact(path)


def run_method(method: str, base, data, flops_target: float, seed: int, finetune_epochs: int,
               finetune_lr: float = 0.01, abc_cfg=None, workdir: str | Path | None = None,
               progress: bool = True, resume: bool = True,
               channel_multiple: int = 8) -> tuple[object, dict]:
    """Structure by ``method`` -> inherit top-L1 weights -> fine-tune. Returns (model, record).
    Every method's widths are aligned to ``channel_multiple`` channels (1: unaligned, as in
    the papers; see :func:`models.pruning.surgery.align_width`)."""
    table = FlopsTable(base, tuple(data.input_size))
    rec: dict = {"method": method, "seed": seed, "flops_target": flops_target,
                 "channel_multiple": channel_multiple}
    work = Path(workdir) if workdir else None
    if method == "abc":
        cfg = abc_cfg or ABCConfig()
        cfg.flops_target, cfg.seed, cfg.channel_multiple = flops_target, seed, channel_multiple
        pruner = ABCPruner(base, data, cfg, log_dir=work / f"abc-s{seed}" if work else None,
                           progress=progress, input_size=tuple(data.input_size))
        res = pruner.search(resume=resume)
        widths = res.best_widths
        rec["search"] = res.summary()
        rec["search_epochs"] = res.search_epochs
    else:
        widths = baseline_widths(method, base, flops_target, seed, table, channel_multiple)
        rec["search_epochs"] = 0.0

    # abc: the re-pruned structure, or its best candidate's fitness-trained weights (finetune_from)
    model = pruner.finetune_start(res) if method == "abc" else prune(base, widths, "l1", seed)
    recalibrate_bn(model, data, 20, 64, seed)
    rec["val_before_finetune"] = evaluate(model, data.val, data.mean, data.std)
    ck = work / f"ft-{method}-s{seed}" if work else None
    model, tr = finetune(model, data, finetune_epochs, finetune_lr, seed, ckpt_dir=ck,
                         resume=resume and ck is not None, progress=progress)
    rec.update({"widths": widths, "flops": table(widths), "flops_ratio": table.ratio(widths),
                "params": count_params(model), "finetune_epochs": finetune_epochs,
                "val_acc": evaluate(model, data.val, data.mean, data.std),
                "test_acc": evaluate(model, data.test, data.mean, data.std)})
    rec["total_epochs"] = rec["search_epochs"] + finetune_epochs
    return model, rec


def compress_abc(base, data, flops_target: float, cfg, seed: int, finetune_epochs: int,
                 finetune_lr: float, out: Path, progress: bool = True, resume: bool = False,
                 channel_multiple: int = 8, echo=print) -> dict:
    """``vistream compress abc``: ABCPruner on the trained backbone ``base`` (its search log and
    convergence plot under ``out``), fine-tune the best structure, export it as
    ``out/abc-ARCH.vsa`` and write ``out/result.json``. Returns the figures of the last line."""
    arch = base.config["arch"]
    pruned, rec = run_method("abc", base, data, flops_target, seed, finetune_epochs, finetune_lr,
                             cfg, out, progress=progress, resume=resume,
                             channel_multiple=channel_multiple)
    art = out / f"abc-{arch}.vsa"
    man = export_artifact(pruned, art, method="abc", data=data,
                          metrics={k: rec[k] for k in ("val_acc", "test_acc", "search_epochs",
                                                       "finetune_epochs", "total_epochs")},
                          extra={"search": rec["search"], "base_flops_target": flops_target})
    (out / "result.json").write_text(json.dumps(rec, indent=1))
    echo(f"search log {out}/abc-s{seed}/evaluations.jsonl, plot {out}/abc-s{seed}/convergence.png")
    return {"artifact": str(art), "model_id": man["model_id"],
            **{k: rec[k] for k in ("widths", "flops", "flops_ratio", "params", "val_acc",
                                   "test_acc", "search_epochs", "finetune_epochs", "total_epochs")}}


def _mean_sd(vals: list[float]) -> tuple[float, float]:
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def paired_against(runs: dict[str, list[dict]], n_test: int, method: str = "abc") -> dict[str, dict]:
    """``method`` minus every other method, seed by seed (the same fine-tuning seed on both
    sides), counted in test images: mean, standard error, and seeds won / tied / lost
    (:func:`models.stats.paired_differences`). The methods' spreads overlap on a small test
    split; the pairing removes what the seed does to every structure alike."""
    mine = {r["seed"]: r["test_acc"] for r in runs.get(method, [])}
    out: dict[str, dict] = {}
    for other, recs in runs.items():
        d = [round((mine[r["seed"]] - r["test_acc"]) * n_test) for r in recs if r["seed"] in mine]
        if other == method or not d:
            continue
        g = paired_differences(d)
        out[other] = {"seeds": g["n"], "mean_images": round(g["mean"], 2),
                      "se_images": None if g["se"] is None else round(g["se"], 2),
                      "won": g["ahead"], "tied": g["tied"], "lost": g["behind"], "per_seed_images": d}
    return out


# set by run_method for every run, so not part of the settings a cached run is checked against
_PER_RUN_ABC_FIELDS = ("seed", "flops_target", "channel_multiple")


def _abc_settings(cfg) -> dict:
    """An ABCConfig as recorded with a run: every field but the per-run ones."""
    return {k: v for k, v in asdict(cfg).items() if k not in _PER_RUN_ABC_FIELDS}


def run_settings(method: str, finetune_epochs: int, finetune_lr: float, abc_cfg,
                 channel_multiple: int) -> dict:
    """What a cached run depends on besides (method, seed): a cached run made with other
    settings must not be mixed into a table silently."""
    s = {"finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr,
         "channel_multiple": channel_multiple}
    if method == "abc":
        s["abc"] = _abc_settings(abc_cfg or ABCConfig())
    return s


def _recorded_settings(rec: dict) -> dict | None:
    """The settings a cached run was made with, ABC fields added to ABCConfig since then at
    their defaults (what that run used); None for records older than settings."""
    have = rec.get("settings")
    if have is None or "abc" not in have:
        return have
    return {**have, "abc": _abc_settings(ABCConfig(**have["abc"]))}


def _run_and_record(method: str, seed: int, base, data, flops_target: float,
                    finetune_epochs: int, finetune_lr: float, abc_cfg, out: Path, tag: str,
                    export: bool, progress: bool, channel_multiple: int) -> dict:
    """One (method, seed) run of :func:`evaluate_pruning`: prune, fine-tune, write its record
    (and the method's artifact when ``export``). Also the body of a worker process."""
    torch.set_num_threads(1)
    model, rec = run_method(method, base, data, flops_target, seed, finetune_epochs,
                            finetune_lr, copy.deepcopy(abc_cfg), out / f"work{tag}",
                            progress=progress, channel_multiple=channel_multiple)
    rec["settings"] = run_settings(method, finetune_epochs, finetune_lr, abc_cfg,
                                   channel_multiple)
    if export:
        export_artifact(model, out / f"{method}.vsa", method=method, data=data,
                        metrics={k: rec[k] for k in ("val_acc", "test_acc", "search_epochs",
                                                     "finetune_epochs")},
                        onnx=False)
    f = out / f"runs{tag}" / f"{method}-s{seed}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(rec, indent=1))
    return rec


def evaluate_pruning(base, data, flops_target: float, methods=ALL_METHODS, seeds=(0,),
                     finetune_epochs: int = 5, finetune_lr: float = 0.01, abc_cfg=None,
                     out: str | Path = "out/pruning/eval", progress: bool = True,
                     latency_batch: int = 32, base_metrics: dict | None = None,
                     export: bool = True, echo=print, channel_multiple: int = 8,
                     deploy: bool = True, jobs: int = 1) -> dict:
    """Every method x seed at one budget; results are cached per run under ``out`` so an
    interrupted evaluation continues where it stopped (a cached run made with other settings is
    refused). With ``jobs > 1`` the runs go to that many worker processes, one torch thread
    each. Returns {"rows": [...], ...}.
    Latency: every model in the same form, by default the deployed one the features stage runs
    (BN folded, channels-last memory: :func:`models.deploy.optimize_for_cpu`)."""
    size = tuple(data.input_size)
    # before any run starts: a budget below the search space's floor fails every method alike
    check_budget(FlopsTable(base, size), flops_target, (abc_cfg or ABCConfig()).max_gene, channel_multiple)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_flops, base_params = count_flops(base, size), count_params(base)
    rows = [{"method": "unpruned", "n": 1,
             "test_acc": (base_metrics or {}).get("test_acc",
                                                  evaluate(base, data.test, data.mean, data.std)),
             "test_sd": 0.0, "flops": base_flops, "flops_ratio": 1.0, "params": base_params,
             "latency_ms": 0.0, "speedup": 1.0, "search_epochs": 0.0,
             "finetune_epochs": 0}]
    # runs of another alignment are other experiments: they get their own cache and logs
    tag = "" if channel_multiple == 1 else f"-m{channel_multiple}"
    cached: dict[tuple[str, int], dict] = {}
    todo = []
    for method in methods:
        want = run_settings(method, finetune_epochs, finetune_lr, abc_cfg, channel_multiple)
        for seed in seeds:
            f = out / f"runs{tag}" / f"{method}-s{seed}.json"
            if not f.exists():
                todo.append((method, seed))
                continue
            rec = json.loads(f.read_text())
            have = _recorded_settings(rec)
            # records written before settings were kept are taken as they are
            if have is not None and have != want:
                raise ValueError(f"{f} was made with other settings ({have}, asked {want}); "
                                 "give another --out or delete it")
            cached[(method, seed)] = rec

    def job_args(method, seed):
        return (method, seed, base, data, flops_target, finetune_epochs, finetune_lr, abc_cfg,
                out, tag, export and seed == seeds[0], progress and jobs == 1, channel_multiple)

    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = {pool.submit(_run_and_record, *job_args(m, s)): (m, s) for m, s in todo}
            for fut in tqdm(as_completed(futs), total=len(futs), desc="pruning runs",
                            disable=not progress):
                cached[futs[fut]] = fut.result()
    else:
        for m, s in todo:
            cached[(m, s)] = _run_and_record(*job_args(m, s))
    runs: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            rec = cached[(method, seed)]
            echo(f"{method} seed {seed}: test {rec['test_acc']:.4f} val {rec['val_acc']:.4f} "
                 f"FLOPs x{rec['flops_ratio']:.3f} search {rec['search_epochs']:.2f} ep")
            runs.setdefault(method, []).append(rec)
    pruned = {method: prune(base, recs[0]["widths"]) for method, recs in runs.items()}
    times = compare_latency([base, *pruned.values()], latency_batch, size, deploy=deploy)
    base_lat = times[0]
    rows[0]["latency_ms"] = base_lat
    lat_of = dict(zip(pruned, times[1:]))
    for method, recs in runs.items():
        lat = lat_of[method]
        m, sd = _mean_sd([r["test_acc"] for r in recs])
        rows.append({"method": method, "n": len(recs), "test_acc": m, "test_sd": sd,
                     "val_acc": statistics.fmean(r["val_acc"] for r in recs),
                     "flops": recs[0]["flops"], "flops_ratio": recs[0]["flops_ratio"],
                     "params": recs[0]["params"], "latency_ms": lat,
                     "speedup": base_lat / lat,
                     "speedup_over_flops_ratio": (base_lat / lat) * recs[0]["flops_ratio"],
                     "search_epochs": statistics.fmean(r["search_epochs"] for r in recs),
                     "finetune_epochs": recs[0]["finetune_epochs"],
                     "per_seed_test": [r["test_acc"] for r in recs]})
    result = {"dataset": data.name, "arch": base.config["arch"], "flops_target": flops_target,
              "seeds": list(seeds), "latency_batch": latency_batch,
              "channel_multiple": channel_multiple,
              "latency_form": "deployed" if deploy else "plain", "rows": rows,
              "test_images": len(data.test), "abc_paired": paired_against(runs, len(data.test))}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = [f"{result['arch']} on {result['dataset']}, FLOPs target {result['flops_target']:.2f} "
             f"of the original, seeds {result['seeds']}, latency batch {result['latency_batch']}, "
             f"widths aligned to {result.get('channel_multiple', 1)} channels, "
             f"latency of the {result.get('latency_form', 'plain')} models",
             "",
             "| method | test acc (mean ± sd) | FLOPs (M) | FLOPs ratio | params (K) | CPU latency "
             "(ms) | speedup | speedup / (1/FLOPs ratio) | search epochs | fine-tune epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        acc = f"{100 * r['test_acc']:.2f}" + (f" ± {100 * r['test_sd']:.2f}" if r["n"] > 1 else "")
        eff = r.get("speedup_over_flops_ratio", 1.0)
        lines.append(f"| {r['method']} | {acc} | {r['flops'] / 1e6:.2f} | {r['flops_ratio']:.3f} | "
                     f"{r['params'] / 1e3:.1f} | {r['latency_ms']:.2f} | {r['speedup']:.2f} | "
                     f"{eff:.2f} | {r['search_epochs']:.2f} | {r['finetune_epochs']} |")
    for other, p in result.get("abc_paired", {}).items():
        se = f", standard error {p['se_images']:.2f}" if p["se_images"] is not None else ""
        lines.append(f"\nabc - {other}, seed by seed: {p['mean_images']:+.2f} test images{se}; abc ahead "
                     f"on {p['won']}, tied on {p['tied']}, behind on {p['lost']} of {p['seeds']} seeds")
    return "\n".join(lines) + "\n"
