"""A small world for the console's tests (API and browser): two streams of synthetic frames
through the real thumbnail stage into a thumbnail store, the same frames in a live index, a
colour-grid extractor for image search, and the app over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.console import attach_console
from vistream.pipeline.service import ServiceLimits, create_app
from vistream.stages.base import create_stage
from vistream.stages.records import Caption, Frame, Tracks
from tests.conftest import ColourExtractor

STREAMS = ("gate", "yard")
FRAMES_PER_STREAM = 12
T0_MS = 1_767_000_000_000  # capture times, ms since the epoch (late 2025)




def scene(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    """Four flat quadrants of random colours with a white square: distinct features."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    for y in (0, h // 2):
        for x in (0, w // 2):
            img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3)
    x0 = 40 + 10 * (seed % 12)
    img[100:140, x0:x0 + 40] = 255
    return img


def build(root: Path, limits: ServiceLimits | None = None):
    """(app, index, store, frames): ``frames`` maps frame id -> image."""
    stage = create_stage("thumbnail", {"width": 160, "store_dir": str(root / "thumbs")})
    stage.setup()
    ext = ColourExtractor()
    index = LiveIndex("lsh", n_bits=32, seed=0)
    frames: dict[str, np.ndarray] = {}
    for seq in range(FRAMES_PER_STREAM):
        batch = []
        for k, stream in enumerate(STREAMS):
            img = scene(100 * k + seq)
            f = Frame.from_image(img, stream, seq, timestamp_ms=T0_MS + 1000 * seq)
            frames[f.frame_id] = img
            batch.append(f)
            x0 = 40 + 10 * ((100 * k + seq) % 12)
            batch.append(Tracks(f.frame_id, stream, boxes=np.array([[x0, 100, 40, 40]], np.float32),
                                track_ids=np.array([k + 1]), scores=np.array([0.9], np.float32)))
        stage.process(batch)
    stage.process([Caption(f"gate:{FRAMES_PER_STREAM - 1:08d}", "gate", text="a white box")])
    ids = list(frames)
    index.add(ids, ext.extract([frames[i] for i in ids]), stream_ids=[i.split(":")[0] for i in ids],
              timestamps=[T0_MS + 1000 * int(i.split(":")[1]) for i in ids], model_id=ext.model_id)
    app = create_app(index, ext, limits or ServiceLimits(max_upload_bytes=300_000, max_k=100))
    attach_console(app, store=stage.store)
    return app, index, stage.store, frames
