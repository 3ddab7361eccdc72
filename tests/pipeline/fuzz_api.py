"""The app schemathesis fuzzes: the query API over a small live index, with an extractor, a bus
producer for POST /tracks and a write token; and the media-type strategies that make image
uploads (the schema declares ``image/jpeg, image/png`` for the ``image`` part).

Used by tests/pipeline/test_api_fuzz.py (in process, through ASGI), and as schemathesis's hooks
module plus a server for the command-line run of docs/reliability.md (section 5)::

    PYTHONPATH=. .venv/bin/python -m tests.pipeline.fuzz_api --port 8765 &
    PYTHONPATH=. SCHEMATHESIS_HOOKS=tests.pipeline.fuzz_api .venv/bin/schemathesis run \\
        http://127.0.0.1:8765/openapi.json --checks all --max-examples 100 --seed 1 \\
        -H "Authorization: Bearer $(.venv/bin/python -m tests.pipeline.fuzz_api --token)"
"""

from __future__ import annotations

import argparse

import numpy as np
import schemathesis
from hypothesis import strategies as st

from vistream.models.hashing.live import LiveIndex
from vistream.pipeline.api_tracks import attach_producer
from vistream.pipeline.bus import TopicSpec
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.service import ServiceLimits, create_app
from tests.conftest import ColourExtractor
from vistream.stages.records import encode_image

TOKEN = "fuzz-token-0123456789abcdef"
LIMITS = ServiceLimits(max_upload_bytes=200_000, max_pixels=1_000_000, max_k=50,
                       max_body_bytes=256 * 1024)
FRAMES = 40




def build_app(token: str | None = TOKEN):
    """The app and the bus its POST /tracks writes to."""
    ext = ColourExtractor()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(FRAMES)]
    index = LiveIndex("lsh", n_bits=32, seed=0)
    fids = [f"cam{i % 2}:{i:08d}" for i in range(FRAMES)]
    index.add(fids, ext.extract(images), stream_ids=[f"cam{i % 2}" for i in range(FRAMES)],
              timestamps=[1000 + i for i in range(FRAMES)], model_id=ext.model_id,
              tracks=[(f"cam{i % 2}", i % 5) for i in range(FRAMES)])
    index.set_meta(fids[3], caption="a person crossing",
                   tracks=[{"track_id": 5, "box": [1.0, 2.0, 3.0, 4.0], "score": 0.75}])
    app = create_app(index, ext, LIMITS, api_token=token)
    bus = MemoryBus()
    bus.create_topics([TopicSpec("track-inits", 2)])
    attach_producer(app, bus.producer(), "track-inits")
    return app, bus


@st.composite
def _image(draw, media: str) -> bytes:
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return encode_image(img, media)


schemathesis.openapi.media_type("image/jpeg", _image("image/jpeg"))
schemathesis.openapi.media_type("image/png", _image("image/png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--token", action="store_true", help="print the write token and exit")
    args = ap.parse_args()
    if args.token:
        print(TOKEN)
        return
    import uvicorn

    app, _bus = build_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
