"""The Kafka bus, on kafka-python.

Settings chosen for frames:

* producer, broker and consumer agree on a 20 MiB record cap (``MAX_MESSAGE_BYTES``, the same
  constant the broker module writes into ``server.properties``), so any frame the wire format
  accepts (at most 16 MiB) fits;
* the producer keeps kafka-python's safe defaults (``acks=all``, idempotence on) and batches up
  to 1 MiB with a 5 ms linger: JPEG frames are already compressed, so no compression;
* auto commit is off: the stage runner commits after its outputs are flushed (at least once);
* kafka-python consumers are not thread safe: one consumer belongs to one runner thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from vistream.pipeline.bus.base import (
    Bus,
    BusError,
    Consumer,
    OnAssign,
    Producer,
    TopicPartition,
    TopicSpec,
)
from vistream.pipeline.wire import Headers, Record

log = logging.getLogger("vistream.bus.kafka")

MAX_MESSAGE_BYTES = 20 * 1024 * 1024


def _kafka():
    try:
        import kafka
        import kafka.admin
        import kafka.errors
        import kafka.structs
    except ImportError as exc:  # pragma: no cover - kafka-python is a hard dependency
        raise BusError("the kafka backend needs kafka-python: pip install kafka-python") from exc
    return kafka


class KafkaBus(Bus):
    backend = "kafka"

    def __init__(self, bootstrap: str = "127.0.0.1:9092", client_id: str = "vistream",
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self._admin = None
        self._offsets = None
        self._lock = threading.Lock()

    def _admin_client(self):
        if self._admin is None:
            k = _kafka()
            try:
                self._admin = k.admin.KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
            except k.errors.KafkaError as exc:
                raise BusError(
                    f"no Kafka broker answers at {self.bootstrap}; start one with "
                    "`vistream broker start` or point bus.bootstrap at yours") from exc
        return self._admin

    def create_topics(self, topics: Iterable[TopicSpec]) -> None:
        k = _kafka()
        admin = self._admin_client()
        existing = set(admin.list_topics())
        new = [k.admin.NewTopic(t.name, t.partitions, 1) for t in topics if t.name not in existing]
        if not new:
            return
        try:
            admin.create_topics(new)
        except k.errors.TopicAlreadyExistsError:
            pass  # a peer process created it first
        # Metadata propagates asynchronously; wait until every new topic is visible.
        deadline = time.monotonic() + 15
        names = {t.name for t in new}
        while time.monotonic() < deadline:
            if names <= set(admin.list_topics()):
                return
            time.sleep(0.1)
        raise BusError(f"topics {sorted(names)} were not visible after creation")

    def _offsets_client(self):
        if self._offsets is None:  # one group-less client, reused: connecting is slow
            self._offsets = _kafka().KafkaConsumer(bootstrap_servers=self.bootstrap,
                                                   client_id=f"{self.client_id}-offsets")
        return self._offsets

    def _partitions(self, topic: str) -> list:
        parts = self._offsets_client().partitions_for_topic(topic) or set()
        return [_kafka().TopicPartition(topic, p) for p in sorted(parts)]

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self._lock:
            tps = self._partitions(topic)
            ends = self._offsets_client().end_offsets(tps) if tps else {}
            return {tp.partition: off for tp, off in ends.items()}

    def group_lag(self, group_id: str, topics: list[str]) -> int:
        with self._lock:
            tps = [tp for t in topics for tp in self._partitions(t)]
            if not tps:
                return 0
            c = self._offsets_client()
            ends = c.end_offsets(tps)
            starts = c.beginning_offsets(tps)
            admin = self._admin_client()
            if hasattr(admin, "list_group_offsets"):  # kafka-python 3.x
                committed = admin.list_group_offsets({group_id: tps}).get(group_id, {})
            else:  # kafka-python 2.x
                committed = admin.list_consumer_group_offsets(group_id, partitions=tps)
            lag = 0
            for tp in tps:
                done = committed.get(tp)
                pos = done.offset if done is not None and done.offset >= 0 else starts[tp]
                lag += max(ends[tp] - max(pos, starts[tp]), 0)
            return lag

    def producer(self) -> Producer:
        return KafkaProducerAdapter(self)

    def consumer(self, topics: list[str], group_id: str, auto_offset_reset: str = "earliest",
                 on_assign: OnAssign | None = None) -> Consumer:
        return KafkaConsumerAdapter(self, topics, group_id, auto_offset_reset, on_assign)

    def close(self) -> None:
        if self._offsets is not None:
            self._offsets.close()
            self._offsets = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None


class KafkaProducerAdapter(Producer):
    def __init__(self, bus: KafkaBus) -> None:
        k = _kafka()
        try:
            self._p = k.KafkaProducer(
                bootstrap_servers=bus.bootstrap,
                client_id=f"{bus.client_id}-producer",
                max_request_size=bus.max_message_bytes,
                batch_size=1024 * 1024,
                linger_ms=5,
            )
        except k.errors.KafkaError as exc:
            raise BusError(f"no Kafka broker answers at {bus.bootstrap}: {exc}") from exc
        self._pending: list = []

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        fut = self._p.send(topic, value=value, key=key, headers=list(headers or []))
        self._pending.append(fut)

    def flush(self, timeout: float | None = None) -> None:
        self._p.flush(timeout=timeout)
        pending, self._pending = self._pending, []
        failed = [f for f in pending if f.failed()]
        if failed:
            raise BusError(f"{len(failed)} record(s) were not delivered: {failed[0].exception}")

    def close(self) -> None:
        self._p.close()


def _seek_on_assign(consumer, on_assign: OnAssign):
    """A kafka-python rebalance listener that moves newly assigned partitions where asked."""
    k = _kafka()

    class SeekOnAssign(k.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            pass

        def on_partitions_assigned(self, assigned) -> None:
            if not assigned:  # kafka-python also reports empty assignments
                return
            chosen = on_assign({TopicPartition(tp.topic, tp.partition) for tp in assigned})
            for tp, offset in chosen.items():
                consumer.seek(k.TopicPartition(tp.topic, tp.partition), offset)

    return SeekOnAssign()


class KafkaConsumerAdapter(Consumer):
    def __init__(self, bus: KafkaBus, topics: list[str], group_id: str,
                 auto_offset_reset: str, on_assign: OnAssign | None = None) -> None:
        k = _kafka()
        self._k = k
        try:
            self._c = k.KafkaConsumer(
                bootstrap_servers=bus.bootstrap,
                client_id=f"{bus.client_id}-{group_id}",
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset=auto_offset_reset,
                max_partition_fetch_bytes=bus.max_message_bytes,
                fetch_max_bytes=2 * bus.max_message_bytes,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=1_000,
                max_poll_interval_ms=300_000,
            )
        except k.errors.KafkaError as exc:
            raise BusError(f"no Kafka broker answers at {bus.bootstrap}: {exc}") from exc
        self._c.subscribe(topics, listener=_seek_on_assign(self._c, on_assign) if on_assign else None)

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        batches = self._c.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        out: list[Record] = []
        for recs in batches.values():
            for r in recs:
                out.append(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                  tuple(r.headers or ()), r.timestamp))
        return out

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        k = self._k
        try:
            if offsets is None:
                self._c.commit()
            elif offsets:
                self._c.commit({k.TopicPartition(tp.topic, tp.partition):
                                k.structs.OffsetAndMetadata(off, "", -1)
                                for tp, off in offsets.items()})
        except k.errors.CommitFailedError as exc:
            # The group rebalanced under us; the new owner re-reads from the last commit.
            log.warning("commit failed after a rebalance (records will be redelivered): %s", exc)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._c.assignment()}

    def lag(self) -> int:
        tps = list(self._c.assignment())
        if not tps:
            return 0
        ends = self._c.end_offsets(tps)
        return sum(max(ends[tp] - self._c.position(tp), 0) for tp in tps)

    def close(self) -> None:
        self._c.close(autocommit=False)
