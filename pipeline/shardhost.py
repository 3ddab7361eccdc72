"""The shard replicas of the index and their one hash model; the fan-out that queries them is
:mod:`vistream.pipeline.fanout`.

Replica (:class:`ShardReplica`)
    One member of the index stage's consumer group. It holds one shard per assigned partition
    of the features topic (a :class:`~vistream.models.hashing.shards.ShardedIndex`). When a
    partition is assigned it opens the partition's shard from its snapshot and reads the
    partition from the offset stored with it (0 without one); when a partition goes away (the
    bus's revoke callback: on Kafka before the group hands it on) it snapshots the shard with
    its position, and drops it once a poll shows it gone; every ``snapshot_every`` records of a
    partition it snapshots that shard. A replica that is killed loses nothing: its partitions
    go to the others, which open the last snapshots and replay the rest from the topic (the
    index is idempotent by frame id, so the overlap counts once).

One hash model (:class:`ShardLearner`, :class:`ModelFollower`)
    Learner candidates (one per replica, say) join the group ``<group>-learner`` on a
    one-partition election topic; the member that owns its partition 0 is *the* learner,
    chosen by Kafka's own group protocol, and a dead learner's successor is chosen the same
    way. Only the learner reads the features topic (all partitions, group ``<group>-learn``),
    keeps the labelled feature records, and every ``train_chunk`` of them fits a copy of the
    latest model (SDOH by default) and publishes the new version to the model topic (one key,
    so a compacted topic keeps the latest); it commits its input offsets only after the
    version is out, so a successor neither loses nor repeats a chunk. A successor first reads
    the model topic and continues from the latest version there. Every replica follows the
    model topic (:class:`ModelFollower`, a group of its own) and applies a newer version to all
    its shards (:meth:`ShardedIndex.set_model`: re-encode, atomic swap per shard).
"""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.evaluate import sdoh_eval_lr
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import ShardedIndex
from vistream.pipeline.bus import Bus, TopicPartition
from vistream.pipeline.fanout import shard_key
from vistream.pipeline.runner import positions_from_carry
from vistream.pipeline.wire import Record, decode_message
from vistream.stages.records import Features, InvalidRecord

log = logging.getLogger("vistream.shardhost")


MODEL_KEY = b"hash-model"


def publish_model(producer: Any, topic: str, model: HashModel) -> None:
    """One model version as a record of the model topic (always the same key)."""
    producer.send(topic, model.to_bytes(), key=MODEL_KEY,
                  headers=[("model", model.name.encode()),
                           ("model_version", str(int(model.version)).encode())])
    producer.flush()


