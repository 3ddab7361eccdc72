"""vistream bench bus: a broker it starts for itself is stopped when it is done."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from vistream.bench import bus as bench_bus_module


def test_bench_bus_stops_the_broker_it_started_even_when_the_run_fails(monkeypatch):
    events: list[str] = []

    @contextmanager
    def owned(port):
        events.append("up")
        try:
            yield SimpleNamespace(bootstrap="127.0.0.1:1")
        finally:
            events.append("down")

    def make_bus(kind, *args):
        if kind == "kafka":
            raise OSError("no kafka here")
        return real_make_bus(kind, *args)

    real_make_bus = bench_bus_module.make_bus
    monkeypatch.setattr(bench_bus_module.broker, "running", owned)
    monkeypatch.setattr(bench_bus_module, "make_bus", make_bus)
    monkeypatch.setattr(bench_bus_module, "_hop", lambda *a: 100.0)
    with pytest.raises(OSError, match="no kafka here"):
        bench_bus_module.bench_bus(frames=2, echo=lambda *_: None)
    assert events == ["up", "down"]
