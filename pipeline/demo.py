"""``make demo``: a sample video through the demo pipeline on the embedded bus."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.config import expand_env, parse_config

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def run_demo(out: Path, frames: int = 150, seed: int = 0,
             echo: Callable[[str], None] = print) -> dict:
    from pipeline.app import run_in_process
    from pipeline.synthetic import SceneSpec, generate, write_ground_truth, write_video

    out.mkdir(parents=True, exist_ok=True)
    video = generate(SceneSpec(n_frames=frames, seed=seed, shake_frames=(frames // 2,) if frames > 1 else ()))
    video_path = write_video(video, out / "sample.mp4")
    write_ground_truth(video, out / "ground_truth.json")
    echo(f"sample video: {video_path} ({frames} frames, {video.spec.width}x{video.spec.height}, "
         f"{video.boxes.shape[1]} small moving objects, ground truth in {out}/ground_truth.json)")

    os.environ.setdefault("DEMO_VIDEO", str(video_path.resolve()))
    os.environ.setdefault("DEMO_OUT", str((out / "summary").resolve()))
    cfg = parse_config(yaml.safe_load(expand_env(DEMO_CONFIG.read_text())), str(DEMO_CONFIG))
    report = run_in_process(cfg)
    for s in report.sources:
        echo(f"ingested {s.frames_sent} frames from {s.source} ({s.fps:.0f} frames/s)")
    for name, st in report.stages.items():
        echo(f"stage {name:8s} in {st.records_in:5d}  out {st.records_out:5d}  "
             f"dead-lettered {st.dead_lettered}  errors {st.errors}")
    summary = report.stage_objects["summary"].summary()
    echo("summary: " + json.dumps(summary, indent=2))
    echo(f"contact sheet: {out / 'summary' / 'contact_sheet.png'}; "
         f"pipeline took {report.seconds:.1f} s")
    return summary
