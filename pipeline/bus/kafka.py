"""The Kafka bus, on kafka-python.

Settings chosen for frames:

* producer, broker and consumer agree on a 20 MiB record cap (``MAX_MESSAGE_BYTES``, the same
  constant the broker module writes into ``server.properties``), so any frame the wire format
  accepts (at most 16 MiB) fits;
* the producer keeps kafka-python's safe defaults (``acks=all``, idempotence on; both settable
  through ``bus.acks`` / ``bus.idempotence``) and batches up to 1 MiB with a 5 ms linger: JPEG
  frames are already compressed, so no compression;
* topics are created with as many replicas as the cluster has brokers (at most three) and
  ``min.insync.replicas`` 2 once there are three (``bus.replication_factor`` /
  ``bus.min_insync_replicas`` override): on a three-node cluster an acks=all write survives the
  death of any one broker;
* auto commit is off: the stage runner commits after its outputs are flushed (at least once);
* kafka-python consumers are not thread safe: one consumer belongs to one runner thread.

Broker outages (see docs/reliability.md): every client reconnects with a backoff capped at
1 s (kafka-python's default cap is 30 s, which delayed the first batch after a broker's return
by up to half a minute), heartbeats every second and times a session out after 10 s, so a
consumer whose broker comes back re-joins its group within seconds. A producer never loses a
record to an outage: :meth:`KafkaProducerAdapter.flush` re-sends whatever expired or could not
be sent and raises :class:`BusUnavailable` while the broker stays away; polls, commits and lag
queries raise :class:`BusUnavailable` too (never kafka-python's own errors), and the stage runner
retries them with a backoff. kafka-python's own log lines about refused connections (several a
second during an outage) are dropped unless the ``kafka`` logger is set to DEBUG: the runner
logs one line when the broker goes away and one when it is back.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vistream.pipeline.bus.base import (
    Bus,
    BusError,
    BusUnavailable,
    Consumer,
    OnAssign,
    OnRevoke,
    Producer,
    TopicPartition,
    TopicSpec,
)
from vistream.pipeline.wire import Headers, Record

log = logging.getLogger("vistream.bus.kafka")

MAX_MESSAGE_BYTES = 20 * 1024 * 1024

#: Reconnection settings shared by every client: try again soon after a broker returns.
RECONNECT = {"reconnect_backoff_ms": 100, "reconnect_backoff_max_ms": 1000,
             "retry_backoff_ms": 200}
#: How long one commit or offsets query may wait for the broker before it counts as down.
REQUEST_WAIT_MS = 5_000
#: The lag gauge's query waits less: it is informative, and right after a partition leader
#: died it would hold the stage's next batch for the whole wait (docs/reliability.md, item 6).
LAG_WAIT_MS = 2_000
#: Replicas per topic at most when the replication factor is left to the cluster's size.
MAX_AUTO_REPLICAS = 3
#: A stage runner folds the commits of the batches it handles within this many seconds.
COMMIT_INTERVAL = 0.5


def min_isr_for(replicas: int) -> int:
    """``min.insync.replicas`` for a replication factor: 2 of 3 (one broker may die and
    acks=all writes still succeed), 1 below three replicas."""
    return 2 if replicas >= 3 else 1


class _QuietKafka(logging.Filter):
    """Drops kafka-python's records unless the ``kafka`` logger asks for DEBUG: during an
    outage it logs every refused connection; the runner reports the outage itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger("kafka").isEnabledFor(logging.DEBUG)


_QUIET = _QuietKafka()


def _kafka():
    try:
        import kafka
        import kafka.admin
        import kafka.errors
        import kafka.structs
    except ImportError as exc:  # pragma: no cover - kafka-python is a hard dependency
        raise BusError("the kafka backend needs kafka-python: pip install kafka-python") from exc
    for name in list(logging.Logger.manager.loggerDict):
        if name == "kafka" or name.startswith("kafka."):
            lg = logging.getLogger(name)
            if _QUIET not in lg.filters:
                lg.addFilter(_QUIET)
    return kafka


