"""Broker outages: the runner retries polls, produces and commits, keeps its batch, reports the
outage once; on a real broker stopped for 30 s mid-stream nothing is lost and no process exits.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from vistream.pipeline.bus import BusUnavailable, TopicSpec, make_bus
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.metrics import StageMetrics
from vistream.pipeline.runner import StageRunner
from vistream.pipeline.wire import encode_message
from vistream.stages.relay import RelayStage
from tests.conftest import kafka_bootstrap, make_frame


class Switch:
    """Where the fake broker is: up or away; counts the calls refused while away."""

    def __init__(self) -> None:
        self.down = False
        self.refused: dict[str, int] = {}

    def check(self, what: str) -> None:
        if self.down:
            self.refused[what] = self.refused.get(what, 0) + 1
            raise BusUnavailable(f"{what}: broker away")


class FlakyBus(MemoryBus):
    """The memory bus behind a switch: while it is down, polls, flushes and commits raise
    BusUnavailable (a refused flush keeps its records, as the Kafka producer does)."""

    def __init__(self, switch: Switch, **kw) -> None:
        super().__init__(**kw)
        self.switch = switch

    def reachable(self) -> bool:
        return not self.switch.down

    def producer(self):
        inner, switch = super().producer(), self.switch
        queued: list = []

        class P:
            def send(self, topic, value, key=None, headers=None):
                queued.append((topic, value, key, headers))

            def flush(self, timeout=None):
                switch.check("flush")
                for args in queued:
                    inner.send(*args)
                queued.clear()
                inner.flush()

            def close(self):
                inner.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        return P()

    def consumer(self, topics, group_id, auto_offset_reset="earliest", on_assign=None):
        inner, switch = super().consumer(topics, group_id, auto_offset_reset, on_assign), self.switch

        class C:
            def poll(self, max_records=500, timeout=1.0):
                switch.check("poll")
                return inner.poll(max_records, timeout)

            def commit(self, offsets=None):
                switch.check("commit")
                inner.commit(offsets)

            def lag(self):
                switch.check("lag")
                return inner.lag()

            def assignment(self):
                return inner.assignment()

            def close(self):
                inner.close()

        return C()


class SwitchOnProcess(RelayStage):
    """A relay that takes the broker away while it processes its first batch."""

    switch: Switch | None = None

    def process(self, batch):
        if self.switch is not None and not getattr(self, "_done", False):
            self._done = True
            self.switch.down = True
        return super().process(batch)


def setup_pipeline(n: int):
    switch = Switch()
    bus = FlakyBus(switch, default_partitions=1)
    bus.create_topics([TopicSpec("in", 1), TopicSpec("out", 1)])
    with bus.producer() as p:
        for i in range(n):
            r = encode_message(make_frame(i))
            p.send("in", r.value, r.key, r.headers)
        p.flush()
    return switch, bus


def new_runner(bus, stage=None, registry=None) -> StageRunner:
    return StageRunner(stage or RelayStage(), bus, ["in"], {"frame": "out"}, batch_size=4,
                       poll_timeout=0.05,
                       metrics=StageMetrics("flaky", registry or CollectorRegistry()))


def out_ids(bus) -> list[str]:
    with MemoryBus.consumer(bus, ["out"], f"reader-{time.monotonic_ns()}") as c:
        recs = c.poll(1000, 0.2)
    return [dict(r.headers)["frame_id"].decode() for r in recs]


def test_an_outage_between_process_and_commit_loses_nothing_and_logs_one_line_each_way(caplog):
    switch, bus = setup_pipeline(12)
    stage = SwitchOnProcess()
    stage.switch = switch
    registry = CollectorRegistry()
    runner = new_runner(bus, stage, registry)
    runner.open()
    gauge = lambda: registry.get_sample_value("vistream_broker_up", {"stage": "flaky"})  # noqa: E731
    done = threading.Event()
    caplog.set_level(logging.INFO, logger="vistream.runner")

    def bring_back() -> None:
        while not switch.refused.get("flush"):  # the batch's produce was refused
            time.sleep(0.01)
        while sum(switch.refused.values()) < 5:  # ... and retried a few times
            time.sleep(0.01)
        assert gauge() == 0
        assert runner.stats.batches == 0, "nothing was committed while the broker was away"
        switch.down = False
        done.set()

    helper = threading.Thread(target=bring_back)
    helper.start()
    while runner.stats.records_in < 12:
        runner.step()
    helper.join()
    runner.close()
    assert done.is_set()
    assert gauge() == 1
    assert sorted(out_ids(bus)) == sorted(make_frame(i).frame_id for i in range(12))
    down = [r for r in caplog.records if r.getMessage().startswith("broker unreachable")]
    back = [r for r in caplog.records if r.getMessage().startswith("broker reachable again")]
    assert len(down) == 1 and len(back) == 1
    assert all(r.exc_info is None for r in caplog.records), "no traceback"
    assert runner.outages == 1


def test_a_refused_commit_is_retried_and_the_outputs_are_not_sent_twice():
    switch, bus = setup_pipeline(4)
    runner = new_runner(bus)
    runner.open()
    original = runner._consumer.commit
    calls = {"n": 0}

    def commit_refused_twice(offsets=None):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise BusUnavailable("commit: broker away")
        original(offsets)

    runner._consumer.commit = commit_refused_twice
    while runner.stats.records_in < 4:
        runner.step()
    runner.close()
    assert calls["n"] == 3
    assert len(out_ids(bus)) == 4, "the produce is not repeated for a failed commit"
    assert runner.broker_up and runner.outages == 1


def test_an_idle_stage_notices_the_outage_and_a_stop_ends_it_during_one():
    switch, bus = setup_pipeline(0)
    registry = CollectorRegistry()
    runner = new_runner(bus, registry=registry)
    stop = threading.Event()
    switch.down = True
    t = threading.Thread(target=runner.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 10
    while runner.broker_up and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not runner.broker_up
    assert registry.get_sample_value("vistream_broker_up", {"stage": "flaky"}) == 0
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive(), "a stop during an outage ends the stage"


# ----------------------------------------------------------------------------- real broker
@pytest.mark.kafka
def test_broker_stopped_30s_mid_stream_nothing_lost_no_process_exits(tmp_path):
    """A broker of the test's own (the shared one stays up), stopped for 30 s under running
    thumbnail and sink processes while frames keep coming (about 90 s)."""
    kafka_bootstrap()  # the broker jars and Java are there when the shared broker is
    from vistream.pipeline.chaos import free_port
    from vistream.pipeline.outage import outage_run

    report = outage_run([30], gap=5, frames=80, port=free_port(pair=True), work_dir=tmp_path / "run")
    assert report["lost"] == 0
    assert report["sink_missing"] == 0 and report["sink_duplicates"] == 0
    assert report["sink_entries"] == 80
    assert report["exits"] == []
    (row,) = report["outages"]
    assert all(v is not None for v in row["consuming_again_s"].values()), row
    assert all(row["broker_up_gauge_dropped"].values()), row
    assert report["log_lines"]["tracebacks"] == 0
    assert report["log_lines"]["broker_unreachable"] >= 2  # each stage saw it
    assert report["log_lines"]["broker_back"] == report["log_lines"]["broker_unreachable"]


def test_the_embedded_bus_is_always_reachable():
    assert make_bus("memory").reachable()
