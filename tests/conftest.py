"""Shared fixtures. Kafka tests run against the broker `make test` starts (VISTREAM_BOOTSTRAP);
without it they are skipped, unless VISTREAM_REQUIRE_KAFKA=1 makes that a failure (CI)."""

from __future__ import annotations

import os
import uuid

import cv2
import numpy as np
import pytest

from vistream.models.backbones.extractor import l2_normalize
from vistream.stages.records import Frame

KAFKA_BOOTSTRAP = os.environ.get("VISTREAM_BOOTSTRAP")
REQUIRE_KAFKA = os.environ.get("VISTREAM_REQUIRE_KAFKA") == "1"


def kafka_bootstrap() -> str:
    if not KAFKA_BOOTSTRAP:
        msg = "no broker: set VISTREAM_BOOTSTRAP (make test starts one)"
        if REQUIRE_KAFKA:
            pytest.fail(msg)
        pytest.skip(msg)
    return KAFKA_BOOTSTRAP


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def backend(request) -> str:
    if request.param == "kafka":
        kafka_bootstrap()
    return request.param


@pytest.fixture
def make_bus(backend):
    """Factory of buses of the parametrised backend; all are closed after the test."""
    from vistream.pipeline.bus import make_bus as _make

    made = []

    def factory(partitions: int = 1):
        if backend == "memory":
            bus = _make("memory", default_partitions=partitions)
        else:
            bus = _make("kafka", kafka_bootstrap())
        made.append(bus)
        return bus

    yield factory
    for b in made:
        b.close()


@pytest.fixture
def topic_name():
    return f"t-{uuid.uuid4().hex[:12]}"


def random_image(h: int = 36, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_frame(seq: int, stream: str = "cam", h: int = 36, w: int = 64) -> Frame:
    return Frame.from_image(random_image(h, w, seq), stream, seq, timestamp_ms=1_000 + seq)


class ColourExtractor:
    """A feature extractor for API tests: the mean colour of each cell of a 4x4 grid (48-d),
    deterministic and instant, so tests of the service need no backbone."""

    model_id = "colour-grid"
    dim = 48

    def extract(self, images):
        rows = [cv2.resize(im, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
                for im in images]
        return l2_normalize(np.array(rows) - 127.5)
