"""``vistream bench backbone``: CPU latency of pruned backbones against the unpruned model, at
batch 1 and batch 32, measured in the same run and the same form.

The pruned nets: artifacts (``.vsa``), or synthetic ones (``--arch resnet56 --flops-target
0.5``: random-init weights pruned to unaligned random widths at that FLOPs ratio, the hard
case for CPU kernels; latency depends on shapes only). Each runs in its deployed form
(:mod:`models.pruning.deploy`: inner widths padded to the multiple that measured fastest here,
BatchNorm folded, channels-last); the unpruned reference in its deployed form and, for
``reference_other_ms``, as plain eval-mode modules. Per batch size the models are timed in
interleaved rounds (:func:`models.pruning.deploy.interleaved_times`) on two clocks, the wall
clock and this thread's CPU time (on a machine shared with other busy processes the wall clock
also counts their time slices); ``--clock`` picks the headline one, the other is reported too.

The target reads ``speedup * FLOPs ratio`` >= 0.8 at every batch size (1.0 when the latency
falls exactly as the FLOPs do): the row gives ``target_speedup = 0.8 / FLOPs ratio`` beside
the measured ``speedup``. FLOPs are those of the pruned widths, not of the padded ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from vistream.bench.machine import cpu_model
from vistream.models.artifacts import export_artifact, load_artifact
from vistream.models.backbones import create_model
from vistream.models.deploy import optimize_for_cpu
from vistream.models.flops import count_flops
from vistream.models.pruning import load_base
from vistream.models.pruning.baselines import random_widths
from vistream.models.pruning.deploy import deploy_pruned, interleaved_times
from vistream.models.pruning.surgery import prune
from vistream.pipeline.allocator import allocator_tuned

TARGET = 0.8


def synthetic_pruned(arch: str, flops_target: float = 0.5, seed: int = 1, num_classes: int = 10):
    """(unpruned, pruned) random-init ``arch`` at unaligned random widths near ``flops_target``."""
    full = create_model(arch, num_classes=num_classes).eval()
    pruned = prune(full, random_widths(full, flops_target, seed=seed, multiple=1)).eval()
    return full, pruned


def _load(artifacts: Sequence[Path], reference: str | None, arch: str | None, flops_target: float,
          seed: int):
    if arch:
        ref, pruned = synthetic_pruned(arch, flops_target, seed)
        return [f"synthetic:{arch}@{flops_target}"], [pruned], ref, (32, 32)
    models = [load_artifact(a) for a in artifacts]
    size = tuple(models[0].input_spec["size"])
    if reference:
        ref = load_base(reference)
    else:
        cfg = {k: v for k, v in models[0].config.items() if k not in ("arch", "widths")}
        ref = create_model(models[0].config["arch"], **cfg)
    return [str(a) for a in artifacts], models, ref.eval(), size


def bench_backbone(artifacts: Sequence[Path] = (), reference: str | None = None,
                   batches: Sequence[int] = (1, 32), threads: int = 1, reps: int = 7,
                   deploy: bool = True, pad: bool = True, clock: str = "wall",
                   arch: str | None = None, flops_target: float = 0.5, seed: int = 1,
                   deploy_out: Path | None = None, echo: Callable[[str], None] = print) -> dict:
    """Time each pruned model and the reference at every batch size; echo one JSON row per
    model and return the figures (the caller prints them as the last line)."""
    if clock not in ("wall", "cpu"):
        raise ValueError("clock must be 'wall' or 'cpu'")
    names, models, ref, size = _load(artifacts, reference, arch, flops_target, seed)
    ref_flops = count_flops(ref, size)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        forms, records = [], []
        for m in tqdm(models, desc="deployed forms", leave=False):
            if deploy and pad:
                form, rec = deploy_pruned(m, size, batches, threads, rounds=max(3, reps // 2))
            else:
                form = optimize_for_cpu(m, input_size=size) if deploy else m
                rec = {"pad_multiple": 1}
            forms.append(form)
            records.append(rec)
        ref_main = optimize_for_cpu(ref, input_size=size) if deploy else ref
        ref_other = ref if deploy else optimize_for_cpu(ref, input_size=size)
        per_batch = {}
        with torch.inference_mode(), tqdm(total=len(batches) * reps, desc="bench backbone",
                                          leave=False) as bar:
            for b in batches:
                x = torch.randn(b, int(ref.config.get("in_chans", 3)), *size)
                xl = x.contiguous(memory_format=torch.channels_last)
                xin, xother = (xl, x) if deploy else (x, xl)
                fns = {"ref": lambda xin=xin: ref_main(xin), "ref_other": lambda xo=xother: ref_other(xo)}
                for i, f in enumerate(forms):
                    fns[i] = (lambda f=f, xin=xin: f(xin))
                t = interleaved_times(fns, reps, 5 if b <= 4 else 2, threads, bar.update)
                per_batch[int(b)] = {k: {c: min(v[c]) for c in ("wall", "cpu")} for k, v in t.items()}
    finally:
        torch.set_num_threads(old)
    other = "cpu" if clock == "wall" else "wall"
    rows = []
    for i, (name, m, rec) in enumerate(zip(names, models, records)):
        fr = count_flops(m, size) / ref_flops
        row = {"model": name, "method": getattr(m, "manifest", {}).get("method", "synthetic"),
               "widths": list(m.config.get("widths", [])), "flops_ratio": round(fr, 4),
               "pad_multiple": rec["pad_multiple"], "target_speedup": round(TARGET / fr, 3)}
        for b, t in per_batch.items():
            ms, ref_ms = t[i][clock], t["ref"][clock]
            row[f"batch{b}"] = {
                "latency_ms": round(ms, 3), "reference_ms": round(ref_ms, 3),
                "speedup": round(ref_ms / ms, 3), "speedup_over_flops_ratio": round(ref_ms / ms * fr, 3),
                f"speedup_{other}_clock": round(t["ref"][other] / t[i][other], 3),
                f"speedup_over_flops_ratio_{other}_clock": round(t["ref"][other] / t[i][other] * fr, 3),
                "speedup_vs_fastest_reference": round(min(ref_ms, t["ref_other"][clock]) / ms, 3)}
        rows.append(row)
        echo(json.dumps({**row, "deploy": rec}))
        if deploy_out is not None and hasattr(m, "manifest"):
            out = Path(deploy_out) / Path(name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            man = m.manifest
            export_artifact(m, out, method=man.get("method", "baseline"), input_spec=man["input_spec"],
                            normalization=man.get("normalization"), metrics=man.get("metrics"),
                            extra={"deploy": rec}, onnx=False)
    worst = min(r[f"batch{b}"]["speedup_over_flops_ratio"] for r in rows for b in per_batch)
    worst_other = min(r[f"batch{b}"][f"speedup_over_flops_ratio_{other}_clock"] for r in rows
                      for b in per_batch)
    return {"bench": "backbone", "cpu": cpu_model(), "batches": list(per_batch), "threads": threads,
            "form": ("deployed+padded" if pad else "deployed") if deploy else "plain",
            "clock": clock,
            "reference_ms": {str(b): round(t["ref"][clock], 3) for b, t in per_batch.items()},
            f"reference_{'plain' if deploy else 'deployed'}_ms":
                {str(b): round(t["ref_other"][clock], 3) for b, t in per_batch.items()},
            "timing": "min over interleaved rounds",
            "allocator": "freed memory kept" if allocator_tuned() else "default",
            "models": rows,
            "min_speedup_over_flops_ratio": worst, f"min_speedup_over_flops_ratio_{other}_clock": worst_other,
            "target": TARGET, "target_met": worst >= TARGET}
