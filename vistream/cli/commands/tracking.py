"""``vistream eval tracking`` and ``vistream bench tracking``: the aggregation-signature
tracker against OpenCV's CSRT, KCF, MIL and MedianFlow; ``vistream eval mot``: the
multi-target tracker against MOG2 + SORT (see docs/tracking.md)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from vistream.cli.main import bench_app, eval_app

DEFAULT_TRACKERS = "aggregation,csrt,kcf,mil,medianflow"


def _tracker_list(text: str) -> list[str]:
    # deferred: loads cv2; --help stays instant
    from vistream.models.tracking.evaluate import TRACKERS

    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRACKERS]
    if bad or not names:
        raise typer.BadParameter(f"unknown tracker(s) {bad}; known: {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


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
    # deferred: loads cv2; --help stays instant
    from vistream.models.tracking.evaluate import NoTracksError, run_evaluation

    names = _tracker_list(trackers)
    if quick:
        sequences, frames, max_targets = 2, 30, 2
    command = "vistream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = run_evaluation(names, out, otb, sequences, frames, max_targets, seed, command,
                                progress=progress, echo=typer.echo)
    except NoTracksError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(result))


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
    # deferred: loads cv2; --help stays instant
    from vistream.bench.tracking import bench_tracking as run

    result = run(_tracker_list(trackers), sequences=sequences, frames=frames, repeats=repeats,
                 echo=typer.echo)
    typer.echo(json.dumps(result))


@eval_app.command("mot")
def eval_mot(
    quick: bool = typer.Option(False, "--quick", help="1 shake + 1 smooth sequence of 30 frames "
                               "per split, 2 configurations per tracker (a smoke test)"),
    mot: Path | None = typer.Option(None, "--mot", help="MOTChallenge-layout folder (img1/*.jpg, "
                                    "gt/gt.txt; or a folder of such sequences) to test on "
                                    "instead of the seeded test split"),
    seed: int = typer.Option(2019, help="seed of the seeded validation and test splits"),
    out: Path = typer.Option(Path("out/eval/mot"), "--out", help="output folder"),
    sequences: int = typer.Option(5, min=1, help="test sequences per family (shake, smooth)"),
    val_sequences: int = typer.Option(2, min=1, help="validation sequences per family"),
    frames: int = typer.Option(150, min=20, help="frames per seeded sequence"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """MOTA, IDF1, ID switches, MT/ML, frames to track and fps of our multi-target tracker
    and the MOG2 + SORT baseline, both tuned on the same-size grid on a validation split and
    run once on the test split (or --mot); a table per family, PNGs and results.json in
    --out; the last line is JSON."""
    # deferred: loads cv2, motmetrics and pandas; --help stays instant
    from vistream.models.tracking.mot import run_evaluation

    if mot is not None and not mot.is_dir():
        raise typer.BadParameter(f"{mot} is not a folder", param_hint="--mot")
    command = "vistream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = run_evaluation(out, mot, seed, val_sequences, sequences, frames, quick, command,
                                progress=progress, echo=typer.echo)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mot") from None
    typer.echo(json.dumps(result))
