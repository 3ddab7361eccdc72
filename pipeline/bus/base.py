"""The bus interface every backend implements (memory, kafka).

The contract, shared with Kafka's own semantics so that code tested on the embedded bus
behaves the same on a real broker:

* a topic has a fixed number of partitions; records with the same key land on the same
  partition and keep their order there; records without a key are spread round robin;
* consumers join a *group*; each partition of the subscribed topics is owned by exactly one
  member, and partitions move when members join or leave (rebalance);
* a consumer starts a partition at the group's committed offset (or at the earliest / latest
  record when none is committed) and commits explicitly: nothing is committed behind its back,
  so delivery is at least once.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from vistream.pipeline.wire import Headers, Record


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    #: a compacted topic (Kafka ``cleanup.policy=compact``): the latest record per key is kept
    compact: bool = False


#: Called with the partitions a consumer has just been given (on Kafka's eager protocol: all
#: of its partitions after every rebalance); returns where to start reading some of them
#: (the others start at the group's committed offset). The runner uses it for stateful stages,
#: to replay from where their snapshot ends instead of from the last commit.
OnAssign = Callable[[set[TopicPartition]], dict[TopicPartition, int]]
#: Called with the partitions a consumer loses in a rebalance (Kafka: before they go to another
#: member; the memory bus: at the member's next poll). A consumer that keeps state per
#: partition snapshots and drops it here.
OnRevoke = Callable[[set[TopicPartition]], None]


class BusError(RuntimeError):
    """A delivery problem the caller cannot fix by retrying the same call."""


class BusUnavailable(BusError):
    """The broker cannot be reached (or did not answer in time): retrying later can succeed.
    Nothing is lost: records a producer could not deliver stay queued for its next
    :meth:`Producer.flush`, and a commit that failed leaves the last committed position."""


class Producer(abc.ABC):
    @abc.abstractmethod
    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: Headers | None = None) -> None:
        """Queue one record; it is durable once :meth:`flush` returns."""

    @abc.abstractmethod
    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued record is acknowledged, or raise BusError."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer(abc.ABC):
    @abc.abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Return up to ``max_records`` records, waiting at most ``timeout`` seconds."""

    @abc.abstractmethod
    def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        """Commit the next offsets to read; ``None`` commits the current positions."""

    @abc.abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abc.abstractmethod
    def lag(self) -> int:
        """Records in the assigned partitions that this group has not yet consumed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group (its partitions go to the other members). Does not commit."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(abc.ABC):
    """A factory of producers and consumers over one cluster (or one in-process broker)."""

    backend: str = "?"
    #: How long (seconds) a stage runner may hold the flush and commit of a handled batch to
    #: fold them with the next batches'. 0: every batch is flushed and committed before the
    #: next poll. A broker answers each commit with a write to its offsets log, which at a
    #: batch or two per poll costs more than the records themselves; holding commits only
    #: widens what a crash redelivers (stages are idempotent by frame id).
    commit_interval: float = 0.0

    @abc.abstractmethod
    def create_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Create the topics that do not exist yet; existing ones are left alone."""

    @abc.abstractmethod
    def producer(self) -> Producer: ...

    @abc.abstractmethod
    def consumer(self, topics: list[str], group_id: str, auto_offset_reset: str = "earliest",
                 on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> Consumer: ...

    @abc.abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition."""

    @abc.abstractmethod
    def group_lag(self, group_id: str, topics: list[str]) -> int:
        """Records of ``topics`` that ``group_id`` has not committed yet, over all partitions
        (owned by a member or not): zero means the whole group has nothing left to do."""

    def reachable(self) -> bool:
        """Whether the broker answers a connection now (the embedded bus always does)."""
        return True

    def close(self) -> None:
        pass

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def commit_positions(records: list[Record]) -> dict[TopicPartition, int]:
    """The offsets to commit after handling ``records``: one past the last of each partition."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if r.offset + 1 > out.get(tp, -1):
            out[tp] = r.offset + 1
    return out
