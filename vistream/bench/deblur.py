"""``vistream bench deblur``: frames/s of the deblur stage on severely blurred JPEG frames.

The frames are seeded scenes of :mod:`vistream.models.data.blur` (severe blur), JPEG-encoded
as the stage receives them. Four contenders run in the same process, one after the other:

* the S3E stage as configured (its blur gate lets sharp-enough frames pass untouched);
* the S3E stage with the gate off (threshold +inf: every frame is deblurred, the worst case);
* the unguided generator (no semantic tree) with the gate off;
* skimage's Wiener deconvolution with the true kernel (a classical baseline; a quarter of the
  frames, at least 8, since it is slow).

Each stage run is warmed up on one batch first. The target is 15 frames/s for both S3E runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vistream.models.data.blur import make_sample
from vistream.models.deblur.evaluate import wiener
from vistream.stages.deblur import DeblurParams, DeblurStage
from vistream.stages.records import JPEG, Frame, encode_image

TARGET_FPS = 15
SEED_BASE = 77_000  # apart from the seeds of the evaluation sets and of training


def bench_frames(n: int, width: int, height: int, seed: int):
    """``n`` severely blurred seeded scenes as JPEG frame records, and their true kernels."""
    frames, kernels = [], []
    for i in range(n):
        s = make_sample(seed + i, "severe", width, height)
        img = (s.blurred[..., ::-1] * 255).round().astype(np.uint8)
        frames.append(Frame.from_image(img, "bench", i, timestamp_ms=i, content_type=JPEG, quality=90))
        kernels.append(s.kernel)
    return frames, kernels


def bench_deblur(frames: int = 48, width: int = 320, height: int = 240, batch: int = 8,
                 threads: int = 1, weights: Path | None = None, mirror_ensemble: bool = False,
                 seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Measure the four contenders; echo a readable summary and return the figures."""
    torch.set_num_threads(threads)
    fr, kernels = bench_frames(frames, width, height, SEED_BASE + seed)

    def fresh():
        return [Frame(f.frame_id, f.stream_id, f.seq, f.timestamp_ms, f.data, f.content_type) for f in fr]

    def run_stage(semantic: bool, gate: bool = True) -> tuple[float, dict]:
        # gate=False: threshold +inf, every frame is deblurred (the worst case)
        st = DeblurStage(DeblurParams(weights=str(weights) if weights else None, width=width,
                                      height=height, batch_size=batch, semantic=semantic,
                                      threads=threads, mirror_ensemble=mirror_ensemble,
                                      threshold=DeblurParams().threshold if gate else 1e9))
        st.setup()
        st.process(fresh()[:batch])  # warm-up
        st.passed = st.deblurred = 0
        msgs = fresh()
        t0 = time.perf_counter()
        for i in range(0, len(msgs), batch):
            st.process(msgs[i:i + batch])
        return len(msgs) / (time.perf_counter() - t0), st.stats()

    def run_wiener() -> float:
        msgs = fresh()[: max(8, len(fr) // 4)]
        t0 = time.perf_counter()
        for m, k in zip(msgs, kernels):
            img = m.image[..., ::-1].astype(np.float32) / 255
            encode_image((wiener(img, k, 0.5)[..., ::-1] * 255).astype(np.uint8))
        return len(msgs) / (time.perf_counter() - t0)

    s3e_fps, s3e_stats = run_stage(True)
    all_fps, _ = run_stage(True, gate=False)
    plain_fps, _ = run_stage(False, gate=False)
    w_fps = run_wiener()
    echo(f"S3E stage {s3e_fps:6.1f} fps  ({s3e_stats['deblurred']} of {frames} frames deblurred, "
         f"model {s3e_stats['model']})")
    echo(f"S3E stage with every frame deblurred {all_fps:6.1f} fps; unguided generator stage "
         f"(every frame) {plain_fps:6.1f} fps; "
         f"skimage Wiener (true kernel) {w_fps:6.1f} fps")
    return {"bench": "deblur", "size": f"{width}x{height}", "threads": threads,
            "batch": batch, "frames": frames, "mirror_ensemble": mirror_ensemble,
            "deblurred": s3e_stats["deblurred"],
            "fps": round(s3e_fps, 2), "fps_every_frame_deblurred": round(all_fps, 2),
            "target_fps": TARGET_FPS, "target_met": min(s3e_fps, all_fps) >= TARGET_FPS,
            "baseline_unguided_generator_fps": round(plain_fps, 2),
            "baseline_skimage_wiener_fps": round(w_fps, 2)}