class ModelFollower:
    """Reads the model topic from its start in a group of its own and keeps the newest
    version (by version number); :meth:`poll` returns it when it is newer than the last one
    returned."""

    def __init__(self, bus: Bus, topic: str, group_id: str | None = None) -> None:
        self.consumer = bus.consumer([topic], group_id or f"model-follower-{uuid.uuid4().hex}")
        self.latest: HashModel | None = None
        self._given = -1

    def poll(self, timeout: float = 0.0) -> HashModel | None:
        while True:
            recs = self.consumer.poll(100, timeout)
            for rec in recs:
                try:
                    model = HashModel.from_bytes(rec.value or b"")
                except (ValueError, OSError, KeyError) as exc:
                    log.warning("skipped model record %s: %s", rec.source_id, exc)
                    continue
                if self.latest is None or model.version > self.latest.version:
                    self.latest = model
            if not recs:
                break
            timeout = 0.0
        if self.latest is not None and self.latest.version > self._given:
            self._given = self.latest.version
            return self.latest
        return None

    def catch_up(self, timeout: float = 10.0) -> HashModel | None:
        """Read the model topic until this follower holds its partition and a poll finds
        nothing more (at most ``timeout`` s); returns the newest version (None: none yet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs = self.consumer.poll(100, 0.2)
            for rec in recs:
                try:
                    model = HashModel.from_bytes(rec.value or b"")
                except (ValueError, OSError, KeyError):
                    continue
                if self.latest is None or model.version > self.latest.version:
                    self.latest = model
            if not recs and self.consumer.assignment():
                break
        if self.latest is not None:
            self._given = max(self._given, self.latest.version)
        return self.latest

    def close(self) -> None:
        self.consumer.close()


class ShardLearner:
    """One learner candidate (see the module docstring). Call :meth:`step` in a loop; it
    learns only while this candidate owns partition 0 of ``election_topic``."""

    def __init__(self, bus: Bus, features_topic: str, model_topic: str, election_topic: str,
                 group_id: str, model: str = "sdoh", n_bits: int = 64, seed: int = 0,
                 model_params: Mapping[str, Any] | None = None,
                 train_chunk: int = 2000) -> None:
        self.bus = bus
        self.features_topic, self.model_topic = features_topic, model_topic
        self.group_id = group_id
        params = dict(model_params or {})
        if model == "sdoh" and "lr" not in params:  # the tuned rate, as the hashing stage uses
            params["lr"] = sdoh_eval_lr(n_bits)
        self.make = lambda: make_hash_model(model, n_bits=n_bits, seed=seed, **params)
        self.train_chunk = int(train_chunk)
        self.election = bus.consumer([election_topic], f"{group_id}-learner")
        self.producer = bus.producer()
        self.data: Any = None  # the features consumer, open while this one is the learner
        self.models: ModelFollower | None = None
        self.model: HashModel | None = None
        self.X: list[np.ndarray] = []
        self.y: list[int] = []
        #: where each buffered labelled record came from, and how far each partition was read
        self.at: list[tuple[TopicPartition, int]] = []
        self.read: dict[TopicPartition, int] = {}
        self.published = 0

    @property
    def leading(self) -> bool:
        return self.data is not None

    def step(self, timeout: float = 0.0) -> int:
        """Check the election, read features when leading, fit and publish a version per full
        chunk. Returns the feature records read."""
        # keeps the membership alive and picks up rebalances (a real wait: a Kafka consumer
        # polled with ~0 s barely advances its join, and a rebalance waits for every member)
        self.election.poll(1, 0.05)
        lead = any(tp.partition == 0 for tp in self.election.assignment())
        if lead and self.data is None:
            self._take_over()
        elif not lead and self.data is not None:
            self._step_down()
        if self.data is None:
            return 0
        newer = self.models.poll(0.0) if self.models is not None else None
        if newer is not None and (self.model is None or newer.version > self.model.version):
            self.model = newer  # published by a predecessor after this one took over
        recs = self.data.poll(500, timeout)
        for rec in recs:
            tp = TopicPartition(rec.topic, rec.partition)
            self.read[tp] = rec.offset + 1
            try:
                msg = decode_message(rec, accept=("features",))
            except InvalidRecord:
                continue
            if isinstance(msg, Features) and msg.label is not None and int(msg.label) >= 0:
                self.X.append(np.asarray(msg.vector, np.float32).reshape(-1))
                self.y.append(int(msg.label))
                self.at.append((tp, rec.offset))
        fitted = False
        while len(self.y) >= self.train_chunk:
            c = self.train_chunk
            self._fit(np.stack(self.X[:c]), np.array(self.y[:c]))
            del self.X[:c], self.y[:c], self.at[:c]
            fitted = True
        if fitted or (recs and not self.y):
            self._commit()
        return len(recs)

    def _commit(self) -> None:
        """Commit what is in a published version: up to the first labelled record still
        buffered in each partition, everything read elsewhere."""
        offsets = dict(self.read)
        for tp, off in reversed(self.at):
            offsets[tp] = off
        self.data.commit(offsets)

    def _take_over(self) -> None:
        self.models = ModelFollower(self.bus, self.model_topic)
        self.model = self.models.catch_up()  # continue from the latest published version
        self.X, self.y, self.at, self.read = [], [], [], {}
        self.data = self.bus.consumer([self.features_topic], f"{self.group_id}-learn")
        log.info("this replica is the index's learner (model version %s)",
                 None if self.model is None else self.model.version)

    def _step_down(self) -> None:
        self.data.close()
        self.data = None
        if self.models is not None:
            self.models.close()
            self.models = None

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        model = copy.deepcopy(self.model) if self.model is not None else self.make()
        model.partial_fit(X, y)
        model.version = max(int(model.version), 0 if self.model is None else
                            int(self.model.version) + 1)
        publish_model(self.producer, self.model_topic, model)
        self.model = model
        self.published += 1

    def close(self) -> None:
        if self.data is not None:
            self._step_down()
        self.election.close()
        self.producer.close()


class ShardReplica:
    """A consumer-group member that keeps one shard per assigned partition of ``topic`` (see
    the module docstring). Call :meth:`step` in a loop; :meth:`close` snapshots every shard it
    holds and leaves the group."""

    def __init__(self, bus: Bus, topic: str, group_id: str, index: ShardedIndex,
                 snapshot_every: int = 10_000, max_records: int = 500,
                 models: ModelFollower | None = None,
                 announce: Callable[[list[str]], None] | None = None,
                 heartbeat_s: float = 5.0,
                 dead_letter: Callable[[Record, str], None] | None = None) -> None:
        self.topic = topic
        #: called with each record that cannot be indexed and the reason (e.g. to a DLQ topic)
        self.dead_letter = dead_letter
        self.models = models
        #: called with the shard keys held when they change and every ``heartbeat_s``
        self.announce = announce
        self.heartbeat_s = float(heartbeat_s)
        self._announced: tuple[list[str], float] | None = None
        self.index = index
        self.snapshot_every = int(snapshot_every)
        self.max_records = int(max_records)
        self.positions: dict[TopicPartition, int] = {}
        self._since: dict[TopicPartition, int] = {}
        self.invalid = 0
        #: revoked partitions snapshotted in the revoke callback and unchanged since
        self._clean: set[TopicPartition] = set()
        self.consumer = bus.consumer([topic], group_id, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke)

    def carry(self, tp: TopicPartition) -> dict[str, Any]:
        return {"positions": [[tp.topic, tp.partition, self.positions.get(tp, 0)]]}

    def _on_assign(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        out = {}
        for tp in sorted(tps):
            held = tp in self.positions  # revoked and given straight back: kept in memory
            carry = self.index.open_shard(shard_key(tp))
            pos = positions_from_carry(carry).get(tp, self.positions.get(tp, 0))
            self.positions[tp] = out[tp] = pos
            if not held:
                self._since[tp] = 0
            self._clean.discard(tp)
        return out

    def _on_revoke(self, tps: set[TopicPartition]) -> None:
        """Snapshot the shards of partitions going away, before the group hands them on (on
        Kafka's eager protocol every partition is revoked at each rebalance, and most come
        straight back: the shard stays in memory until a poll shows it is really gone)."""
        for tp in sorted(tps):
            if tp not in self.positions:
                continue
            # unchanged since it was opened or last snapshotted: what is on disk (or, with no
            # snapshot, replay from 0) already gives the next owner this state
            if self._since.get(tp, 0) == 0 or self._snapshot(tp):
                self._clean.add(tp)

    def _snapshot(self, tp: TopicPartition) -> bool:
        try:
            self.index.snapshot_shard(shard_key(tp), self.carry(tp))
        except OSError as exc:  # e.g. the new owner writing the same folder: it replays
            log.warning("snapshot of %s failed: %s", shard_key(tp), exc)
            return False
        self._since[tp] = 0
        return True

    def _drop_revoked(self) -> None:
        owned = self.consumer.assignment()
        for tp in [tp for tp in self.positions if tp not in owned]:
            clean = tp in self._clean
            if not clean:
                self._snapshot(tp)
            self.index.close_shard(shard_key(tp), snapshot=False)
            del self.positions[tp]
            self._since.pop(tp, None)
            self._clean.discard(tp)

    def step(self, timeout: float = 0.05) -> int:
        """Poll once, index what came, drop partitions that moved away, snapshot shards that
        are due. Returns the records handled."""
        model = None if self.models is None else self.models.poll(0.0)
        if model is not None:
            self.index.set_model(model)
        records = self.consumer.poll(self.max_records, timeout)
        by_tp: dict[TopicPartition, list[Record]] = {}
        for rec in records:
            by_tp.setdefault(TopicPartition(rec.topic, rec.partition), []).append(rec)
        for tp, recs in by_tp.items():
            self._apply(tp, recs)
        self._drop_revoked()
        for tp in list(self.positions):
            if self._since.get(tp, 0) >= self.snapshot_every:
                self._snapshot(tp)
        self._heartbeat()
        return len(records)

    def _heartbeat(self, force: bool = False) -> None:
        if self.announce is None:
            return
        keys, now = self.index.keys(), time.monotonic()
        last = self._announced
        if force or last is None or last[0] != keys or now - last[1] >= self.heartbeat_s:
            self.announce(keys)
            self._announced = (keys, now)

    def _apply(self, tp: TopicPartition, recs: list[Record]) -> None:
        if tp not in self.positions:  # pragma: no cover - polled just before a revoke
            return
        shard = self.index.shard(shard_key(tp))
        fids, rows, streams, stamps = [], [], [], []
        for rec in recs:
            try:
                msg = decode_message(rec, accept=("features",))
            except InvalidRecord as exc:
                self._invalid(rec, str(exc))
                continue
            assert isinstance(msg, Features)
            row = np.asarray(msg.vector, np.float32).reshape(1, -1)
            try:
                shard.validate_vectors(row)
                if rows and row.shape[1] != rows[0].shape[0]:
                    raise ValueError(f"feature vector has {row.shape[1]} dims, the others of "
                                     f"this batch {rows[0].shape[0]}")
            except ValueError as exc:
                self._invalid(rec, str(exc))
                continue
            fids.append(msg.frame_id)
            rows.append(row[0])
            streams.append(msg.stream_id)
            stamps.append(getattr(msg, "timestamp_ms", None) or None)
        if rows:
            shard.add(fids, np.stack(rows), stream_ids=streams, timestamps=stamps)
        self.positions[tp] = recs[-1].offset + 1
        self._since[tp] = self._since.get(tp, 0) + len(recs)
        self._clean.discard(tp)

    def _invalid(self, rec: Record, reason: str) -> None:
        self.invalid += 1
        log.warning("skipped %s: %s", rec.source_id, reason)
        if self.dead_letter is not None:
            self.dead_letter(rec, reason)

    def close(self, snapshot: bool = True) -> None:
        """Leave the group; with ``snapshot`` each shard is snapshotted first (a clean stop)."""
        for tp in list(self.positions):
            if snapshot:
                self._snapshot(tp)
            self.index.close_shard(shard_key(tp), snapshot=False)
        self.positions.clear()
        if snapshot and self.announce is not None:
            self.announce([])  # a clean stop: gone at once, not after the directory's ttl
        self.consumer.close()
        if self.models is not None:
            self.models.close()
        self.index.close()
