"""The index stage run sharded: ``type: hashing`` with ``params: {sharded: true}`` on Kafka.

``vistream stage NAME`` (and ``vistream run``, one process per ``replicas``) starts a
:class:`ShardHost` instead of the stage runner and its single live index. Each host is one
member of the stage's consumer group and runs, in one loop:

* a :class:`~vistream.pipeline.shardhost.ShardReplica`: one shard per partition of the features
  topic assigned to it, opened from the partition's snapshot (``snapshot_dir``) and replayed
  from the offset stored with it; snapshots every ``snapshot_every_records`` records of a
  partition and whenever a partition is revoked;
* a :class:`~vistream.pipeline.shardhost.ModelFollower` on the compacted model topic: every
  new model version is applied to all its shards (re-encode, atomic swap per shard);
* a :class:`~vistream.pipeline.shardhost.ShardLearner` candidate (``shards.learner``): the
  host that owns partition 0 of the election topic reads the labelled features of every
  partition, fits the model (SDOH by default) per ``train_chunk`` and publishes each version;
* the replica's HTTP face (:func:`~vistream.pipeline.fanout.shard_app`) on ``shards.port``
  (0: a free port), announced with its shard keys on the compacted registry topic, where
  ``vistream serve`` (:mod:`vistream.pipeline.shardserve`) finds it.

Kafka's group protocol is what moves shards: a host that dies stops heart-beating, after
``shards.session_timeout_s`` the group hands its partitions to the others, which open the
last snapshots and replay the rest (the index is idempotent by frame id).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import uvicorn

from vistream.models.hashing.shards import ShardedIndex
from vistream.pipeline.bus import Bus, BusError, TopicSpec, make_bus
from vistream.pipeline.config import PipelineConfig, StageSettings
from vistream.pipeline.fanout import announcer, shard_app
from vistream.pipeline.runner import DLQ_SUFFIX, RunnerStats
from vistream.pipeline.shardhost import ModelFollower, ShardLearner, ShardReplica
from vistream.pipeline.wire import Record
from vistream.stages.hashing import HashingParams

log = logging.getLogger("vistream.shardrun")


def sharded_params(settings: StageSettings) -> HashingParams | None:
    """The index stage's params when it runs sharded, else None."""
    if settings.type != "hashing" or not settings.params.get("sharded"):
        return None
    return HashingParams.model_validate(settings.params)


def shard_bus(cfg: PipelineConfig, params: HashingParams) -> Bus:
    """The config's Kafka bus, its consumers timing out after ``shards.session_timeout_s``."""
    return make_bus("kafka", cfg.bus.bootstrap, **cfg.bus.kafka_options(),
                    session_timeout_ms=int(params.shards.session_timeout_s * 1000))


def create_shard_topics(bus: Bus, settings: StageSettings, params: HashingParams) -> None:
    """The model and registry topics (compacted: the latest record per key is what counts)
    and the one-partition election topic."""
    model, registry, election = params.shards.topics(settings.group_id)
    bus.create_topics([TopicSpec(model, 1, compact=True), TopicSpec(registry, 1, compact=True),
                       TopicSpec(election, 1)])


