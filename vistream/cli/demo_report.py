"""``out/demo/report.html`` of ``vistream demo``: one self-contained page (images embedded as
base64) with the figures measured against the ground truth, frames/s per stage, annotated
frames (boxes, ids, captions) and curves drawn with matplotlib."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.data.classed import ClassedSequence

__all__ = ["write_report"]

_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}
.frames img{width:49%;margin:2px}img.curve{max-width:100%}.target{color:#666}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _tracking_curve(seq: ClassedSequence, matched: np.ndarray, track_object: dict) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.35 * len(seq.ids) + 1.2))
    for i in range(len(seq.ids)):
        vis = np.flatnonzero(seq.present[:, i])
        hit = np.flatnonzero(matched[:, i]) if matched.size else np.zeros(0, int)
        ax.scatter(vis, np.full(len(vis), i), marker="|", color="#ddd", s=60)
        ax.scatter(hit, np.full(len(hit), i), marker="|", color="tab:green", s=60)
    ax.set_yticks(range(len(seq.ids)))
    tracks = {}
    for t, o in track_object.items():
        tracks.setdefault(o, []).append(t)
    ax.set_yticklabels([f"obj {i + 1} (digit {c}) tracks {sorted(tracks.get(i, []))}"
                        for i, c in enumerate(seq.classes.tolist())], fontsize=8)
    ax.set_xlabel("frame")
    ax.set_title("ground-truth objects: present (grey) and tracked (green, IoU >= 0.3)")
    out = _png(fig)
    plt.close(fig)
    return out


def _retrieval_curve(ret: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, colour in (("lsh", "tab:grey"), ("sdoh", "tab:blue")):
        curve = ret[key].get("precision_at_k") or []
        ax.plot(np.arange(1, len(curve) + 1), curve, color=colour,
                label=f"{ret[key]['model']} (mAP {ret[key]['mAP']:.3f})")
    ax.set_xlabel("k (crops of other objects, by Hamming distance)")
    ax.set_ylabel("precision@k (same digit)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("held-out crop queries against the live index")
    out = _png(fig)
    plt.close(fig)
    return out


def _deblur_curve(scores: list[float], threshold: float, deb: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.2))
    a.plot(scores, color="tab:blue", lw=1)
    a.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"gate {threshold}")
    for t in deb["frames"]:
        a.axvline(t, color="tab:orange", alpha=0.4)
    a.set_xlabel("frame (arrival order)")
    a.set_ylabel("gradient-energy ratio")
    a.set_title("blur gate (orange: deblurred)")
    a.legend()
    x = np.arange(len(deb["frames"]))
    b.bar(x - 0.2, deb["psnr_in"], 0.4, label="as ingested", color="tab:grey")
    b.bar(x + 0.2, deb["psnr_out"], 0.4, label="deblurred", color="tab:green")
    b.set_xticks(x)
    b.set_xticklabels([str(t) for t in deb["frames"]], fontsize=8)
    b.set_xlabel("frame")
    b.set_ylabel("PSNR vs sharp (dB)")
    if len(x):
        lo = min(deb["psnr_in"] + deb["psnr_out"])
        b.set_ylim(lo - 2, max(deb["psnr_in"] + deb["psnr_out"]) + 1)
    b.legend()
    out = _png(fig)
    plt.close(fig)
    return out


def _row(cells: list[Any], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"


def _objects_table(seq: ClassedSequence, tr: dict[str, Any], ret: dict[str, Any]) -> str:
    tracks: dict[int, list[int]] = {}
    for t, o in tr["track_object"].items():
        tracks.setdefault(int(o), []).append(int(t))
    rows = [_row(["object", "digit", "size (px)", "labels", "frames present", "frames tracked",
                  "track ids", "lost for good"], head=True)]
    for i, c in enumerate(seq.classes.tolist()):
        size = seq.boxes[seq.present[:, i], i, 2:].max() if seq.present[:, i].any() else 0
        rows.append(_row([i + 1, c, f"{size:.0f}",
                          "labelled" if i in ret["labelled_objects"] else "held out (queries)",
                          tr["present"][i], tr["matched"][i], sorted(tracks.get(i, [])) or "-",
                          "yes" if i in tr["lost_for_good"] else ""]))
    return "".join(rows)


def write_report(out: Path, seq: ClassedSequence, figures: dict[str, Any],
                 stage_objects: dict[str, Any], frames: list[tuple[str, bytes]]) -> Path:
    """Write ``out/report.html`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    tr, ret, deb, fps = (figures["tracking"], figures["retrieval"], figures["deblur"],
                         figures["fps"])
    gate = stage_objects.get("deblur")
    scores = list(getattr(gate, "last_scores", []))
    threshold = float(getattr(getattr(gate, "params", None), "threshold", 1.7))
    n_obj = len(seq.ids)
    lost = tr["lost_for_good"]
    main = [
        _row(["figure", "measured", "target"], head=True),
        _row(["tracking IDF1", f"{tr['idf1']:.3f}", ">= 0.8"]),
        _row(["MOTA / id switches", f"{tr['mota']:.3f} / {tr['id_switches']}", ""]),
        _row(["objects lost for good while visible",
              f"{len(lost)} of {n_obj}" + (f" (objects {[i + 1 for i in lost]})" if lost else ""),
              "0"]),
        _row(["retrieval mAP, a random ranking", f"{ret['lsh'].get('chance', float('nan')):.3f}",
              ""]),
        _row(["retrieval mAP, LSH warm start", f"{ret['lsh']['mAP']:.3f}", ""]),
        _row(["retrieval mAP, SDOH", f"{ret['sdoh']['mAP']:.3f}", ">= LSH + 0.2"]),
        _row(["deblur gain (dB, on the deblurred frames)",
              f"{deb['gain_db']:.2f} ({len(deb['frames'])} frames)", ""]),
    ]
    fps_rows = [_row(["stage", "frames/s (busy time)"], head=True)]
    fps_rows += [_row([k, f"{v:.1f}"]) for k, v in fps.items()]
    imgs = "".join(f'<img title="{html.escape(name)}" src="data:image/jpeg;base64,'
                   f'{base64.b64encode(data).decode()}">' for name, data in frames)
    caps = "".join(_row([fid, text]) for fid, text in sorted(deb.get("captions", {}).items()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vistream demo</title>
<style>{_STYLE}</style></head><body>
<h1>vistream demo</h1>
<p>{seq.n_frames} frames of {seq.spec.width}x{seq.spec.height}: {n_obj} digit sprites (held-out
test digits, classes {sorted(set(seq.classes.tolist()))}, {seq.spec.size[0]:.0f}-{seq.spec.size[1]:.0f}
px) over a photo under a shaking camera, seed {seq.spec.seed}. Detect, track, features (1-bit
backbone, crops), live index (LSH warm start, then SDOH from labels of the tracks of objects
{[i + 1 for i in ret['labelled_objects']]}: {ret['label_records']} label records,
{ret['rows_labelled']} crops labelled), deblur, annotate, summary, on the embedded bus.</p>
<table>{''.join(main)}</table>
<h2>Frames/s per stage</h2><table>{''.join(fps_rows)}</table>
<h2>Annotated frames</h2><div class="frames">{imgs}</div>
<h2>Objects</h2><table>{_objects_table(seq, tr, ret)}</table>
<h2>Tracking</h2><img class="curve" src="data:image/png;base64,{_tracking_curve(
        seq, np.asarray(tr['matched_frames']), tr['track_object'])}">
<h2>Retrieval</h2><p>{ret['lsh']['queries']} queries (crops of held-out objects) against
{ret['lsh']['rows']} indexed crops; a query ranks the crops of every other object.</p>
<img class="curve" src="data:image/png;base64,{_retrieval_curve(ret)}">
<h2>Deblurring</h2><img class="curve" src="data:image/png;base64,{_deblur_curve(
        scores, threshold, deb)}">
<table>{_row(['frame', 'caption'], head=True)}{caps}</table>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
