"""The stage runner: the one place that owns delivery.

One batch is: poll → decode (invalid records are dead-lettered) → ``stage.process`` →
produce the outputs and dead letters → flush → commit. Offsets are committed only after
everything the batch produced is acknowledged, so a crash anywhere redelivers the batch:
at least once. Stages are idempotent by frame id, which turns that into exactly-once results.

When ``process`` raises for a batch, the runner replays the batch one message at a time so one
poisoned frame cannot take its neighbours down; only the messages that fail alone go to
``<input topic>.dlq``, with the reason in the ``dlq_reason`` header and the original key,
value and headers kept.

Positions belong to the runner, not to the stage. It keeps, per input partition, one past the
last offset of each batch it handled. For a stage with ``stateful = True`` those positions ride
in the stage's snapshots as the opaque carry ``{"positions": [[topic, partition, offset], ...]}``
(Bytewax-style resume state): at start-up the runner asks the stage to ``restore()`` and seeks
each newly assigned partition to the restored position, or to offset 0 where it has none,
because such a stage's state is not in the group's committed offsets. After each batch, and
once on shutdown, it snapshots the stage when ``snapshot_due`` says so. A stateless stage
resumes at the group's committed offsets.

Shutdown (SIGTERM/SIGINT set the stop event): the current batch finishes, is committed, then
the consumer leaves its group, a stateful stage gets its last snapshot and the stage is closed.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vistream.pipeline.bus import Bus, TopicPartition, commit_positions
from vistream.pipeline.metrics import StageMetrics
from vistream.pipeline.wire import Record, decode_message, encode_message
from vistream.stages.base import Stage
from vistream.stages.records import MAX_FRAME_BYTES, InvalidRecord, Message

log = logging.getLogger("vistream.runner")

DLQ_SUFFIX = ".dlq"


@dataclass
class RunnerStats:
    batches: int = 0
    records_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    errors: int = 0


class StageRunner:
    def __init__(
        self,
        stage: Stage,
        bus: Bus,
        inputs: list[str],
        routes: dict[str, str] | None = None,
        group_id: str | None = None,
        batch_size: int = 16,
        poll_timeout: float = 0.5,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        metrics: StageMetrics | None = None,
        name: str | None = None,
    ) -> None:
        self.stage = stage
        self.bus = bus
        self.inputs = list(inputs)
        self.routes = dict(routes or {})
        missing = [k for k in stage.emits if k not in self.routes]
        if missing:
            raise ValueError(f"stage {stage.name!r} emits {missing} but no output topic is set")
        self.name = name or stage.name
        self.group_id = group_id or f"vistream-{self.name}"
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.max_frame_bytes = max_frame_bytes
        self.metrics = metrics or StageMetrics(self.name)
        # a stage with figures of its own (the index: model version, labels) exports them too
        self.metrics.watch_stage(stage)
        self.stats = RunnerStats()
        self._consumer = None
        self._producer = None
        self._last_lag_check = 0.0
        self.idle_since = time.monotonic()
        #: per input partition, the next offset to read: one past the last handled batch
        self.positions: dict[TopicPartition, int] = {}
        #: the positions the stage's snapshot restored at :meth:`open` (stateful stages)
        self.restored_positions: dict[TopicPartition, int] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        if self._consumer is None:
            self.stage.setup()
            on_assign = None
            if self.stage.stateful:
                self.restored_positions = positions_from_carry(self.stage.restore())
                self.positions = dict(self.restored_positions)
                on_assign = self.start_positions
            self._producer = self.bus.producer()
            self._consumer = self.bus.consumer(self.inputs, self.group_id, on_assign=on_assign)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None
            try:
                self._maybe_snapshot(closing=True)
            finally:
                self.stage.close()

    # -- positions and snapshots ----------------------------------------------------------
    def start_positions(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Where a stateful stage reads newly assigned partitions: where its state ends, or
        the start of a partition its state has never seen."""
        return {tp: self.positions.get(tp, 0) for tp in partitions}

    def carry(self) -> dict[str, Any]:
        """The opaque resume state a stateful stage stores with its snapshot."""
        return {"positions": [[tp.topic, tp.partition, off]
                              for tp, off in sorted(self.positions.items())]}

    def _maybe_snapshot(self, closing: bool) -> None:
        if self.stage.stateful and self.stage.snapshot_due(closing):
            self.stage.snapshot(self.carry())

    def lag(self) -> int:
        return self._consumer.lag() if self._consumer is not None else 0

    def run(self, stop: threading.Event, idle_timeout: float | None = None) -> RunnerStats:
        """Process batches until ``stop`` is set (or, with ``idle_timeout``, until nothing
        arrived for that many seconds and nothing is left to read)."""
        self.open()
        log.info("stage started", extra={"stage": self.name, "inputs": self.inputs,
                                         "group": self.group_id})
        try:
            while not stop.is_set():
                n = self.step()
                # Group lag, not this member's: right after a restart the group may still be
                # rebalancing and this member owns nothing yet.
                if (n == 0 and idle_timeout is not None
                        and time.monotonic() - self.idle_since >= idle_timeout
                        and self.bus.group_lag(self.group_id, self.inputs) == 0):
                    break
        finally:
            self.close()
            log.info("stage stopped", extra={"stage": self.name, **vars(self.stats)})
        return self.stats

    # -- one batch ------------------------------------------------------------------------
    def step(self) -> int:
        assert self._consumer is not None and self._producer is not None, "call open() first"
        records = self._consumer.poll(self.batch_size, self.poll_timeout)
        self._update_lag()
        if not records:
            return 0
        t0 = time.perf_counter()
        self.idle_since = time.monotonic()

        accepted: list[tuple[Record, Message]] = []
        dead: list[tuple[Record, str, str]] = []
        for rec in records:
            try:
                accepted.append((rec, decode_message(rec, self.stage.accepts,
                                                     self.max_frame_bytes)))
            except InvalidRecord as exc:
                dead.append((rec, str(exc), "InvalidRecord"))

        outputs = self._process(accepted, dead)
        for msg in outputs:
            out = encode_message(msg)
            self._producer.send(self.routes[msg.kind], out.value, out.key, out.headers)
        for rec, reason, error in dead:
            self._dead_letter(rec, reason, error)
        self._producer.flush()
        handled = commit_positions(records)
        self._consumer.commit(handled)
        self.positions.update(handled)
        self._maybe_snapshot(closing=False)

        self.stats.batches += 1
        self.stats.records_in += len(records)
        self.stats.records_out += len(outputs)
        self.stats.dead_lettered += len(dead)
        self.metrics.records_in.inc(len(records))
        self.metrics.records_out.inc(len(outputs))
        self.metrics.dead_lettered.inc(len(dead))
        self.metrics.batch_latency.observe(time.perf_counter() - t0)
        return len(records)

    def _process(self, accepted: list[tuple[Record, Message]],
                 dead: list[tuple[Record, str, str]]) -> list[Message]:
        if not accepted:
            return []
        try:
            return self._checked(self.stage.process([m for _, m in accepted]))
        except Exception:
            if len(accepted) == 1:
                rec, _ = accepted[0]
                self._record_failure(rec, dead)
                return []
        # Isolate the culprit(s): replay one message at a time.
        outputs: list[Message] = []
        for rec, msg in accepted:
            try:
                outputs.extend(self._checked(self.stage.process([msg])))
            except Exception:
                self._record_failure(rec, dead)
        return outputs

    def _checked(self, outputs: list[Message]) -> list[Message]:
        for m in outputs:
            if m.kind not in self.routes:
                raise TypeError(f"stage {self.name!r} returned a {m.kind!r} message "
                                f"but has no output topic for it")
        return outputs

    def _record_failure(self, rec: Record, dead: list[tuple[Record, str, str]]) -> None:
        import sys

        exc = sys.exc_info()[1]
        self.stats.errors += 1
        self.metrics.errors.inc()
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("processing failed; record dead-lettered",
                    extra={"stage": self.name, "source": rec.source_id, "reason": reason,
                           "trace": traceback.format_exc(limit=3)})
        dead.append((rec, reason, type(exc).__name__))

    def _dead_letter(self, rec: Record, reason: str, error: str) -> None:
        headers = list(rec.headers) + [
            ("dlq_reason", reason.encode("utf-8", "replace")[:4000]),
            ("dlq_error", error.encode()),
            ("dlq_stage", self.name.encode()),
            ("dlq_source", rec.source_id.encode()),
        ]
        self._producer.send(rec.topic + DLQ_SUFFIX, rec.value or b"", rec.key, headers)

    def _update_lag(self) -> None:
        # Lag costs a broker round trip on Kafka: refresh it at most once a second.
        now = time.monotonic()
        if now - self._last_lag_check >= 1.0:
            self._last_lag_check = now
            try:
                self.metrics.consumer_lag.set(self.lag())
            except Exception as exc:  # lag is informative; never fail a batch for it
                log.debug("lag unavailable: %s", exc)


def positions_from_carry(carry: Mapping[str, Any] | None) -> dict[TopicPartition, int]:
    """The positions a carry made by :meth:`StageRunner.carry` holds (none for None)."""
    if not carry:
        return {}
    return {TopicPartition(str(t), int(p)): int(o) for t, p, o in carry.get("positions", [])}
