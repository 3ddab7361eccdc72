"""Prometheus metrics, one set per stage (label ``stage``), served on a configurable port.

Besides the runner's counters, a stage may report figures of its own: a ``metrics()`` method
returning ``{figure: number}`` (and optionally ``model_info()`` returning ``{label: text}``).
:func:`watch_stage` exports them as gauges ``vistream_stage_<figure>{stage=...}`` (and
``vistream_stage_model_info{stage, ...} 1``), read from the stage at scrape time, so nothing
is copied while it runs. The index stage reports its hash model, codes indexed, labels and the
times of its last fit and swap this way.
"""

from __future__ import annotations

import logging
import threading
import weakref

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("vistream.metrics")


class StageMetrics:
    """The counters a runner updates. Several stages in one process share one registry."""

    _lock = threading.Lock()
    # by the registry itself, not its id(): a freed registry's id is reused by a new one
    _by_registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, stage: str, registry: CollectorRegistry = REGISTRY) -> None:
        with self._lock:
            m = self._by_registry.get(registry)
            if m is None:
                m = self._by_registry[registry] = self._create(registry)
        self.stage = stage
        self.records_in = m["records_in"].labels(stage)
        self.records_out = m["records_out"].labels(stage)
        self.errors = m["errors"].labels(stage)
        self.dead_lettered = m["dead_lettered"].labels(stage)
        self.batch_latency = m["batch_latency"].labels(stage)
        self.consumer_lag = m["consumer_lag"].labels(stage)
        self.broker_up = m["broker_up"].labels(stage)
        self.registry = registry

    def watch_stage(self, stage: Any) -> None:
        """Export ``stage``'s own figures under this stage name (see :func:`watch_stage`)."""
        watch_stage(self.stage, stage, self.registry)

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
            "broker_up": Gauge("vistream_broker_up",
                               "1 while the stage reaches its broker, 0 during an outage",
                               ["stage"], registry=registry),
        }


class StageGauges:
    """A collector of the figures stages report (``metrics()``, ``model_info()``), by stage
    name; one per registry. A stage object watched under a name already taken replaces the
    old one (a restarted runner), so no series is registered twice."""

    def __init__(self) -> None:
        self.stages: dict[str, Any] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        infos: list[tuple[str, dict[str, str]]] = []
        for name, stage in sorted(self.stages.items()):
            try:
                figures = dict(stage.metrics())
                info = dict(stage.model_info()) if hasattr(stage, "model_info") else {}
            except Exception as exc:  # a scrape must never fail because of one stage
                log.debug("stage %s: figures unavailable: %s", name, exc)
                continue
            for key, value in figures.items():
                fam = families.get(key)
                if fam is None:
                    fam = families[key] = GaugeMetricFamily(
                        f"vistream_stage_{key}", f"Stage figure {key!r}", labels=["stage"])
                fam.add_metric([name], float(value))
            if info:
                infos.append((name, info))
        yield from families.values()
        if infos:  # one family: the union of the label names, "" where a stage has none
            keys = sorted({k for _, info in infos for k in info})
            fam = GaugeMetricFamily("vistream_stage_model_info", "The stage's model, as labels",
                                    labels=["stage", *keys])
            for name, info in infos:
                fam.add_metric([name, *(str(info.get(k, "")) for k in keys)], 1.0)
            yield fam


_gauges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # by registry
_gauges_lock = threading.Lock()


def watch_stage(name: str, stage: Any, registry: CollectorRegistry = REGISTRY) -> StageGauges:
    """Export the figures of ``stage`` (its ``metrics()``) as gauges labelled ``stage=name``
    in ``registry``; a stage without ``metrics()`` is ignored."""
    with _gauges_lock:
        gauges = _gauges.get(registry)
        if gauges is None:
            gauges = _gauges[registry] = StageGauges()
            registry.register(gauges)
        if callable(getattr(stage, "metrics", None)):
            gauges.stages[name] = stage
    return gauges


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
