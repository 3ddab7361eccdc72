"""One contract, two backends: what every bus must do (memory and real Kafka)."""

from __future__ import annotations

import threading
import time

from vistream.pipeline.bus import TopicPartition, TopicSpec


def drain(consumer, expected: int, timeout: float = 30.0, max_records: int = 100) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += consumer.poll(max_records, 0.5)
    return out


def test_round_trip_keeps_key_value_headers(make_bus, topic_name):
    bus = make_bus()
    bus.create_topics([TopicSpec(topic_name, 1)])
    big = bytes(range(256)) * 8192  # 2 MiB: above kafka-python's 1 MiB default caps
    with bus.producer() as p:
        p.send(topic_name, big, key=b"k1", headers=[("a", b"1"), ("b", b"")])
        p.send(topic_name, b"small", key=None)
        p.flush()
    with bus.consumer([topic_name], "g-roundtrip") as c:
        recs = drain(c, 2)
    assert len(recs) == 2
    first = next(r for r in recs if r.key == b"k1")
    assert first.value == big
    assert list(first.headers) == [("a", b"1"), ("b", b"")]
    assert [r.offset for r in recs if r.partition == first.partition] == sorted(
        r.offset for r in recs if r.partition == first.partition)


def test_order_is_kept_per_key(make_bus, topic_name):
    bus = make_bus()
    bus.create_topics([TopicSpec(topic_name, 3)])
    keys = [b"alpha", b"beta", b"gamma", b"delta"]
    with bus.producer() as p:
        for i in range(200):
            k = keys[i % len(keys)]
            p.send(topic_name, str(i).encode(), key=k)
        p.flush()
    with bus.consumer([topic_name], "g-order") as c:
        recs = drain(c, 200)
    assert len(recs) == 200
    by_key: dict[bytes, list[int]] = {}
    parts: dict[bytes, set[int]] = {}
    for r in recs:
        by_key.setdefault(r.key, []).append(int(r.value))
        parts.setdefault(r.key, set()).add(r.partition)
    for k in keys:
        assert by_key[k] == sorted(by_key[k]), f"key {k!r} out of order"
        assert len(parts[k]) == 1, "one key must stay on one partition"
    assert bus.end_offsets(topic_name).keys() == {0, 1, 2}


def test_commit_and_resume(make_bus, topic_name):
    bus = make_bus()
    bus.create_topics([TopicSpec(topic_name, 1)])
    with bus.producer() as p:
        for i in range(30):
            p.send(topic_name, str(i).encode(), key=b"k")
        p.flush()
    with bus.consumer([topic_name], "g-resume") as c:
        got = drain(c, 10, max_records=10)[:10]
        assert [int(r.value) for r in got] == list(range(10))
        c.commit({TopicPartition(topic_name, 0): 10})
        drain(c, 5, max_records=5)  # read further, but never commit it
    with bus.consumer([topic_name], "g-resume") as c:
        rest = drain(c, 20)
    # Resumes at the commit: the uncommitted reads are redelivered, nothing is skipped.
    assert [int(r.value) for r in rest] == list(range(10, 30))
    with bus.consumer([topic_name], "g-other") as c:
        assert len(drain(c, 30)) == 30, "another group starts from the beginning"


def _poll_until(consumers, stop, sink, lock):
    def loop(c):
        while not stop.is_set():
            for r in c.poll(50, 0.2):
                with lock:
                    sink.append((id(c), r))
    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in consumers]
    for t in threads:
        t.start()
    return threads


def test_rebalance_across_two_consumers(make_bus, topic_name):
    bus = make_bus(partitions=4)
    bus.create_topics([TopicSpec(topic_name, 4)])
    everything = {TopicPartition(topic_name, p) for p in range(4)}
    c1 = bus.consumer([topic_name], "g-rebalance")
    c2 = bus.consumer([topic_name], "g-rebalance")
    seen: list = []
    lock = threading.Lock()
    stop = threading.Event()
    threads = _poll_until([c1, c2], stop, seen, lock)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a1, a2 = c1.assignment(), c2.assignment()
            if a1 and a2 and not (a1 & a2) and (a1 | a2) == everything:
                break
            time.sleep(0.1)
        assert c1.assignment() and c2.assignment(), "both members must own partitions"
        assert not (c1.assignment() & c2.assignment())
        assert c1.assignment() | c2.assignment() == everything

        with bus.producer() as p:
            for i in range(100):
                p.send(topic_name, str(i).encode(), key=f"key-{i}".encode())
            p.flush()
        deadline = time.monotonic() + 30
        while len(seen) < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        values = sorted(int(r.value) for _, r in seen)
        assert values == list(range(100)), "each record goes to exactly one member"
        assert len({who for who, _ in seen}) == 2, "both members received records"
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    # c1 and c2 never committed: when c2 leaves, c1 takes over all partitions.
    c2.close()
    deadline = time.monotonic() + 30
    while c1.assignment() != everything and time.monotonic() < deadline:
        c1.poll(10, 0.2)
    assert c1.assignment() == everything
    c1.close()


def test_on_assign_chooses_where_new_partitions_start(make_bus, topic_name):
    bus = make_bus()
    bus.create_topics([TopicSpec(topic_name, 1)])
    with bus.producer() as p:
        for i in range(20):
            p.send(topic_name, str(i).encode(), key=b"k")
        p.flush()
    seen: list[set] = []

    def on_assign(partitions):
        seen.append(partitions)
        return {tp: 15 for tp in partitions}

    with bus.consumer([topic_name], "g-seek", on_assign=on_assign) as c:
        got = drain(c, 5)
    assert [int(r.value) for r in got] == [15, 16, 17, 18, 19]
    assert seen == [{TopicPartition(topic_name, 0)}]