def _unavailable(exc: BaseException) -> bool:
    """Whether a kafka-python error means "the broker is away, try again later"."""
    errors = _kafka().errors
    away = tuple(getattr(errors, n) for n in ("KafkaTimeoutError", "KafkaConnectionError",
                                               "NoBrokersAvailable") if hasattr(errors, n))
    return isinstance(exc, away) or bool(getattr(exc, "retriable", False))


def _reachable(bootstrap: str, timeout: float = 0.5) -> bool:
    """A TCP connection to any of the bootstrap servers succeeds."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                          timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


class KafkaBus(Bus):
    backend = "kafka"

    def __init__(self, bootstrap: str = "127.0.0.1:9092", client_id: str = "vistream",
                 max_message_bytes: int = MAX_MESSAGE_BYTES, replication_factor: int | None = None,
                 min_insync_replicas: int | None = None, acks: str | int = "all",
                 idempotence: bool = True, session_timeout_ms: int = 10_000,
                 commit_interval: float = COMMIT_INTERVAL) -> None:
        """``replication_factor`` None: as many replicas as brokers, at most three;
        ``min_insync_replicas`` None: :func:`min_isr_for` the replication factor. ``acks`` and
        ``idempotence`` go to every producer (the defaults lose nothing to a broker's death).
        ``commit_interval``: see :attr:`Bus.commit_interval`."""
        self.bootstrap = bootstrap
        self.commit_interval = commit_interval
        self.client_id = client_id
        self.max_message_bytes = max_message_bytes
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        self.acks = acks
        self.idempotence = idempotence
        #: how long the group waits for a silent consumer before handing its partitions on
        self.session_timeout_ms = int(session_timeout_ms)
        self._admin = None
        self._offsets = None
        self._lock = threading.Lock()

    def _admin_client(self):
        if self._admin is None:
            k = _kafka()
            try:
                self._admin = k.admin.KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin",
                    **RECONNECT)
            except k.errors.KafkaError as exc:
                raise BusError(
                    f"no Kafka broker answers at {self.bootstrap}; start one with "
                    "`vistream broker start` or point bus.bootstrap at yours") from exc
        return self._admin

    def create_topics(self, topics: Iterable[TopicSpec]) -> None:
        k = _kafka()
        admin = self._admin_client()
        existing = set(admin.list_topics())
        todo = [t for t in topics if t.name not in existing]
        if not todo:
            return
        rf, isr = self.replication(admin)
        new = [k.admin.NewTopic(t.name, t.partitions, rf,
                                topic_configs={"min.insync.replicas": str(isr),
                                               **({"cleanup.policy": "compact"}
                                                  if t.compact else {})}) for t in todo]
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

    def replication(self, admin=None) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) for the topics this bus creates."""
        rf = self.replication_factor
        if rf is None:
            try:
                brokers = len((admin or self._admin_client()).describe_cluster()["brokers"])
            except (_kafka().errors.KafkaError, KeyError, TypeError):
                brokers = 1
            rf = max(1, min(brokers, MAX_AUTO_REPLICAS))
        isr = self.min_insync_replicas or min_isr_for(rf)
        return rf, min(isr, rf)

    def partition_leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the node id leading it (-1: no leader now)."""
        def get(d: dict, *keys: str) -> Any:  # kafka-python 3.x names first, then 2.x
            return next(d[k] for k in keys if k in d)

        admin = self._admin_client()
        return {(get(t, "name", "topic"), get(p, "partition_index", "partition")):
                get(p, "leader_id", "leader")
                for t in admin.describe_topics(topics) for p in t["partitions"]}

    def controller_id(self) -> int | None:
        """The node id of the active KRaft controller, as the cluster reports it."""
        return self._admin_client().describe_cluster().get("controller_id")

    def _offsets_client(self):
        if self._offsets is None:  # one group-less client, reused: connecting is slow
            self._offsets = _kafka().KafkaConsumer(bootstrap_servers=self.bootstrap,
                                                   client_id=f"{self.client_id}-offsets",
                                                   **RECONNECT)
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

    def reachable(self) -> bool:
        return _reachable(self.bootstrap)

    def producer(self) -> Producer:
        return KafkaProducerAdapter(self)

    def consumer(self, topics: list[str], group_id: str, auto_offset_reset: str = "earliest",
                 on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> Consumer:
        return KafkaConsumerAdapter(self, topics, group_id, auto_offset_reset, on_assign,
                                    on_revoke)

    def close(self) -> None:
        if self._offsets is not None:
            self._offsets.close()
            self._offsets = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None


@dataclass
class _Queued:
    """One record handed to :meth:`KafkaProducerAdapter.send`, kept until acknowledged."""
    args: tuple[str, bytes, bytes | None, list]
    future: Any = None  # kafka-python's FutureRecordMetadata, None while not yet sent


class KafkaProducerAdapter(Producer):
    """A producer that keeps every record until the broker acknowledges it.

    ``send`` never blocks for long on a missing broker (1 s to find a topic's leader); a record
    it could not hand to kafka-python, or one kafka-python gave up on (its delivery timeout
    expired during an outage), is sent again by the next :meth:`flush`. ``flush(timeout)``
    returns once everything queued is acknowledged, raises :class:`BusUnavailable` when the
    timeout passes first (call it again later: nothing is dropped) and :class:`BusError` for a
    record the broker refuses for good (too large, for instance).
    """

    #: how long ``flush()`` without a timeout waits for an absent broker before giving up
    DEFAULT_FLUSH_TIMEOUT = 120.0

    def __init__(self, bus: KafkaBus) -> None:
        k = _kafka()
        self._k = k
        self.bootstrap = bus.bootstrap
        try:
            self._p = k.KafkaProducer(
                bootstrap_servers=bus.bootstrap,
                client_id=f"{bus.client_id}-producer",
                max_request_size=bus.max_message_bytes,
                batch_size=1024 * 1024,
                linger_ms=5,
                metrics_enabled=False,  # kafka-python's own sensors: never read
                max_block_ms=1_000,
                acks=bus.acks,
                enable_idempotence=bus.idempotence,
                **RECONNECT,
            )
        except k.errors.KafkaError as exc:
            raise BusError(f"no Kafka broker answers at {bus.bootstrap}: {exc}") from exc
        self._queued: list[_Queued] = []

    def _try_send(self, item: _Queued) -> bool:
        topic, value, key, headers = item.args
        try:
            item.future = self._p.send(topic, value=value, key=key, headers=headers)
            return True
        except self._k.errors.KafkaError as exc:
            if not _unavailable(exc):
                raise BusError(f"record for {topic!r} refused: {exc}") from exc
            item.future = None
            return False

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        item = _Queued((topic, value, key, list(headers or [])))
        # Once one send found no broker, queue the rest without waiting; flush sends them.
        if not self._queued or self._queued[-1].future is not None:
            self._try_send(item)
        self._queued.append(item)

    def _resend(self) -> None:
        """Hand kafka-python what it does not hold: never sent, or failed but retriable."""
        for item in self._queued:
            fut = item.future
            if fut is not None and not (fut.is_done and fut.failed()):
                continue
            if fut is not None and not _unavailable(fut.exception):
                raise BusError(f"record for {item.args[0]!r} was not delivered: {fut.exception}")
            if not self._try_send(item):
                return  # no broker: leave the rest queued

    def pending(self) -> int:
        """Records queued and not yet acknowledged."""
        return len(self._queued)

    def flush(self, timeout: float | None = None) -> None:
        wait = self.DEFAULT_FLUSH_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            self._resend()
            try:
                self._p.flush(timeout=max(min(deadline - time.monotonic(), 5.0), 0.05))
            except self._k.errors.KafkaTimeoutError:
                pass
            self._queued = [q for q in self._queued
                            if q.future is None or not q.future.is_done or q.future.failed()]
            if not self._queued:
                return
            if time.monotonic() >= deadline:
                raise BusUnavailable(
                    f"{len(self._queued)} record(s) not yet acknowledged by {self.bootstrap} "
                    f"after {wait:.0f} s; they stay queued")
            time.sleep(0.05)

    def close(self) -> None:
        self._p.close(timeout=5)


def _seek_on_assign(consumer, on_assign: OnAssign | None, on_revoke: OnRevoke | None = None):
    """A kafka-python rebalance listener that moves newly assigned partitions where asked (and
    tells ``on_revoke`` which partitions are going away, before the group hands them on)."""
    k = _kafka()

    class SeekOnAssign(k.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            if on_revoke is not None and revoked:
                on_revoke({TopicPartition(tp.topic, tp.partition) for tp in revoked})

        def on_partitions_assigned(self, assigned) -> None:
            if not assigned or on_assign is None:  # kafka-python also reports empty ones
                return
            chosen = on_assign({TopicPartition(tp.topic, tp.partition) for tp in assigned})
            for tp, offset in chosen.items():
                consumer.seek(k.TopicPartition(tp.topic, tp.partition), offset)

    return SeekOnAssign()


class KafkaConsumerAdapter(Consumer):
    def __init__(self, bus: KafkaBus, topics: list[str], group_id: str,
                 auto_offset_reset: str, on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> None:
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
                metrics_enabled=False,  # kafka-python's own sensors: never read, ~5% of a poll
                session_timeout_ms=bus.session_timeout_ms,
                heartbeat_interval_ms=1_000,
                max_poll_interval_ms=300_000,
                **RECONNECT,
            )
        except k.errors.KafkaError as exc:
            raise BusError(f"no Kafka broker answers at {bus.bootstrap}: {exc}") from exc
        listener = (_seek_on_assign(self._c, on_assign, on_revoke)
                    if on_assign or on_revoke else None)
        self._c.subscribe(topics, listener=listener)

    def _unavailable(self, what: str, exc: Exception) -> BusUnavailable | BusError:
        if _unavailable(exc):
            return BusUnavailable(f"{what}: the broker does not answer ({type(exc).__name__}: {exc})")
        return BusError(f"{what} failed: {type(exc).__name__}: {exc}")

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        try:
            # at least 1 ms: kafka-python 3 returns from poll(0) before any network I/O, so a
            # consumer polled only with timeout 0 never joins its group
            batches = self._c.poll(timeout_ms=max(int(timeout * 1000), 1),
                                   max_records=max_records)
        except self._k.errors.KafkaError as exc:
            raise self._unavailable("poll", exc) from exc
        out: list[Record] = []
        for recs in batches.values():
            for r in recs:
                out.append(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                  tuple(r.headers or ()), r.timestamp))
        return out

    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit, or raise :class:`BusUnavailable` when the broker does not answer within
        5 s. A commit refused because the group moved on (rebalanced, or this member timed
        out during an outage) is not an error: the partitions' next owner re-reads from the
        last commit."""
        k = self._k
        try:
            if offsets is None:
                self._c.commit(timeout_ms=REQUEST_WAIT_MS)
            elif offsets:
                self._c.commit({k.TopicPartition(tp.topic, tp.partition):
                                k.structs.OffsetAndMetadata(off, "", -1)
                                for tp, off in offsets.items()}, timeout_ms=REQUEST_WAIT_MS)
        except (k.errors.CommitFailedError, k.errors.IllegalGenerationError,
                k.errors.UnknownMemberIdError, k.errors.RebalanceInProgressError) as exc:
            log.warning("commit refused: the group moved on (records will be redelivered): %s",
                        type(exc).__name__)
        except k.errors.KafkaError as exc:
            raise self._unavailable("commit", exc) from exc

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._c.assignment()}

    def lag(self) -> int:
        tps = list(self._c.assignment())
        if not tps:
            return 0
        try:
            ends = self._c.end_offsets(tps, timeout_ms=LAG_WAIT_MS)
            return sum(max(ends[tp] - self._c.position(tp, timeout_ms=LAG_WAIT_MS), 0)
                       for tp in tps)
        except self._k.errors.KafkaError as exc:
            raise self._unavailable("lag", exc) from exc

    def close(self) -> None:
        self._c.close(autocommit=False, timeout_ms=REQUEST_WAIT_MS)
