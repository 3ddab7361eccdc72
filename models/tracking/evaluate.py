"""Evaluation of single-target trackers on benchmark sequences (OTB protocol), the OpenCV
baselines, plots, the targets and the whole run of ``vistream eval tracking`` (the speed
benchmark is :mod:`vistream.bench.tracking`).

Protocol (``research/METHODS.md``, as in the got10k / pysot toolkits)
--------------------------------------------------------------------
* Every target of every sequence is one *track*: each tracker is initialised on frame 0 with
  the ground-truth box and then fed every frame.
* Scored frames: frames 1.. with a visible target (frame 0 is the given box).
* Precision@20px: share of scored frames whose centre error is <= 20 px. Precision curve:
  thresholds 0..50 px.
* Success AUC: mean over 21 IoU thresholds 0, 0.05, .., 1 of the share of scored frames with
  IoU > threshold.
* Aggregates (overall and per attribute) are means over tracks of the per-track curves, as
  OTB averages per-sequence curves.
* Every tracker's reported box is scored, whether or not it flags itself lost. An OpenCV
  tracker whose ``update`` fails (returns False, or raises) keeps its last box - the most
  generous choice for it; ours reports its camera-compensated prediction while lost.
* fps: frames per second of ``update`` calls only (initialisation excluded), single thread
  (``cv2.setNumThreads(1)``), per target; the aggregation tracker's own camera-motion
  estimate is inside that time.

OpenCV trackers in OpenCV 5 / opencv-contrib: ``cv2.TrackerCSRT_create``,
``cv2.TrackerKCF_create``, ``cv2.TrackerMIL_create`` (main module), MedianFlow and MOSSE only
as ``cv2.legacy.TrackerMedianFlow_create`` / ``cv2.legacy.TrackerMOSSE_create``. All run with
their default parameters.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from vistream.models.tracking.aggregation import AggregationTracker, TrackOutput
from vistream.models.data import default_suite, load_otb
from vistream.models.data.tracking import ATTRIBUTES, TrackingSequence

__all__ = [
    "BASELINES",
    "NoTracksError",
    "PRECISION_THRESHOLDS",
    "SUCCESS_THRESHOLDS",
    "TRACKERS",
    "OpenCVTracker",
    "TrackRun",
    "center_error",
    "check_targets",
    "evaluate",
    "iou",
    "make_tracker",
    "plot_curves",
    "precision_curve",
    "run_evaluation",
    "run_tracker",
    "success_curve",
    "summarize",
]

#: OpenCV trackers the issue compares against.
BASELINES: tuple[str, ...] = ("csrt", "kcf", "mil", "medianflow")
#: Every name :func:`make_tracker` knows.
TRACKERS: tuple[str, ...] = ("aggregation",) + BASELINES + ("mosse",)
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)


class Tracker(Protocol):
    def init(self, image: np.ndarray, box: tuple[float, float, float, float]) -> None: ...

    def update(self, image: np.ndarray) -> TrackOutput: ...


# --------------------------------------------------------------------------- trackers


def _opencv_factory(name: str) -> Callable[[], Any]:
    legacy = getattr(cv2, "legacy", None)
    table: dict[str, Callable[[], Any] | None] = {
        "csrt": getattr(cv2, "TrackerCSRT_create", None),
        "kcf": getattr(cv2, "TrackerKCF_create", None),
        "mil": getattr(cv2, "TrackerMIL_create", None),
        "medianflow": getattr(legacy, "TrackerMedianFlow_create", None),
        "mosse": getattr(legacy, "TrackerMOSSE_create", None),
    }
    factory = table.get(name)
    if factory is None:
        raise ValueError(f"OpenCV tracker {name!r} is not available in this cv2 "
                         f"({cv2.__version__}); opencv-contrib is needed for MedianFlow/MOSSE")
    return factory


class OpenCVTracker:
    """Uniform wrapper: a failed update keeps the last box and reports ``lost``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._factory = _opencv_factory(name)
        self._t: Any = None
        self._box = (0.0, 0.0, 0.0, 0.0)
        self._alive = False

    def init(self, image: np.ndarray, box) -> None:
        x, y, w, h = (float(v) for v in box)
        # OpenCV wants an integer rectangle of at least 1x1 inside the frame.
        r = (int(round(x)), int(round(y)), max(1, int(round(w))), max(1, int(round(h))))
        self._box = (x, y, w, h)
        self._t = self._factory()
        try:
            ok = self._t.init(image, r)
            self._alive = ok is None or bool(ok)  # the new API returns None
        except cv2.error:
            self._alive = False

    def update(self, image: np.ndarray) -> TrackOutput:
        if self._alive:
            try:
                ok, b = self._t.update(image)
            except cv2.error:
                ok, b = False, None
            if ok:
                self._box = tuple(float(v) for v in b)  # type: ignore[assignment]
                return TrackOutput(self._box, 1.0, False)
        return TrackOutput(self._box, 0.0, True)


