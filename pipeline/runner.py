"""The stage runner: the one place that owns delivery.

One batch is: poll → decode (invalid records are dead-lettered) → ``stage.process`` →
produce the outputs and dead letters → flush → commit. Offsets are committed only after
everything the batch produced is acknowledged, so a crash anywhere redelivers the batch:
at least once. Stages are idempotent by frame id, which turns that into exactly-once results.
On a bus with a ``commit_interval`` (Kafka: 0.5 s) the flush and the commit of consecutive
batches of a stateless stage are folded: they happen once that interval has passed since the
last commit, at the first poll that finds nothing, and at shutdown (outputs still leave at
once: the producer sends them on its own). A broker answers each commit with a write to its
offsets log; one per batch of one or two frames cost more CPU than the frames did. A crash then
redelivers up to that interval's batches instead of one.

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

Broker outages of any length are ridden out (docs/reliability.md): a poll, a produce (flush)
or a commit that finds no broker (:class:`BusUnavailable`) is retried with a backoff from
0.2 s doubling to at most 2 s, so the stage notices the broker's return within 2 s. A batch
is never committed before its outputs are acknowledged, so nothing is lost; a commit refused
after the outage (the group moved on) lets the batch be redelivered, which the idempotent
stages absorb. The runner logs one line when the broker goes away and one when it is back
(with the outage's length), and sets the ``vistream_broker_up`` gauge to 0 or 1. A stop
requested during an outage ends the stage at once, leaving the unfinished batch uncommitted.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vistream.pipeline.bus import Bus, BusError, BusUnavailable, TopicPartition, commit_positions
from vistream.pipeline.metrics import StageMetrics
from vistream.pipeline.wire import Record, decode_message, encode_message
from vistream.stages.base import Stage
from vistream.stages.records import MAX_FRAME_BYTES, InvalidRecord, Message

log = logging.getLogger("vistream.runner")

DLQ_SUFFIX = ".dlq"
#: first and longest wait between two tries while the broker is away (seconds)
BACKOFF_START, BACKOFF_MAX = 0.2, 2.0
#: how often an idle runner checks that the broker still answers (seconds)
PROBE_EVERY = 1.0


class _Stopped(Exception):
    """A stop was requested while waiting for the broker."""


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
        #: False while the broker is away; see :meth:`_broker_down`
        self.broker_up = True
        self.outages = 0
        self._down_since = 0.0
        self._last_probe = 0.0
        #: per input partition, positions handled but not yet committed (see commit_interval)
        self._pending: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self._stop = threading.Event()
        self.metrics.broker_up.set(1)

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
            self._commit_at_close()
            try:
                self._consumer.close()
            except BusError as exc:  # no broker to leave the group with: it times us out
                log.warning("consumer closed without the broker: %s", exc,
                            extra={"stage": self.name})
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.flush(timeout=None if self.broker_up else 5.0)
            except BusError as exc:  # those outputs' batch is uncommitted: it is redelivered
                log.warning("outputs not delivered at close (their batch is redelivered): %s",
                            exc, extra={"stage": self.name})
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

    # -- broker outages -------------------------------------------------------------------
    def _broker_down(self, what: str, exc: BaseException) -> None:
        if self.broker_up:
            self.broker_up = False
            self.outages += 1
            self._down_since = time.monotonic()
            self.metrics.broker_up.set(0)
            log.warning("broker unreachable; retrying with backoff",
                        extra={"stage": self.name, "during": what, "reason": str(exc)[:300]})

    def _broker_back(self) -> None:
        if not self.broker_up:
            self.broker_up = True
            self.metrics.broker_up.set(1)
            log.info("broker reachable again",
                     extra={"stage": self.name,
                            "outage_s": round(time.monotonic() - self._down_since, 1)})

    def _retry(self, what: str, call):
        """``call()`` until it stops raising :class:`BusUnavailable`, waiting with a backoff in
        between; raises :class:`_Stopped` when a stop is requested meanwhile."""
        delay = BACKOFF_START
        while True:
            try:
                result = call()
            except BusUnavailable as exc:
                self._broker_down(what, exc)
                if self._stop.wait(delay):
                    raise _Stopped(what) from None
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._broker_back()
            return result

    def _probe(self) -> None:
        """After an empty poll: does the broker still answer? (A consumer keeps polling
        quietly while its broker is away; this is how an idle stage notices.)"""
        now = time.monotonic()
        if now - self._last_probe < (PROBE_EVERY if self.broker_up else BACKOFF_START):
            return
        self._last_probe = now
        if self.bus.reachable():
            self._broker_back()
        else:
            self._broker_down("poll", BusUnavailable("no connection to the broker"))

    def run(self, stop: threading.Event, idle_timeout: float | None = None) -> RunnerStats:
        """Process batches until ``stop`` is set (or, with ``idle_timeout``, until nothing
        arrived for that many seconds and nothing is left to read)."""
        self._stop = stop
        self.open()
        log.info("stage started", extra={"stage": self.name, "inputs": self.inputs,
                                         "group": self.group_id})
        try:
            while not stop.is_set():
                try:
                    n = self.step()
                except _Stopped:
                    break
                if (n == 0 and idle_timeout is not None
                        and time.monotonic() - self.idle_since >= idle_timeout
                        and self._drained()):
                    break
        finally:
            self.close()
            log.info("stage stopped", extra={"stage": self.name, **vars(self.stats)})
        return self.stats

    def _drained(self) -> bool:
        """The whole group has nothing left to read. Group lag, not this member's: right after
        a restart the group may still be rebalancing and this member owns nothing yet."""
        if not self.broker_up:
            return False
        try:
            return self.bus.group_lag(self.group_id, self.inputs) == 0
        except BusError as exc:  # broker away (or stuck): not drained, keep going
            log.debug("group lag unavailable: %s", exc)
            return False

    # -- one batch ------------------------------------------------------------------------
    def step(self) -> int:
        """Handle one batch; returns the number of records read (0 when none came, or the
        broker was away). Raises :class:`_Stopped` when a stop interrupts an outage's wait."""
        assert self._consumer is not None and self._producer is not None, "call open() first"
        try:
            records = self._consumer.poll(self.batch_size, self.poll_timeout)
        except BusUnavailable as exc:
            self._broker_down("poll", exc)
            self._stop.wait(BACKOFF_START)
            return 0
        if records:
            self._broker_back()
        else:
            self._probe()
        self._update_lag()
        if not records:
            if self.broker_up:
                self._commit_pending()  # idle: nothing to fold the held commit with
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
        self._pending.update(commit_positions(records))
        # A stateful stage's snapshots carry its positions: it commits every batch, so that a
        # position never runs ahead of outputs that are not acknowledged yet.
        interval = 0.0 if self.stage.stateful else self.bus.commit_interval
        if time.monotonic() - self._last_commit >= interval:
            self._commit_pending()

        self.stats.batches += 1
        self.stats.records_in += len(records)
        self.stats.records_out += len(outputs)
        self.stats.dead_lettered += len(dead)
        self.metrics.records_in.inc(len(records))
        self.metrics.records_out.inc(len(outputs))
        self.metrics.dead_lettered.inc(len(dead))
        self.metrics.batch_latency.observe(time.perf_counter() - t0)
        return len(records)

    def _commit_pending(self) -> None:
        """Flush, then commit what was handled since the last commit (and snapshot a stateful
        stage when due)."""
        if not self._pending:
            return
        # Outputs first, then the commit: each waits out an outage on its own, so an outage
        # between the two neither loses the batch nor sends its outputs twice.
        self._retry("produce", lambda: self._producer.flush(timeout=BACKOFF_MAX))
        handled = self._pending
        self._retry("commit", lambda: self._consumer.commit(handled))
        self._pending = {}
        self._last_commit = time.monotonic()
        self.positions.update(handled)
        self._maybe_snapshot(closing=False)

    def _commit_at_close(self) -> None:
        """The held commit, once, before the consumer leaves its group; without a broker the
        batches stay uncommitted and are redelivered."""
        if not self._pending or not self.broker_up:
            return
        try:
            self._producer.flush(timeout=5.0)
            self._consumer.commit(self._pending)
        except BusError as exc:
            log.warning("last batches not committed at close (they are redelivered): %s", exc,
                        extra={"stage": self.name})
            return
        self.positions.update(self._pending)
        self._pending = {}

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
        # Lag costs a broker round trip on Kafka: refresh it at most once a second, and not
        # while the broker is away (each try would wait for it).
        now = time.monotonic()
        if self.broker_up and now - self._last_lag_check >= 1.0:
            self._last_lag_check = now
            try:
                self.metrics.consumer_lag.set(self.lag())
            except BusUnavailable as exc:
                self._broker_down("lag", exc)
            except Exception as exc:  # lag is informative; never fail a batch for it
                log.debug("lag unavailable: %s", exc)


def positions_from_carry(carry: Mapping[str, Any] | None) -> dict[TopicPartition, int]:
    """The positions a carry made by :meth:`StageRunner.carry` holds (none for None)."""
    if not carry:
        return {}
    return {TopicPartition(str(t), int(p)): int(o) for t, p, o in carry.get("positions", [])}
