"""``vistream eval tracking`` and ``vistream bench tracking``: the aggregation-signature
tracker against OpenCV's CSRT, KCF, MIL and MedianFlow (see docs/tracking.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from vistream.cli.main import bench_app, eval_app

DEFAULT_TRACKERS = "aggregation,csrt,kcf,mil,medianflow"


def _tracker_list(text: str) -> list[str]:
    from vistream.models.tracking.evaluate import TRACKERS

    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRACKERS]
    if bad or not names:
        raise typer.BadParameter(f"unknown tracker(s) {bad}; known: {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


def _targets(summary: dict) -> dict:
    """The issue's targets, checked on this run's numbers."""
    groups = summary["groups"]
    ours = "aggregation"
    out: dict = {}
    if ours not in groups.get("all", {}):
        return out
    base = [t for t in groups["all"] if t != ours]
    if not base:
        return out
    auc = groups["all"][ours]["success_auc"]
    out["overall_auc"] = round(auc, 4)
    out["best_baseline_auc"] = round(max(groups["all"][t]["success_auc"] for t in base), 4)
    out["auc_above_all_baselines"] = all(auc > groups["all"][t]["success_auc"] for t in base)
    if "shake" in groups and ours in groups["shake"]:
        drift = groups["shake"]
        p = drift[ours]["precision20"]
        best = max((drift[t]["precision20"] for t in base if t in drift), default=0.0)
        out["drift_precision20"] = round(p, 4)
        out["drift_best_baseline_precision20"] = round(best, 4)
        out["drift_margin_points"] = round(100 * (p - best), 1)
        out["drift_margin_met"] = 100 * (p - best) >= 20.0
    return out


@eval_app.command("tracking")
def eval_tracking(
    otb: Path | None = typer.Option(None, "--otb", help="folder of OTB-format sequences "
                                    "(<seq>/img/ + groundtruth_rect.txt) instead of the "
                                    "generated benchmark"),
    out: Path = typer.Option(Path("out/eval/tracking"), "--out", help="output folder"),
    sequences: int = typer.Option(10, min=1, help="generated sequences"),
    frames: int = typer.Option(100, min=20, help="frames per generated sequence"),
    max_targets: int = typer.Option(3, min=1, max=4, help="targets per sequence: 1..N"),
    seed: int = typer.Option(2019, help="seed of the generated benchmark"),
    trackers: str = typer.Option(DEFAULT_TRACKERS, help="comma-separated tracker names"),
    quick: bool = typer.Option(False, "--quick", help="2 sequences of 30 frames, 1-2 targets "
                               "(a smoke test)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Precision@20px and success AUC (OTB protocol), per attribute, and fps of the
    aggregation-signature tracker and OpenCV's trackers on the same sequences; writes
    results.json, results.md and success/precision plots (PNG) to --out."""
    from vistream.models.data import default_suite, load_otb
    from vistream.models.tracking.evaluate import (
        evaluate,
        format_table,
        plot_curves,
        summarize,
        write_results,
    )

    names = _tracker_list(trackers)
    if quick:
        sequences, frames, max_targets = 2, 30, 2
    if otb is not None:
        seqs = load_otb(otb)
        source = f"OTB folder {otb} ({len(seqs)} sequences)"
    else:
        seqs = default_suite(sequences, frames, seed, max_targets)
        source = (f"generated benchmark: {sequences} sequences x {frames} frames at 640x480, "
                  f"1-{max_targets} targets, seed {seed}")
    runs = evaluate(seqs, names, progress=progress)
    if not runs:
        raise typer.BadParameter("no track to evaluate (no target visible in a first frame)")
    summary = summarize(runs)
    table = format_table(summary)
    command = "vistream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_curves(summary, out, "all")
    if "shake" in summary["groups"]:
        plots += plot_curves(summary, out, "shake", "_shake")
    meta = {"source": source, "command": command, "trackers": names}
    targets = _targets(summary)
    write_results(runs, summary, out, {**meta, "targets": targets})
    (out / "results.md").write_text(
        f"Command: `{command}`\n\n{source}; precision@20px / success AUC in %, "
        f"fps per target (update calls, single thread).\n\n{table}\n", encoding="utf-8")
    typer.echo(f"{source}\n")
    typer.echo(table)
    typer.echo(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, "
               + ", ".join(str(p) for p in plots))
    typer.echo(json.dumps({"eval": "tracking", "tracks": summary["groups"]["all"][names[0]]
                           ["tracks"], **targets}))


@bench_app.command("tracking")
def bench_tracking(
    sequences: int = typer.Option(3, min=1, help="640x480 sequences, one target each"),
    frames: int = typer.Option(150, min=20, help="frames per sequence"),
    repeats: int = typer.Option(2, min=1, help="passes over the sequences"),
    trackers: str = typer.Option("aggregation,csrt,kcf", help="comma-separated trackers"),
) -> None:
    """Frames per second per target at 640x480, single thread (cv2.setNumThreads(1)): the
    aggregation tracker and CSRT/KCF on the same frames in the same run (interleaved, so
    they share the machine's load). Wall-clock and thread CPU time are both reported; the
    JSON last line holds the figures and the load average before/after, since on a shared
    machine wall-clock time includes waiting for a core."""
    from vistream.models.tracking.evaluate import bench_speed

    names = _tracker_list(trackers)
    result = bench_speed(names, n_sequences=sequences, n_frames=frames, repeats=repeats)
    fps = result["fps_per_target"]
    for name in names:
        typer.echo(f"{name:12s} {fps[name]:8.0f} fps wall   {result['cpu_fps_per_target'][name]:8.0f}"
                   f" fps CPU   ({result['frames'][name]} frames)")
    cpu = result["cpu_fps_per_target"]
    if "aggregation" in fps:
        for b in ("csrt", "kcf"):
            if b in fps:
                result[f"ratio_vs_{b}"] = round(fps["aggregation"] / fps[b], 3)
                result[f"cpu_ratio_vs_{b}"] = round(cpu["aggregation"] / cpu[b], 3)
        # "300 fps per target on one core": the core's time is the thread's CPU time; on an
        # idle machine wall-clock equals it, on a shared one wall-clock includes waiting.
        result["target_fps"] = 300
        result["target_met_cpu"] = cpu["aggregation"] >= 300
        result["target_met_wall"] = fps["aggregation"] >= 300
    typer.echo(json.dumps(result))
