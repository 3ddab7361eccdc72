"""The embedded bus: in-process topics, partitions, consumer groups and committed offsets.

It follows the Kafka contract of :mod:`pipeline.bus.base` so a pipeline moves to a real broker
without changing behaviour. Choices where Kafka's exact mechanics do not matter here:

* keys are partitioned with CRC-32 (Kafka uses murmur2): same key, same partition, but the
  partition numbers differ from a real broker's;
* partitions are assigned per topic in contiguous ranges over the members sorted by join
  order (Kafka's range assignor); every join or leave rebalances the group at once, and a
  member only sees it at its next ``poll`` (like a Kafka consumer);
* a commit for a partition the member no longer owns is dropped (Kafka raises
  CommitFailedError); its records are redelivered to the new owner, so delivery stays at
  least once;
* retention is by bytes per partition (oldest records dropped first), so a long-running
  in-process pipeline does not grow without bound; a consumer that fell behind the retained
  range resumes at the oldest retained record, as Kafka's ``auto.offset.reset=earliest`` does.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from vistream.pipeline.bus.base import (
    Bus,
    BusError,
    Consumer,
    OnAssign,
    OnRevoke,
    Producer,
    TopicPartition,
    TopicSpec,
)
from vistream.pipeline.wire import Headers, Record
from vistream.stages.records import now_ms

log = logging.getLogger("vistream.bus.memory")

DEFAULT_RETENTION_BYTES = 512 * 1024 * 1024


@dataclass
class _Partition:
    records: collections.deque[Record] = field(default_factory=collections.deque)
    base_offset: int = 0  # offset of records[0]
    size_bytes: int = 0

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.records)


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    generation: int = 0
    assignment: dict[int, set[TopicPartition]] = field(default_factory=dict)


class MemoryBus(Bus):
    backend = "memory"

    def __init__(self, default_partitions: int = 1,
                 retention_bytes: int = DEFAULT_RETENTION_BYTES) -> None:
        self.default_partitions = default_partitions
        self.retention_bytes = retention_bytes
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._cond = threading.Condition()
        self._round_robin = itertools.count()
        self._member_ids = itertools.count()

    # -- topics -----------------------------------------------------------------------
    def create_topics(self, topics: Iterable[TopicSpec]) -> None:
        with self._cond:
            changed = False
            for spec in topics:
                if spec.name not in self._topics:
                    self._topics[spec.name] = [_Partition() for _ in range(spec.partitions)]
                    changed = True
            if changed:
                self._rebalance_all()

    def _ensure_topic(self, topic: str) -> list[_Partition]:
        parts = self._topics.get(topic)
        if parts is None:  # auto-create, as a broker with auto.create.topics.enable does
            parts = self._topics[topic] = [_Partition() for _ in range(self.default_partitions)]
            self._rebalance_all()
        return parts

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._cond:
            return {i: p.end_offset for i, p in enumerate(self._topics.get(topic, []))}

    def topics(self) -> list[str]:
        with self._cond:
            return sorted(self._topics)

    # -- producing ----------------------------------------------------------------------
    def _append(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None) -> None:
        with self._cond:
            parts = self._ensure_topic(topic)
            if key is None:
                pid = next(self._round_robin) % len(parts)
            else:
                pid = zlib.crc32(key) % len(parts)
            part = parts[pid]
            rec = Record(topic, pid, part.end_offset, key, value, tuple(headers or ()), now_ms())
            part.records.append(rec)
            part.size_bytes += len(value or b"")
            while part.size_bytes > self.retention_bytes and len(part.records) > 1:
                old = part.records.popleft()
                part.base_offset += 1
                part.size_bytes -= len(old.value or b"")
            self._cond.notify_all()

    def producer(self) -> Producer:
        return MemoryProducer(self)

    # -- groups ---------------------------------------------------------------------------
    def consumer(self, topics: list[str], group_id: str, auto_offset_reset: str = "earliest",
                 on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> Consumer:
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError("auto_offset_reset must be 'earliest' or 'latest'")
        with self._cond:
            for t in topics:
                self._ensure_topic(t)
            c = MemoryConsumer(self, next(self._member_ids), list(topics), group_id,
                               auto_offset_reset, on_assign, on_revoke)
            group = self._groups.setdefault(group_id, _Group())
            group.members.append(c)
            self._rebalance(group)
            return c

    def _rebalance_all(self) -> None:
        for g in self._groups.values():
            self._rebalance(g)

    def _rebalance(self, group: _Group) -> None:
        assignment: dict[int, set[TopicPartition]] = {m.member_id: set() for m in group.members}
        all_topics = sorted({t for m in group.members for t in m.topics})
        for topic in all_topics:
            members = [m for m in group.members if topic in m.topics]
            n_parts = len(self._topics.get(topic, []))
            for i, m in enumerate(members):
                lo = i * n_parts // len(members)
                hi = (i + 1) * n_parts // len(members)
                assignment[m.member_id].update(TopicPartition(topic, p) for p in range(lo, hi))
        group.assignment = assignment
        group.generation += 1
        self._cond.notify_all()

    def _leave(self, consumer: MemoryConsumer) -> None:
        with self._cond:
            group = self._groups.get(consumer.group_id)
            if group and consumer in group.members:
                group.members.remove(consumer)
                self._rebalance(group)

    def group_lag(self, group_id: str, topics: list[str]) -> int:
        with self._cond:
            g = self._groups.get(group_id)
            committed = g.committed if g else {}
            lag = 0
            for t in topics:
                for i, part in enumerate(self._topics.get(t, [])):
                    start = max(committed.get(TopicPartition(t, i), 0), part.base_offset)
                    lag += part.end_offset - start
            return lag

    def committed(self, group_id: str) -> dict[TopicPartition, int]:
        with self._cond:
            g = self._groups.get(group_id)
            return dict(g.committed) if g else {}


class MemoryProducer(Producer):
    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self._closed = False

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        if self._closed:
            raise BusError("producer is closed")
        # Appending is synchronous, so a sent record is already "acknowledged".
        self._bus._append(topic, value, key, headers)

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        self._closed = True


class MemoryConsumer(Consumer):
    def __init__(self, bus: MemoryBus, member_id: int, topics: list[str], group_id: str,
                 auto_offset_reset: str, on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> None:
        self._bus = bus
        self.member_id = member_id
        self.topics = topics
        self.group_id = group_id
        self._reset = auto_offset_reset
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._generation = -1
        self._positions: dict[TopicPartition, int] = {}
        self._rr = 0
        self._closed = False

    def _group(self) -> _Group:
        return self._bus._groups[self.group_id]

    def _sync_assignment(self) -> None:
        """Pick up a rebalance: drop lost partitions, start new ones at the committed offset."""
        group = self._group()
        if group.generation == self._generation:
            return
        owned = group.assignment.get(self.member_id, set())
        lost = set(self._positions) - owned
        new = owned - set(self._positions)
        chosen = self._on_assign(set(new)) if (self._on_assign and new) else {}
        positions = {}
        for tp in owned:
            if tp in new and tp in chosen:
                positions[tp] = chosen[tp]
                continue
            if tp in self._positions:
                positions[tp] = self._positions[tp]
                continue
            part = self._bus._topics[tp.topic][tp.partition]
            if tp in group.committed:
                positions[tp] = group.committed[tp]
            else:
                positions[tp] = part.base_offset if self._reset == "earliest" else part.end_offset
        self._positions = positions
        self._generation = group.generation
        if lost and self._on_revoke:
            self._on_revoke(lost)

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        tps = sorted(self._positions)
        if not tps:
            return out
        # Start at a rotating partition so one busy partition cannot starve the others.
        self._rr = (self._rr + 1) % len(tps)
        for tp in tps[self._rr:] + tps[: self._rr]:
            part = self._bus._topics[tp.topic][tp.partition]
            pos = max(self._positions[tp], part.base_offset)
            while pos < part.end_offset and len(out) < max_records:
                out.append(part.records[pos - part.base_offset])
                pos += 1
            self._positions[tp] = pos
            if len(out) >= max_records:
                break
        return out

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        if self._closed:
            raise BusError("consumer is closed")
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._bus._cond:
            while True:
                self._sync_assignment()
                out = self._take(max_records)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._bus._cond.wait(remaining)

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        with self._bus._cond:
            self._sync_assignment()
            group = self._group()
            owned = group.assignment.get(self.member_id, set())
            for tp, off in (offsets if offsets is not None else self._positions).items():
                if tp in owned:
                    group.committed[tp] = off
                else:
                    log.warning("commit for %s dropped: partition moved to another member", tp)

    def assignment(self) -> set[TopicPartition]:
        with self._bus._cond:
            self._sync_assignment()
            return set(self._positions)

    def lag(self) -> int:
        with self._bus._cond:
            self._sync_assignment()
            return sum(
                self._bus._topics[tp.topic][tp.partition].end_offset - pos
                for tp, pos in self._positions.items()
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._leave(self)
