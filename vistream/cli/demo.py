"""``make demo``: a sample video through the demo pipeline on the embedded bus."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from vistream.models.data import SceneSpec, generate, write_ground_truth, write_video
from vistream.models.data.blur import blur_image
from vistream.pipeline.app import run_in_process
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.config import expand_env, parse_config
from vistream.pipeline.wire import Record, decode_message

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def run_demo(out: Path, frames: int = 150, seed: int = 0,
             echo: Callable[[str], None] = print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    shake = (frames // 2,) if frames > 1 else ()
    video = generate(SceneSpec(n_frames=frames, seed=seed, shake_frames=shake))
    blurred = _shake_blur(video.frames, shake, seed)
    video_path = write_video(video, out / "sample.mp4")
    write_ground_truth(video, out / "ground_truth.json")
    echo(f"sample video: {video_path} ({frames} frames, {video.spec.width}x{video.spec.height}, "
         f"{video.boxes.shape[1]} small moving objects, frames {blurred} motion-blurred by the "
         f"camera knock, ground truth in {out}/ground_truth.json)")

    os.environ.setdefault("DEMO_VIDEO", str(video_path.resolve()))
    os.environ.setdefault("DEMO_OUT", str((out / "summary").resolve()))
    data = yaml.safe_load(expand_env(DEMO_CONFIG.read_text()))
    # Start the tracker on every object visible in the first frame (as a detector would).
    targets = [{"stream": "demo-cam", "box": [float(v) for v in video.boxes[0, i]],
                "target_id": i, "seq": 0}
               for i in range(video.boxes.shape[1]) if video.visible[0, i]]
    for stage in data["stages"]:
        if stage["type"].startswith("track"):
            stage["params"]["targets"] = targets
    cfg = parse_config(data, str(DEMO_CONFIG))
    bus = MemoryBus(default_partitions=cfg.bus.partitions)
    report = run_in_process(cfg, bus=bus)
    for s in report.sources:
        echo(f"ingested {s.frames_sent} frames from {s.source} ({s.fps:.0f} frames/s)")
    for name, st in report.stages.items():
        echo(f"stage {name:8s} in {st.records_in:5d}  out {st.records_out:5d}  "
             f"dead-lettered {st.dead_lettered}  errors {st.errors}")
    feats = report.stage_objects.get("features")
    if feats is not None:
        echo(f"features: model {feats.model_id} (set DEMO_ARTIFACT to an artifact from "
             "`vistream export` to use a trained backbone)")
    deblur = report.stage_objects.get("deblur")
    if deblur is not None and hasattr(deblur, "stats"):
        st = deblur.stats()
        echo(f"deblur: {st['passed']} frames passed the blur gate untouched, {st['deblurred']} "
             f"deblurred and captioned (model {st['model']}, gate threshold {st['threshold']})")
    if "track" in report.stage_objects:
        echo(_tracking_report(bus, video))
    if "index" in report.stage_objects:
        echo(_query_report(report.stage_objects["index"].index, video))
    summary = report.stage_objects["summary"].summary()
    echo("summary: " + json.dumps(summary, indent=2))
    echo(f"contact sheet: {out / 'summary' / 'contact_sheet.png'}; "
         f"pipeline took {report.seconds:.1f} s")
    return summary


def _tracking_report(bus, video) -> str:
    """Centre error of the tracked boxes against the video's ground truth."""
    errors: dict[int, list[float]] = {}
    with bus.consumer(["track_states"], "demo-report") as c:
        while recs := c.poll(1000, 0.1):
            for r in recs:
                st = decode_message(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                           r.headers), accept=("track_state",))
                for tid, box, lost in zip(st.target_ids, st.boxes, st.lost, strict=True):
                    gt = video.boxes[st.seq, tid]
                    if not video.visible[st.seq, tid]:
                        continue  # as in OTB: only frames with a visible target count
                    if lost or not np.isfinite(box).all():
                        errors.setdefault(int(tid), []).append(np.inf)
                        continue
                    centre = box[:2] + box[2:] / 2
                    errors.setdefault(int(tid), []).append(
                        float(np.hypot(*(centre - (gt[:2] + gt[2:] / 2)))))
    lines = ["tracking (aggregation signature) vs ground truth, incl. the mid-video camera jump:"]
    for tid, errs in sorted(errors.items()):
        e = np.array(errs)
        lines.append(f"  target {tid}: {len(e)} frames visible, within 20 px in "
                     f"{100 * np.mean(e <= 20):.1f}%, median error {np.median(e):.1f} px")
    return "\n".join(lines)


def _query_report(index, video) -> str:
    """Ask the live index for the nearest frames of one frame, as `vistream query` would."""
    info = index.info()
    if not info["frames"]:
        return "index: empty"
    probe = "demo-cam:00000000"
    result = index.search_frame(probe, k=5)
    hits = ", ".join(f"{h.frame_id} (d={h.distance})" for h in result.hits)
    return (f"index: {info['frames']} frames, {info['n_bits']}-bit codes from "
            f"{result.model} v{result.model_version}"
            f"{' (warm start: no labels in this stream)' if result.warm_start else ''}\n"
            f"  nearest to {probe}: {hits}")


def _shake_blur(frames: list, shake: tuple[int, ...], seed: int, n: int = 4) -> list[int]:
    """Smear the ``n`` frames after each camera knock with a seeded camera-shake kernel and
    sensor noise (severe, as in the deblur data), so the deblur stage has work in the demo."""
    rng = np.random.default_rng(seed + 7)
    hit = [k for s in shake for k in range(s, min(s + n, len(frames)))]
    for k in hit:
        img = frames[k].astype(np.float32) / 255.0
        frames[k] = np.clip(blur_image(img, rng, "severe")[0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return hit
