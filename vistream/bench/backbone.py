"""``vistream bench backbone``: CPU latency of pruned backbone artifacts against the unpruned
model, measured in the same run and the same form.

Every model is timed by :func:`~vistream.models.flops.compare_latency` in interleaved rounds
(the minimum over rounds: on a shared CPU the least disturbed run). The unpruned reference is
timed twice, in the chosen form (deployed: BatchNorm folded, channels-last; or plain eval-mode
modules) and in the other one, so ``speedup_vs_fastest_reference`` compares each pruned model
against whichever form suits the reference best. The figure the target reads is
``speedup * FLOPs ratio``: 1.0 when the latency falls exactly as the FLOPs do (target >= 0.8).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from vistream.models.artifacts import load_artifact
from vistream.models.backbones import create_model
from vistream.models.flops import compare_latency, count_flops
from vistream.models.pruning import load_base
from vistream.pipeline.allocator import allocator_tuned

TARGET = 0.8


def bench_backbone(artifacts: Sequence[Path], reference: str | None = None, batch: int = 32,
                   threads: int = 1, reps: int = 7, deploy: bool = True,
                   echo: Callable[[str], None] = print) -> dict:
    """Time each artifact and the reference; echo one JSON row per artifact and return the
    figures (the caller prints them as the last line)."""
    models = [load_artifact(a) for a in artifacts]
    size = tuple(models[0].input_spec["size"])
    if reference:
        ref = load_base(reference)
    else:
        cfg = {k: v for k, v in models[0].config.items() if k not in ("arch", "widths")}
        ref = create_model(models[0].config["arch"], **cfg)
    ref_flops = count_flops(ref, size)
    flags = [deploy, not deploy] + [deploy] * len(models)
    times = compare_latency([ref, ref, *models], batch, size, rounds=reps, threads=threads,
                            deploy=flags)
    ref_ms, ref_other_ms = times[0], times[1]
    fastest_ref = min(ref_ms, ref_other_ms)
    rows = []
    for a, m, ms in zip(artifacts, models, times[2:]):
        fr = count_flops(m, size) / ref_flops
        row = {"artifact": str(a), "method": m.manifest.get("method"), "latency_ms": round(ms, 3),
               "flops_ratio": round(fr, 4), "speedup": round(ref_ms / ms, 3),
               "speedup_over_flops_ratio": round(ref_ms / ms * fr, 3),
               "speedup_vs_fastest_reference": round(fastest_ref / ms, 3)}
        rows.append(row)
        echo(json.dumps(row))
    worst = min(r["speedup_over_flops_ratio"] for r in rows)
    return {"bench": "backbone", "batch": batch, "threads": threads,
            "form": "deployed" if deploy else "plain", "reference_ms": round(ref_ms, 3),
            f"reference_{'plain' if deploy else 'deployed'}_ms": round(ref_other_ms, 3),
            "timing": "min over interleaved runs",
            "allocator": "freed memory kept" if allocator_tuned() else "default",
            "models": rows,
            "min_speedup_over_flops_ratio": worst, "target": TARGET,
            "target_met": worst >= TARGET}
