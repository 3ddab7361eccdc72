"""The stage runner: delivery, dead-lettering, isolation of failures, shutdown, metrics."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from vistream.pipeline.bus import TopicPartition, TopicSpec
from vistream.pipeline.metrics import StageMetrics
from vistream.pipeline.runner import StageRunner, positions_from_carry
from vistream.pipeline.wire import encode_message
from vistream.stages.base import Stage
from vistream.stages.records import Frame, Message, Tracks
from vistream.stages.relay import RelayStage
from tests.conftest import make_frame

pytestmark = []


def drain(consumer, n: int, timeout: float = 30.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += consumer.poll(100, 0.3)
    return out


def run_until_idle(runner: StageRunner, idle: float = 1.0) -> None:
    runner.run(threading.Event(), idle_timeout=idle)


def produce(bus, topic: str, records) -> None:
    with bus.producer() as p:
        for key, value, headers in records:
            p.send(topic, value, key, headers)
        p.flush()


def frame_rec(seq: int):
    r = encode_message(make_frame(seq))
    return r.key, r.value, r.headers


def test_bad_records_go_to_dlq_with_reason_and_neighbours_pass(make_bus, topic_name):
    bus = make_bus()
    tin, tout = topic_name, topic_name + "-out"
    bus.create_topics([TopicSpec(tin, 1), TopicSpec(tout, 1), TopicSpec(tin + ".dlq", 1)])
    good = encode_message(make_frame(1))
    truncated = good.value[: len(good.value) // 2]
    wrong_type = [(k, v if k != "content_type" else b"text/plain") for k, v in good.headers]
    result = encode_message(Tracks("f", "cam"))
    records = [
        frame_rec(0),
        (b"cam", truncated, good.headers),                  # truncated JPEG
        frame_rec(2),
        (b"cam", b"", good.headers),                        # empty value
        (b"cam", good.value, wrong_type),                   # wrong content type
        (result.key, result.value, result.headers),         # a tracks record on a frame topic
        frame_rec(6),
        (b"cam", encode_message(make_frame(7, h=200, w=300)).value, good.headers),  # oversized
        (None, b"hello, not an image", []),                 # bare garbage, no headers
        frame_rec(9),
    ]
    produce(bus, tin, records)
    runner = StageRunner(RelayStage(), bus, [tin], {"frame": tout}, batch_size=4,
                         max_frame_bytes=len(good.value) + 100,
                         metrics=StageMetrics("t", CollectorRegistry()))
    run_until_idle(runner)

    with bus.consumer([tout], "check-out") as c:
        out = drain(c, 4)
    ids = [dict(r.headers)["frame_id"].decode() for r in out]
    assert ids == [make_frame(i).frame_id for i in (0, 2, 6, 9)]

    with bus.consumer([tin + ".dlq"], "check-dlq") as c:
        dead = drain(c, 6)
    reasons = [dict(r.headers)["dlq_reason"].decode() for r in dead]
    assert len(dead) == 6
    assert "truncated JPEG" in reasons[0]
    assert "empty value" in reasons[1]
    assert "text/plain" in reasons[2]
    assert "unexpected record kind 'tracks'" in reasons[3]
    assert "oversized" in reasons[4]
    assert "no headers and its value (19 bytes) is neither JPEG nor PNG" in reasons[5]
    # The original bytes survive, so a fixed consumer can replay them.
    assert dead[0].value == truncated
    assert dict(dead[0].headers)["dlq_source"].decode() == f"{tin}/0/1"
    assert runner.stats.dead_lettered == 6 and runner.stats.records_in == 10
    # Everything, good and bad, is committed: nothing is stuck.
    with bus.consumer([tin], runner.group_id) as c:
        assert drain(c, 1, timeout=2) == []


class ExplodesOnSeq(Stage):
    name = "explodes"
    accepts = ("frame",)
    emits = ("frame",)

    def __init__(self, bad: set[int]):
        super().__init__()
        self.bad = bad
        self.calls = 0

    def process(self, batch: list[Message]) -> list[Message]:
        self.calls += 1
        for m in batch:
            assert isinstance(m, Frame)
            if m.seq in self.bad:
                raise RuntimeError(f"cannot handle seq {m.seq}")
        return list(batch)


def test_a_raising_stage_dead_letters_only_the_culprit(make_bus, topic_name):
    bus = make_bus()
    tin, tout = topic_name, topic_name + "-out"
    bus.create_topics([TopicSpec(tin, 1), TopicSpec(tout, 1)])
    produce(bus, tin, [frame_rec(i) for i in range(12)])
    stage = ExplodesOnSeq({3, 8})
    runner = StageRunner(stage, bus, [tin], {"frame": tout}, batch_size=6,
                         metrics=StageMetrics("t", CollectorRegistry()))
    run_until_idle(runner)
    with bus.consumer([tout], "check") as c:
        out = drain(c, 10)
    assert sorted(int(dict(r.headers)["seq"]) for r in out) == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]
    with bus.consumer([tin + ".dlq"], "check-dlq") as c:
        dead = drain(c, 2)
    assert [dict(r.headers)["dlq_reason"].decode() for r in dead] == [
        "RuntimeError: cannot handle seq 3", "RuntimeError: cannot handle seq 8"]
    assert runner.stats.errors == 2


def test_stop_finishes_the_batch_and_commits(topic_name):
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    produce(bus, topic_name, [frame_rec(i) for i in range(50)])

    class Slow(RelayStage):
        def process(self, batch):
            time.sleep(0.05)
            return super().process(batch)

    runner = StageRunner(Slow(), bus, [topic_name], {"frame": "out"}, batch_size=5,
                         metrics=StageMetrics("t", CollectorRegistry()))
    stop = threading.Event()
    t = threading.Thread(target=runner.run, args=(stop,))
    t.start()
    time.sleep(0.2)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    done = runner.stats.records_in
    assert 0 < done < 50, "stopped mid-stream, after whole batches"
    assert bus.committed(runner.group_id) == {TopicPartition(topic_name, 0): done}
    assert sum(bus.end_offsets("out").values()) == done


def test_metrics_count_in_out_dead(topic_name):
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    produce(bus, topic_name, [frame_rec(0), (None, b"junk", []), frame_rec(2)])
    reg = CollectorRegistry()
    runner = StageRunner(RelayStage(), bus, [topic_name], {"frame": "out"},
                         metrics=StageMetrics("relay-m", reg))
    run_until_idle(runner, idle=0.3)

    def value(name):
        return reg.get_sample_value(name, {"stage": "relay-m"})

    assert value("vistream_records_in_total") == 3
    assert value("vistream_records_out_total") == 2
    assert value("vistream_dead_lettered_total") == 1
    assert value("vistream_batch_latency_seconds_count") >= 1
    assert value("vistream_consumer_lag") == 0


def test_runner_refuses_a_stage_without_routes():
    from vistream.pipeline.bus.memory import MemoryBus

    with pytest.raises(ValueError, match="emits"):
        StageRunner(RelayStage(), MemoryBus(), ["in"], {})


class Remembers(RelayStage):
    """A stateful relay: its state is the sequence numbers it has seen; its snapshots go to
    ``store``, carry included, and ``restore`` reads them back."""

    stateful = True

    def __init__(self, store: dict, due=lambda closing: closing):
        super().__init__()
        self.store = store
        self.due = due
        self.seen: list[int] = []
        self.due_calls: list[bool] = []

    def process(self, batch):
        self.seen += [m.seq for m in batch]
        return super().process(batch)

    def snapshot_due(self, closing):
        self.due_calls.append(closing)
        return self.due(closing)

    def snapshot(self, carry):
        self.store.update(carry=carry, seen=list(self.seen), snapshots=self.store.get(
            "snapshots", 0) + 1)

    def restore(self):
        if "carry" not in self.store:
            return None
        self.seen = list(self.store["seen"])
        return self.store["carry"]


def quiet_runner(stage, bus, inputs, **kw) -> StageRunner:
    return StageRunner(stage, bus, inputs, {"frame": "out"},
                       metrics=StageMetrics("t", CollectorRegistry()), **kw)


def test_a_stateful_stage_restore_decides_where_reading_starts(topic_name):
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    produce(bus, topic_name, [frame_rec(i) for i in range(10)])
    store = {"carry": {"positions": [[topic_name, 0, 7]]}, "seen": [0, 1, 2, 3, 4, 5, 6]}
    stage = Remembers(store)
    runner = quiet_runner(stage, bus, [topic_name])
    run_until_idle(runner, idle=0.3)
    assert stage.seen == list(range(10)), "read from 7 on, after the restored state"
    assert runner.restored_positions == {TopicPartition(topic_name, 0): 7}
    # The final snapshot carries the runner's positions, verbatim and JSON-ready.
    assert store["carry"] == {"positions": [[topic_name, 0, 10]]}
    assert positions_from_carry(store["carry"]) == runner.positions


def test_a_stateful_stage_without_a_snapshot_replays_what_the_group_committed(topic_name):
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    other = topic_name + "-b"
    produce(bus, topic_name, [frame_rec(i) for i in range(10)])
    produce(bus, other, [frame_rec(100 + i) for i in range(5)])
    group = "g-" + topic_name
    run_until_idle(quiet_runner(RelayStage(), bus, [topic_name, other], group_id=group), idle=0.3)
    assert sum(bus.committed(group).values()) == 15

    # A stateless stage resumes at the group's commits: nothing left.
    relay = Remembers({})
    relay.stateful = False
    run_until_idle(quiet_runner(relay, bus, [topic_name, other], group_id=group), idle=0.3)
    assert relay.seen == [] and relay.due_calls == []

    # A stateful one restores positions for one topic only: the other starts at offset 0.
    store = {"carry": {"positions": [[topic_name, 0, 8]]}, "seen": []}
    stage = Remembers(store)
    run_until_idle(quiet_runner(stage, bus, [topic_name, other], group_id=group), idle=0.3)
    assert sorted(stage.seen) == [8, 9, 100, 101, 102, 103, 104]


def test_snapshots_follow_the_stage_policy_after_whole_batches(topic_name):
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    produce(bus, topic_name, [frame_rec(i) for i in range(10)])
    store: dict = {}
    stage = Remembers(store, due=lambda closing: False)
    runner = quiet_runner(stage, bus, [topic_name], batch_size=4)
    runner.open()
    assert runner.step() == 4 and "carry" not in store
    stage.due = lambda closing: True
    assert runner.step() == 4
    assert store["carry"] == {"positions": [[topic_name, 0, 8]]} and store["seen"] == list(range(8))
    stage.due = lambda closing: closing
    runner.step()
    runner.close()
    assert stage.due_calls == [False, False, False, True]
    assert store["carry"] == {"positions": [[topic_name, 0, 10]]} and store["snapshots"] == 2


def test_held_commits_fold_batches_and_land_when_idle_or_at_close(topic_name):
    """With a commit interval the outputs still leave at once; the commit of the batches in
    between waits for the interval, an empty poll or the close, and then covers all of them."""
    from vistream.pipeline.bus.memory import MemoryBus

    def run(interval: float) -> tuple[list, list]:
        bus = MemoryBus()
        bus.commit_interval = interval
        produce(bus, topic_name, [frame_rec(i) for i in range(20)])
        runner = StageRunner(RelayStage(), bus, [topic_name], {"frame": "out"}, batch_size=5,
                             metrics=StageMetrics("t", CollectorRegistry()))
        runner.open()
        lags = []
        for _ in range(4):
            assert runner.step() == 5
            lags.append(bus.group_lag(runner.group_id, [topic_name]))
        assert sum(bus.end_offsets("out").values()) == 20, "outputs are not held"
        assert runner.step() == 0  # nothing left: the idle poll commits
        lags.append(bus.group_lag(runner.group_id, [topic_name]))
        produce(bus, topic_name, [frame_rec(20)])
        assert runner.step() == 1
        lags.append(bus.group_lag(runner.group_id, [topic_name]))
        runner.close()
        lags.append(bus.group_lag(runner.group_id, [topic_name]))
        with bus.consumer(["out"], "reader") as c:
            out = [r.value for r in drain(c, 21, timeout=2)]
        return lags, out

    held_lags, held_out = run(3600.0)
    assert held_lags == [20, 20, 20, 20, 0, 1, 0]
    every_lags, every_out = run(0.0)
    assert every_lags == [15, 10, 5, 0, 0, 0, 0]
    assert held_out == every_out and len(held_out) == 21


def test_a_held_commit_is_dropped_without_a_broker_at_close(topic_name):
    """At close, with the broker away, the held batches stay uncommitted (redelivered)."""
    from vistream.pipeline.bus.memory import MemoryBus

    bus = MemoryBus()
    bus.commit_interval = 3600.0
    produce(bus, topic_name, [frame_rec(i) for i in range(5)])
    runner = StageRunner(RelayStage(), bus, [topic_name], {"frame": "out"}, batch_size=5,
                         metrics=StageMetrics("t", CollectorRegistry()))
    runner.open()
    assert runner.step() == 5
    runner.broker_up = False
    runner.close()
    assert bus.group_lag(runner.group_id, [topic_name]) == 5


def test_a_stateful_stage_commits_every_batch_even_with_an_interval(topic_name):
    """Its snapshots carry its positions: they never run ahead of an unacknowledged batch."""
    from vistream.pipeline.bus.memory import MemoryBus

    class Stateful(RelayStage):
        stateful = True

        def restore(self):
            return None

        def snapshot(self, carry):
            pass

    bus = MemoryBus()
    bus.commit_interval = 3600.0
    produce(bus, topic_name, [frame_rec(i) for i in range(10)])
    runner = StageRunner(Stateful(), bus, [topic_name], {"frame": "out"}, batch_size=5,
                         metrics=StageMetrics("t", CollectorRegistry()))
    runner.open()
    assert runner.step() == 5
    assert bus.group_lag(runner.group_id, [topic_name]) == 5
    assert sum(runner.positions.values()) == 5
    runner.close()
