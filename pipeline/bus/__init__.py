"""Message bus: one interface (:mod:`pipeline.bus.base`), two backends.

``memory`` is the embedded default (one process, no broker); ``kafka`` talks to a real
broker through kafka-python. Use :func:`make_bus` to get one from settings.
"""

from __future__ import annotations

from vistream.pipeline.bus.base import (
    Bus,
    BusError,
    BusUnavailable,
    Consumer,
    Producer,
    TopicPartition,
    TopicSpec,
    commit_positions,
)
from vistream.pipeline.bus.kafka import KafkaBus
from vistream.pipeline.bus.memory import MemoryBus

__all__ = [
    "Bus", "BusError", "BusUnavailable", "Consumer", "Producer", "TopicPartition", "TopicSpec",
    "commit_positions", "make_bus",
]


def make_bus(backend: str = "memory", bootstrap: str = "127.0.0.1:9092", **kwargs) -> Bus:
    if backend == "memory":
        return MemoryBus(**kwargs)
    if backend == "kafka":
        return KafkaBus(bootstrap=bootstrap, **kwargs)
    raise ValueError(f"unknown bus backend {backend!r}: choose 'memory' or 'kafka'")