class HttpFace:
    """An ASGI app served by uvicorn in a daemon thread on ``host:port`` (0: a free port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 30.0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((host, port))
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="shard-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.sock.close()
                raise RuntimeError(f"the shard's HTTP face did not start on {host}:{port}")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class FollowerThread:
    """A :class:`ModelFollower` polled in a thread of its own (a Kafka consumer joins its group
    and keeps up only while it is polled with a timeout); :meth:`poll` hands the replica the
    newest version not handed yet, without waiting."""

    def __init__(self, bus: Bus, topic: str, poll_s: float = 0.2) -> None:
        self.follower = ModelFollower(bus, topic)
        self._new: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(poll_s,), name="model-follower",
                                       daemon=True)
        self.thread.start()

    def _run(self, poll_s: float) -> None:
        while not self._stop.is_set():
            try:
                model = self.follower.poll(poll_s)
            except BusError as exc:
                log.warning("reading the model topic failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if model is not None:
                with self._lock:
                    self._new = model

    def poll(self, timeout: float = 0.0) -> Any:
        with self._lock:
            model, self._new = self._new, None
        return model

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.follower.close()


class ShardHost:
    """One replica of a sharded index stage (see the module docstring). ``bus`` should come
    from :func:`shard_bus`; ``name`` (default: host, pid and a random suffix) is how the
    registry knows it."""

    def __init__(self, bus: Bus, settings: StageSettings, params: HashingParams,
                 name: str | None = None) -> None:
        sp = params.shards
        self.settings, self.params = settings, params
        self.name = name or f"{settings.name}-{socket.gethostname()}-{os.getpid()}-" \
                            f"{uuid.uuid4().hex[:6]}"
        self.topic = settings.inputs[0]
        model_topic, registry_topic, election_topic = sp.topics(settings.group_id)
        create_shard_topics(bus, settings, params)
        self.stats = RunnerStats()
        self._dlq = bus.producer()
        self.index = ShardedIndex(params.snapshot_dir, keep=params.snapshot_keep,
                                  model=params.model, n_bits=params.n_bits, seed=params.seed,
                                  model_params=params.model_params,
                                  background=params.background)
        self.http: HttpFace | None = None
        self.learner: ShardLearner | None = None
        try:
            self.http = HttpFace(shard_app(self.index), sp.listen_host, sp.port)
            self.url = f"http://{sp.advertise_host or sp.listen_host}:{self.http.port}"
            self.replica = ShardReplica(
                bus, self.topic, settings.group_id, self.index,
                snapshot_every=params.snapshot_every_records, max_records=settings.batch_size,
                models=FollowerThread(bus, model_topic),
                announce=announcer(bus, registry_topic, self.name, self.url),
                heartbeat_s=sp.heartbeat_s, dead_letter=self._dead_letter)
            if sp.learner:
                self.learner = ShardLearner(
                    bus, self.topic, model_topic, election_topic, settings.group_id,
                    model=params.model, n_bits=params.n_bits, seed=params.seed,
                    model_params=params.model_params, train_chunk=params.train_chunk)
            self._stop = threading.Event()
            self._learning = threading.Thread(target=self._learn, name="shard-learner",
                                              daemon=True)
            if self.learner is not None:
                self._learning.start()
        except BaseException:
            if self.http is not None:
                self.http.close()
            self.index.close()
            self._dlq.close()
            raise
        log.info("shard replica %s of %s serving on %s", self.name, self.topic, self.url)

    def _dead_letter(self, rec: Record, reason: str) -> None:
        headers = list(rec.headers or []) + [
            ("dlq_reason", reason.encode("utf-8", "replace")[:4000]),
            ("dlq_error", b"InvalidRecord"), ("dlq_stage", self.settings.name.encode()),
            ("dlq_source", rec.source_id.encode())]
        self._dlq.send(rec.topic + DLQ_SUFFIX, rec.value or b"", rec.key, headers)
        self.stats.dead_lettered += 1

    def _learn(self) -> None:
        """The learner candidate's own loop: the election, and learning while elected."""
        while not self._stop.is_set():
            try:
                self.learner.step(0.2)
            except BusError as exc:
                log.warning("the learner could not reach the broker: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 - a failed fit must not stop the replica
                log.exception("the learner failed; trying again")
                self._stop.wait(1.0)

    def step(self, timeout: float = 0.05) -> int:
        """One round of the replica: poll, index, apply a new model version, snapshot what is
        due, announce. Returns the records handled. (The learner candidate and the model
        follower run in threads of their own.)"""
        n = self.replica.step(timeout)
        if self.stats.dead_lettered:
            self._dlq.flush()
        if n:
            self.stats.batches += 1
            self.stats.records_in += n
        return n

    def run(self, stop: threading.Event, idle_timeout: float | None = None) -> RunnerStats:
        """Step until ``stop`` is set (or, with ``idle_timeout``, until nothing came for that
        long); then leave cleanly (snapshot every shard, announce nothing held)."""
        last = time.monotonic()
        try:
            while not stop.is_set():
                if self.step(self.settings.poll_timeout):
                    last = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    break
        finally:
            self.close()
        return self.stats

    def close(self, snapshot: bool = True) -> None:
        self._stop.set()
        if self._learning.ident is not None:
            self._learning.join(30)
        if self.learner is not None:
            self.learner.close()
            self.learner = None
        self.replica.close(snapshot=snapshot)
        self._dlq.close()
        if self.http is not None:
            self.http.close()
            self.http = None
