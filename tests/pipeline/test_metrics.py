import socket
import urllib.request

import numpy as np
from prometheus_client import CollectorRegistry

from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.metrics import StageMetrics, serve_metrics
from vistream.pipeline.runner import StageRunner
from vistream.stages.hashing import HashingParams, HashingStage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_stage_counters():
    m = StageMetrics("endpoint-test")  # the default registry is what the endpoint serves
    m.records_in.inc(5)
    m.dead_lettered.inc()
    port = free_port()
    assert serve_metrics(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'vistream_records_in_total{stage="endpoint-test"} 5.0' in body
    assert 'vistream_dead_lettered_total{stage="endpoint-test"} 1.0' in body
    assert "vistream_batch_latency_seconds_bucket" in body


def test_port_zero_disables_and_registries_are_separate():
    assert serve_metrics(0) is False
    a, b = CollectorRegistry(), CollectorRegistry()
    StageMetrics("s", a).records_out.inc(2)
    StageMetrics("s", b).records_out.inc(3)
    assert a.get_sample_value("vistream_records_out_total", {"stage": "s"}) == 2
    assert b.get_sample_value("vistream_records_out_total", {"stage": "s"}) == 3


def test_a_runner_exports_its_stage_figures():
    registry = CollectorRegistry()
    stage = HashingStage(HashingParams(model="lsh", n_bits=16, background=False))
    runner = StageRunner(stage, MemoryBus(), ["features"], name="index-gauges",
                         metrics=StageMetrics("index-gauges", registry))
    runner.open()
    try:
        stage.index.add(["a", "b", "c"], np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32))
        assert registry.get_sample_value("vistream_stage_codes_indexed", {"stage": "index-gauges"}) == 3
    finally:
        runner.close()
