"""The index stage: online hashing of feature records into a live FAISS binary index.

It consumes ``features`` records (frame id, vector, optional label) and ``label`` records
(by frame id or by track id, with a class name or an integer) and feeds them to a
:class:`~vistream.models.hashing.live.LiveIndex`, which learns the hash model (SDOH by
default) in chunks of labelled features, re-encodes in the background and swaps atomically.
``caption``, ``tracks`` and ``frame_summary`` records become metadata joined to the frame id
(caption text, tracked boxes; a frame summary gives the capture timestamp).
Any record kind that carries a ``timestamp_ms`` attribute sets the frame's timestamp.

It emits nothing: it is a sink whose output is the index (served by ``vistream serve``).

Labels
    A ``label`` record names a frame id, or a track (``track_id`` of ``stream_id``; empty
    stream: any), and a class by name (the index keeps the name <-> id map in its snapshots)
    or by integer. A track's label applies to every row of that track, including rows that
    arrive later. A label whose frame or track is not indexed yet waits for it until it
    expires (``label_ttl_records`` more rows, or ``label_ttl_seconds``); counted, never an
    error. A malformed label (no target or two, no class or two, a negative id) raises
    :class:`~vistream.stages.records.InvalidRecord`: the runner dead-letters it with the reason.

Crops (``feature_label: track``)
    The features stage in crop mode sets a feature record's ``label`` to the *track id* of the
    box, not to a class. With ``feature_label: track`` the stage reads it so: the row is the
    crop ``<frame_id>#t<track_id>`` (the crops of one frame share its frame id), it belongs to
    track ``(stream_id, track_id)`` and takes that track's class label when one is given. With
    the default ``class`` the ``label`` of a feature record is its class. A feature record
    with a ``track_id`` attribute of its own is read as a crop either way.

Delivery and restarts
    Everything is idempotent by frame id, so a redelivered record changes nothing. Messages of a
    batch are applied in their order (runs of feature records as one ``add``), so the learning
    queue does not depend on how the runner cut batches.

    The index lives only in memory and snapshots, not in the group's committed offsets, so the
    stage is ``stateful``: the runner restores it at start-up and replays each partition from
    where the restored snapshot ends (from its oldest record when there is none), so a restart
    without a snapshot rebuilds from the topic. The positions are the runner's: they arrive as
    the opaque carry of :meth:`HashingStage.snapshot`, stored verbatim with the index, and go
    back from :meth:`HashingStage.restore`.

    With ``snapshot_dir`` set, :meth:`HashingStage.restore` loads the last snapshot, and
    :meth:`HashingStage.snapshot_due` asks for one every ``snapshot_every_records`` applied
    records or ``snapshot_every_seconds`` (checked after each batch) and on close. One index per
    consumer group member: run one replica per group (give each query server its own group so
    that each holds the whole index).

Sharded (``sharded: true``, Kafka only)
    Instead, each replica of the stage holds one shard per partition of its one features topic,
    all shards share one hash model fitted by one elected learner, and ``vistream serve`` fans
    queries out to every replica: the runtime's :mod:`vistream.pipeline.shardrun` runs it (this
    class then only validates the parameters, :class:`ShardParams` included). See
    docs/retrieval.md, "Sharded on Kafka".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from vistream.models.hashing.evaluate import sdoh_eval_lr
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.snapshot import resolve_snapshot
from vistream.stages.base import Stage, StageParams, register_stage
from vistream.stages.records import Caption, Features, FrameSummary, Label, Message, Tracks

log = logging.getLogger("vistream.stages.hashing")


class ShardParams(StageParams):
    """How a sharded index stage (``sharded: true``) finds its peers and is found; see
    docs/retrieval.md ("Sharded on Kafka"). Topic names default to ``<group>.model``,
    ``<group>.shards`` and ``<group>.learner`` (the stage's consumer group)."""

    model_topic: str | None = Field(None, description="compacted topic of the hash model versions")
    registry_topic: str | None = Field(None, description="compacted topic each replica announces "
                                                         "its shards and URL on")
    election_topic: str | None = Field(None, description="one-partition topic whose owner is "
                                                         "the learner")
    learner: bool = Field(True, description="this replica may be elected the learner")
    listen_host: str = Field("127.0.0.1", description="address of the replica's shard HTTP face")
    advertise_host: str | None = Field(None, description="host name in the announced URL "
                                                         "(default: listen_host)")
    port: int = Field(0, ge=0, le=65535, description="port of the shard HTTP face (0: a free one)")
    heartbeat_s: float = Field(2.0, gt=0, le=600, description="re-announce this often")
    ttl_s: float = Field(10.0, gt=0, description="`serve` takes a replica silent this long "
                                                 "for dead")
    query_timeout_s: float = Field(2.0, gt=0, le=600, description="`serve` waits this long for "
                                                                   "a shard's answer")
    session_timeout_s: float = Field(6.0, ge=1, le=300, description="Kafka session timeout of "
                                     "the replica's consumers: how soon a dead replica's "
                                     "partitions move (the broker's minimum is 6 s by default)")

    def topics(self, group_id: str) -> tuple[str, str, str]:
        """(model, registry, election) topic names for the stage's consumer group."""
        return (self.model_topic or f"{group_id}.model",
                self.registry_topic or f"{group_id}.shards",
                self.election_topic or f"{group_id}.learner")


class HashingParams(StageParams):
    model: str = Field("sdoh", description="hash model from HashModel.registry: sdoh, lsh, ...")
    n_bits: int = Field(64, ge=8, le=1024, multiple_of=8, description="code length in bits")
    seed: int = Field(0, description="seed of the hash model's initialisation")
    model_params: dict[str, Any] = Field(default_factory=dict,
                                         description="extra hyper-parameters of the model, "
                                                     "e.g. {lr: 0.05, sigma: 0.5, max_iter: 1000}")
    train_chunk: int = Field(2000, ge=2, description="labelled features per model update")
    background: bool = Field(True, description="fit and re-encode in a background thread")
    warm_start: Literal["lsh"] = Field("lsh", description="codes before the first model fit")
    snapshot_dir: str | None = Field(None, description="folder for snapshots (none: memory only)")
    snapshot_every_records: int = Field(50_000, ge=1)
    snapshot_every_seconds: float = Field(300.0, gt=0)
    snapshot_keep: int = Field(2, ge=1, description="snapshots kept on disk")
    feature_label: Literal["class", "track"] = Field(
        "class", description="what a feature record's `label` is: its class, or the track id "
                             "of a crop (features stage with crops: true)")
    label_ttl_records: int | None = Field(100_000, ge=1, description="a label for an unknown "
                                          "frame or track expires after this many more rows "
                                          "(null: never)")
    label_ttl_seconds: float | None = Field(None, gt=0, description="... or after this many "
                                            "seconds (null: never)")
    sharded: bool = Field(False, description="one shard per assigned partition, one shared "
                          "model, queried by fan-out (Kafka only; see `shards`)")
    shards: ShardParams = Field(default_factory=ShardParams,
                                description="settings of the sharded mode (sharded: true)")

    @model_validator(mode="after")
    def _tuned_sdoh_defaults(self) -> HashingParams:
        # SDOH's paper defaults (lr 0.05) barely move W on unit-norm features; use the learning
        # rate picked on the digits validation split (docs/hashing.md) unless one is given.
        if self.model == "sdoh" and "lr" not in self.model_params:
            self.model_params = {**self.model_params, "lr": sdoh_eval_lr(self.n_bits)}
        return self


def _tracks_meta(t: Tracks) -> list[dict[str, Any]]:
    boxes = np.asarray(t.boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    ids = np.asarray(t.track_ids).reshape(-1)
    scores = np.asarray(t.scores, np.float64).reshape(-1)
    out = []
    for i in range(n):
        out.append({"track_id": int(ids[i]) if i < len(ids) else None,
                    "box": [round(float(v), 3) for v in boxes[i]],
                    "score": round(float(scores[i]), 5) if i < len(scores) else None})
    return out


@register_stage("hashing")
class HashingStage(Stage):
    accepts = ("features", "label", "caption", "tracks", "frame_summary")
    emits = ()
    Params = HashingParams
    stateful = True

    def __init__(self, params: StageParams | None = None) -> None:
        super().__init__(params)
        self.index: LiveIndex | None = None
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        if self.index is not None:
            return
        p: HashingParams = self.params  # type: ignore[assignment]
        self.index = LiveIndex(p.model, n_bits=p.n_bits, seed=p.seed,
                               model_params=p.model_params, train_chunk=p.train_chunk,
                               background=p.background, label_ttl_records=p.label_ttl_records,
                               label_ttl_seconds=p.label_ttl_seconds)
        self._last_snapshot = time.monotonic()

    def close(self) -> None:
        if self.index is not None:
            self.index.close()

    # ------------------------------------------------------------------ state
    def restore(self) -> Mapping[str, Any] | None:
        p: HashingParams = self.params  # type: ignore[assignment]
        snap_dir = Path(p.snapshot_dir) if p.snapshot_dir else None
        if snap_dir is None or resolve_snapshot(snap_dir) is None:
            return None
        loaded = LiveIndex.load(snap_dir, background=p.background, train_chunk=p.train_chunk)
        loaded.set_label_ttl(p.label_ttl_records, p.label_ttl_seconds)
        if self.index is not None:
            self.index.close()
        self.index = loaded
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        if loaded.configured_model != p.model:
            log.warning("the snapshot's hash model is %s, the config says %s: keeping the "
                        "snapshot's", loaded.configured_model, p.model)
        log.info("index restored from snapshot", extra={"frames": len(loaded),
                                                       "carry": str(loaded.loaded_carry)})
        return loaded.loaded_carry

    def snapshot_due(self, closing: bool) -> bool:
        p: HashingParams = self.params  # type: ignore[assignment]
        if not p.snapshot_dir or self.index is None or not self._since_snapshot:
            return False
        return (closing or self._since_snapshot >= p.snapshot_every_records
                or time.monotonic() - self._last_snapshot >= p.snapshot_every_seconds)

    def snapshot(self, carry: Mapping[str, Any]) -> None:
        p: HashingParams = self.params  # type: ignore[assignment]
        if not p.snapshot_dir or self.index is None:
            return
        self.index.snapshot(p.snapshot_dir, carry, keep=p.snapshot_keep)
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()

    def metrics(self) -> dict[str, float]:
        """Figures of the index as gauges (``pipeline.metrics.StageGauges`` exports them):
        model version, codes indexed, labelled rows, label records pending/matched/expired,
        classes, and when the model was last fitted and swapped (s since the epoch, 0: never)."""
        if self.index is None:
            return {}
        st = self.index.label_stats()
        figures = {k: float(st[k] or 0) for k in (
            "model_version", "codes_indexed", "labelled", "labels_pending", "labels_matched",
            "labels_expired", "labels_pseudo", "labelled_pseudo", "training_queue",
            "model_updates", "swaps", "last_fit_at", "last_swap_at")}
        figures["classes"] = float(len(st["classes"]))
        figures["warm_start"] = float(st["warm_start"])
        return figures

    def model_info(self) -> dict[str, str]:
        """The hash model's name (answering searches, and the one learned), for an info gauge."""
        if self.index is None:
            return {}
        return {"model": str(self.index.model_name), "configured_model":
                self.index.configured_model}

    # ------------------------------------------------------------------ records
    def process(self, batch: list[Message]) -> list[Message]:
        assert self.index is not None, "setup() was not called"
        index = self.index
        # Validate everything first, so a bad record fails before anything is applied (the
        # runner then replays the batch one record at a time and dead-letters only the bad one).
        for msg in batch:
            if isinstance(msg, Features):
                index.validate_vectors(np.asarray(msg.vector).reshape(1, -1))
                if msg.label is not None and int(msg.label) < 0:
                    raise ValueError(f"label must be >= 0, got {msg.label}")
            elif isinstance(msg, Label):
                msg.check()
        run: list[Features] = []
        for msg in batch:
            if isinstance(msg, Features):
                if run and (msg.model_id or "") != (run[0].model_id or ""):
                    self._add_features(run)
                    run = []
                run.append(msg)
                continue
            if run:
                self._add_features(run)
                run = []
            self._apply_other(msg)
        if run:
            self._add_features(run)
        self._since_snapshot += len(batch)
        return []

    def _track_of(self, m: Features) -> int | None:
        tid = getattr(m, "track_id", None)
        if tid is None and self.params.feature_label == "track":  # type: ignore[attr-defined]
            tid = m.label
        return None if tid is None else int(tid)

    def _add_features(self, run: list[Features]) -> None:
        X = np.stack([np.asarray(m.vector, np.float32).reshape(-1) for m in run])
        tids = [self._track_of(m) for m in run]
        if all(t is None for t in tids):
            ids, labels, tracks = [m.frame_id for m in run], [m.label for m in run], None
        else:  # crops: one row per (frame, track); the label field held the track id
            ids = [m.frame_id if t is None else f"{m.frame_id}#t{t}" for m, t in zip(run, tids)]
            labels = [m.label if t is None else None for m, t in zip(run, tids)]
            tracks = [None if t is None else (m.stream_id, t) for m, t in zip(run, tids)]
        self.index.add(ids, X, labels=[None if lab is None else int(lab) for lab in labels],
                       stream_ids=[m.stream_id for m in run],
                       timestamps=[getattr(m, "timestamp_ms", None) or None for m in run],
                       model_id=run[0].model_id or "", tracks=tracks)
        for fid, m in zip(ids, run):  # the features stage's pseudo-labels (docs/hashing.md)
            if getattr(m, "pseudo_class", None):
                self.index.apply_label(frame_id=fid, class_name=m.pseudo_class, source="pseudo")

    def _apply_other(self, msg: Message) -> None:
        index = self.index
        ts = getattr(msg, "timestamp_ms", None)
        ts = int(ts) if ts else None  # 0 means "unknown" in records that default it
        if isinstance(msg, Label):
            if msg.track_id is not None:
                index.apply_label(track_id=msg.track_id, stream_id=msg.stream_id,
                                  label=msg.label, class_name=msg.class_name,
                                  source=msg.source)
            else:
                index.apply_label(frame_id=msg.frame_id, label=msg.label,
                                  class_name=msg.class_name, source=msg.source)
                index.set_meta(msg.frame_id, stream_id=msg.stream_id, timestamp_ms=ts)
        elif isinstance(msg, Caption):
            index.set_meta(msg.frame_id, stream_id=msg.stream_id, timestamp_ms=ts,
                           caption=msg.text)
        elif isinstance(msg, Tracks):
            index.set_meta(msg.frame_id, stream_id=msg.stream_id, timestamp_ms=ts,
                           tracks=_tracks_meta(msg))
        elif isinstance(msg, FrameSummary):
            index.set_meta(msg.frame_id, stream_id=msg.stream_id, timestamp_ms=ts)
        else:  # pragma: no cover - the runner only passes accepted kinds
            raise TypeError(f"the index stage does not take {msg.kind!r} records")
