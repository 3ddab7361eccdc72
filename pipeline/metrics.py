"""Prometheus metrics, one set per stage (label ``stage``), served on a configurable port."""

from __future__ import annotations

import logging
import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = logging.getLogger("vistream.metrics")


class StageMetrics:
    """The counters a runner updates. Several stages in one process share one registry."""

    _lock = threading.Lock()
    _by_registry: dict[int, dict[str, object]] = {}

    def __init__(self, stage: str, registry: CollectorRegistry = REGISTRY) -> None:
        with self._lock:
            m = self._by_registry.get(id(registry))
            if m is None:
                m = self._by_registry[id(registry)] = self._create(registry)
        self.stage = stage
        self.records_in = m["records_in"].labels(stage)
        self.records_out = m["records_out"].labels(stage)
        self.errors = m["errors"].labels(stage)
        self.dead_lettered = m["dead_lettered"].labels(stage)
        self.batch_latency = m["batch_latency"].labels(stage)
        self.consumer_lag = m["consumer_lag"].labels(stage)

    @staticmethod
    def _create(registry: CollectorRegistry) -> dict[str, object]:
        return {
            "records_in": Counter("vistream_records_in", "Records consumed", ["stage"],
                                  registry=registry),
            "records_out": Counter("vistream_records_out", "Records produced", ["stage"],
                                   registry=registry),
            "errors": Counter("vistream_errors", "Records whose processing raised", ["stage"],
                              registry=registry),
            "dead_lettered": Counter("vistream_dead_lettered",
                                     "Records sent to a dead-letter topic", ["stage"],
                                     registry=registry),
            "batch_latency": Histogram(
                "vistream_batch_latency_seconds", "Poll-to-commit time of one batch", ["stage"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry),
            "consumer_lag": Gauge("vistream_consumer_lag",
                                  "Records not yet consumed in assigned partitions", ["stage"],
                                  registry=registry),
        }


_served_ports: set[int] = set()


def serve_metrics(port: int, host: str = "127.0.0.1") -> bool:
    """Expose /metrics on ``port`` (0 disables). Returns whether a server is listening."""
    if port <= 0:
        return False
    if port in _served_ports:
        return True
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics port %d unavailable (%s); metrics not served", port, exc)
        return False
    _served_ports.add(port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