def make_tracker(name: str) -> Tracker:
    """A fresh tracker by name (see :data:`TRACKERS`)."""
    if name == "aggregation":
        return AggregationTracker()
    return OpenCVTracker(name)


# --------------------------------------------------------------------------- metrics


def center_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance of box centres; boxes (..., 4) as x, y, w, h."""
    pc = pred[..., :2] + pred[..., 2:] / 2.0
    gc = gt[..., :2] + gt[..., 2:] / 2.0
    return np.linalg.norm(pc - gc, axis=-1)


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over union of (..., 4) x, y, w, h boxes."""
    x0 = np.maximum(pred[..., 0], gt[..., 0])
    y0 = np.maximum(pred[..., 1], gt[..., 1])
    x1 = np.minimum(pred[..., 0] + pred[..., 2], gt[..., 0] + gt[..., 2])
    y1 = np.minimum(pred[..., 1] + pred[..., 3], gt[..., 1] + gt[..., 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = pred[..., 2] * pred[..., 3] + gt[..., 2] * gt[..., 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def precision_curve(err: np.ndarray) -> np.ndarray:
    """Share of frames with centre error <= each of :data:`PRECISION_THRESHOLDS`."""
    if err.size == 0:
        return np.full(len(PRECISION_THRESHOLDS), np.nan)
    return (err[None, :] <= PRECISION_THRESHOLDS[:, None]).mean(axis=1)


def success_curve(ov: np.ndarray) -> np.ndarray:
    """Share of frames with IoU > each of :data:`SUCCESS_THRESHOLDS`."""
    if ov.size == 0:
        return np.full(len(SUCCESS_THRESHOLDS), np.nan)
    return (ov[None, :] > SUCCESS_THRESHOLDS[:, None]).mean(axis=1)


# --------------------------------------------------------------------------- running


@dataclass
class TrackRun:
    """One tracker on one track."""

    tracker: str
    sequence: str
    target: int
    attributes: list[str]
    boxes: np.ndarray  # (T, 4), frame 0 = init box
    scores: np.ndarray
    lost: np.ndarray
    seconds: float  # time in update()
    precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    success: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_scored: int = 0

    @property
    def fps(self) -> float:
        n = len(self.boxes) - 1
        return n / self.seconds if self.seconds > 0 else math.inf

    @property
    def precision20(self) -> float:
        return float(self.precision[20])

    @property
    def auc(self) -> float:
        return float(self.success.mean())


def run_tracker(tracker: Tracker, seq: TrackingSequence, target: int, name: str = "") -> TrackRun:
    """Initialise on frame 0 with the ground truth and track to the end; scores the run."""
    n = seq.n_frames
    boxes = np.zeros((n, 4))
    scores = np.zeros(n)
    lost = np.zeros(n, bool)
    boxes[0] = seq.boxes[0, target]
    scores[0] = 1.0
    tracker.init(seq.frames[0], tuple(boxes[0]))
    spent = 0.0
    for t in range(1, n):
        frame = seq.frames[t]
        t0 = time.perf_counter()
        out = tracker.update(frame)
        spent += time.perf_counter() - t0
        boxes[t], scores[t], lost[t] = out.box, out.score, out.lost
    run = TrackRun(name or getattr(tracker, "name", type(tracker).__name__), seq.name, target,
                   sorted(seq.attributes[target]), boxes, scores, lost, spent)
    score_run(run, seq)
    return run


def score_run(run: TrackRun, seq: TrackingSequence) -> None:
    mask = seq.visible[:, run.target].copy()
    mask[0] = False
    gt = seq.boxes[mask, run.target]
    pred = run.boxes[mask]
    run.n_scored = int(mask.sum())
    run.precision = precision_curve(center_error(pred, gt))
    run.success = success_curve(iou(pred, gt))


def evaluate(sequences: Iterable[TrackingSequence], trackers: Iterable[str] = ("aggregation",)
             + BASELINES, progress: bool = True) -> list[TrackRun]:
    """Run every tracker on every track (targets visible in frame 0) of ``sequences``."""
    cv2.setNumThreads(1)
    names = list(trackers)
    runs: list[TrackRun] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tracking eval", unit="track")
    for seq in sequences:
        for i in range(seq.n_targets):
            if not seq.visible[0, i]:
                continue
            for name in names:
                runs.append(run_tracker(make_tracker(name), seq, i, name))
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(seq.name)
    if bar is not None:
        bar.close()
    return runs


# --------------------------------------------------------------------------- summaries


def _group_stats(runs: list[TrackRun]) -> dict[str, Any]:
    prec = np.nanmean([r.precision for r in runs], axis=0)
    succ = np.nanmean([r.success for r in runs], axis=0)
    frames = sum(len(r.boxes) - 1 for r in runs)
    secs = sum(r.seconds for r in runs)
    return {
        "tracks": len(runs),
        "precision20": float(prec[20]),
        "success_auc": float(succ.mean()),
        "fps": frames / secs if secs > 0 else math.inf,
        "precision_curve": prec.tolist(),
        "success_curve": succ.tolist(),
    }


def summarize(runs: list[TrackRun]) -> dict[str, Any]:
    """Overall and per-attribute figures per tracker."""
    trackers = list(dict.fromkeys(r.tracker for r in runs))
    groups: dict[str, Callable[[TrackRun], bool]] = {"all": lambda r: True}
    present = sorted({a for r in runs for a in r.attributes},
                     key=lambda a: ATTRIBUTES.index(a) if a in ATTRIBUTES else 99)
    for a in present:
        groups[a] = lambda r, a=a: a in r.attributes
    if "shake" in present:  # only meaningful where shake is labelled (generated sequences)
        groups["no_shake"] = lambda r: "shake" not in r.attributes
    out: dict[str, Any] = {"trackers": trackers, "groups": {}}
    for g, pred in groups.items():
        out["groups"][g] = {}
        for t in trackers:
            sel = [r for r in runs if r.tracker == t and pred(r)]
            if sel:
                out["groups"][g][t] = _group_stats(sel)
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table: precision@20px / success AUC per group and tracker, and fps."""
    trackers = summary["trackers"]
    head = "| group | tracks | " + " | ".join(f"{t} P@20 / AUC" for t in trackers) + " |"
    sep = "|---|---:|" + "---:|" * len(trackers)
    lines = [head, sep]
    for g, stats in summary["groups"].items():
        if not stats:
            continue
        n = next(iter(stats.values()))["tracks"]
        cells = []
        best_p = max(s["precision20"] for s in stats.values())
        best_a = max(s["success_auc"] for s in stats.values())
        for t in trackers:
            s = stats.get(t)
            if s is None:
                cells.append("-")
                continue
            p = f"{100 * s['precision20']:.1f}"
            a = f"{100 * s['success_auc']:.1f}"
            p = f"**{p}**" if s["precision20"] == best_p else p
            a = f"**{a}**" if s["success_auc"] == best_a else a
            cells.append(f"{p} / {a}")
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    fps = summary["groups"]["all"]
    lines.append("| fps (per target) | | " + " | ".join(
        f"{fps[t]['fps']:.0f}" if t in fps else "-" for t in trackers) + " |")
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], out_dir: str | Path, group: str = "all",
                suffix: str = "") -> list[Path]:
    """Success and precision plots (PNG) of one group; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = summary["groups"][group]
    paths = []
    order = sorted(stats, key=lambda t: -stats[t]["success_auc"])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for t in order:
        s = stats[t]
        ax.plot(SUCCESS_THRESHOLDS, s["success_curve"], label=f"{t} [{s['success_auc']:.3f}]")
    ax.set(xlabel="overlap threshold (IoU)", ylabel="success rate", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Success plot ({group}, {next(iter(stats.values()))['tracks']} tracks)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    p = out / f"success{suffix}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    order = sorted(stats, key=lambda t: -stats[t]["precision20"])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for t in order:
        s = stats[t]
        ax.plot(PRECISION_THRESHOLDS, s["precision_curve"], label=f"{t} [{s['precision20']:.3f}]")
    ax.axvline(20, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="location error threshold (px)", ylabel="precision", xlim=(0, 50),
           ylim=(0, 1.02), title=f"Precision plot ({group})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = out / f"precision{suffix}.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def write_results(runs: list[TrackRun], summary: dict[str, Any], out_dir: str | Path,
                  meta: dict[str, Any] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta or {},
        "summary": {g: {t: {k: v for k, v in s.items() if not k.endswith("_curve")}
                        for t, s in st.items()} for g, st in summary["groups"].items()},
        "curves": summary,
        "tracks": [{"tracker": r.tracker, "sequence": r.sequence, "target": r.target,
                    "attributes": r.attributes, "frames_scored": r.n_scored,
                    "precision20": r.precision20, "success_auc": r.auc, "fps": r.fps,
                    "lost_frames": int(r.lost[1:].sum())} for r in runs],
    }
    p = out / "results.json"
    p.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return p


# --------------------------------------------------------------------------- the whole run


class NoTracksError(ValueError):
    """No track to evaluate: no target is visible in a sequence's first frame."""


def check_targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on one run's numbers: the aggregation tracker's overall
    success AUC above every baseline's, and its precision@20px on the drift (``shake``)
    subset at least 20 points above the best baseline's."""
    groups = summary["groups"]
    ours = "aggregation"
    out: dict[str, Any] = {}
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


def run_evaluation(trackers: list[str], out: Path, otb: Path | None = None, sequences: int = 10,
                   frames: int = 100, max_targets: int = 3, seed: int = 2019, command: str = "",
                   progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``vistream eval tracking``: evaluate ``trackers`` on the generated benchmark (or on the
    OTB folder ``otb``); write results.json, results.md and the curves (PNG) to ``out``, echo
    the table and return the figures of the last line. Raises :class:`NoTracksError` when no
    target is visible in a first frame."""
    if otb is not None:
        seqs: Iterable[TrackingSequence] = load_otb(otb)
        source = f"OTB folder {otb} ({len(seqs)} sequences)"
    else:
        seqs = default_suite(sequences, frames, seed, max_targets)
        source = (f"generated benchmark: {sequences} sequences x {frames} frames at 640x480, "
                  f"1-{max_targets} targets, seed {seed}")
    runs = evaluate(seqs, trackers, progress=progress)
    if not runs:
        raise NoTracksError("no track to evaluate (no target visible in a first frame)")
    summary = summarize(runs)
    table = format_table(summary)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_curves(summary, out, "all")
    if "shake" in summary["groups"]:
        plots += plot_curves(summary, out, "shake", "_shake")
    meta = {"source": source, "command": command, "trackers": trackers}
    targets = check_targets(summary)
    write_results(runs, summary, out, {**meta, "targets": targets})
    (out / "results.md").write_text(
        f"Command: `{command}`\n\n{source}; precision@20px / success AUC in %, "
        f"fps per target (update calls, single thread).\n\n{table}\n", encoding="utf-8")
    echo(f"{source}\n")
    echo(table)
    echo(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, "
         + ", ".join(str(p) for p in plots))
    return {"eval": "tracking", "tracks": summary["groups"]["all"][trackers[0]]["tracks"],
            **targets}
