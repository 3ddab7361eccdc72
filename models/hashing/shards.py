"""A live index split into shards (one per input partition) that share one hash model.

Why
    A consumer group spreads a topic's partitions over the replicas of a stage. For the index
    that means: each replica holds the codes of the partitions it is assigned, as one
    :class:`~vistream.models.hashing.live.LiveIndex` per partition (a *shard*), and a query asks
    every shard and merges their top-k. This module is the replica's half of that design; it
    knows nothing of Kafka: a shard is named by an opaque key (the caller uses
    ``"<topic>-<partition>"``) and its snapshot carries whatever the caller passes (the runner's
    position in that partition).

Shards move through their snapshots
    :meth:`ShardedIndex.open_shard` loads ``root/<key>`` (the shard's own snapshot folder) and
    returns the carry stored with it, so the caller replays the partition from exactly where the
    snapshot ends; :meth:`ShardedIndex.close_shard` snapshots a shard with its carry and drops
    it. A partition that moves from replica A to replica B therefore costs B one snapshot load
    plus the replay of the records A handled after its last snapshot: nothing is rebuilt from
    the start of the topic, nothing is lost (the replay starts at or before what A had applied)
    and nothing counts twice (the index is idempotent by frame id, and A has dropped the shard).

One hash model for all shards
    Codes of different shards are only comparable when one model made them. Shards never fit a
    model themselves (their learner's ``train_chunk`` is out of reach); the replica receives
    model versions from one learner (:meth:`ShardedIndex.set_model`: every shard re-encodes
    off to the side and swaps its view atomically; a shard opened later adopts the model when
    it opens). Until a first model arrives each shard encodes with its own warm start.
    Every answer lists, per shard, the model name and version its codes came from, and says
    whether they all agree (``consistent``).

Exact merge
    Each shard answers its top-k ordered by (distance, frame id), ties at the k-th distance
    resolved by frame id too (:func:`shard_topk` widens the FAISS search until the boundary
    tie is complete). The merged top-k of such answers (:func:`merge_topk`) is then exactly
    the top-k of one index holding every code, under the same order.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.snapshot import resolve_snapshot
from vistream.models.hashing.store import Hit, View

#: the training chunk of a shard: never reached, shards do not fit models themselves
NEVER_TRAIN = 2**62
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_key(key: str) -> str:
    """A shard key is also a folder name: letters, digits, ``._-``."""
    key = str(key)
    if not _KEY.match(key) or key in (".", ".."):
        raise ValueError(f"shard key {key!r} must be 1-200 characters of letters, digits, ._-")
    return key


# --------------------------------------------------------------------------- exact top-k


def hit_order(h: Hit) -> tuple[int, str]:
    """The order of every answer: distance, then frame id."""
    return (int(h.distance), h.frame_id)


def shard_topk(index: LiveIndex, view: View, q: np.ndarray, k: int) -> list[Hit]:
    """The k nearest rows of ``view`` to one packed code ``q`` in (distance, frame id) order:
    when rows tie at the k-th distance, the search widens until it holds all of them, so the
    cut by frame id is exact (FAISS breaks ties arbitrarily)."""
    store = index.store
    q = np.ascontiguousarray(np.asarray(q, np.uint8).reshape(1, -1))
    want = min(k, view.n)
    if want <= 0:
        return []
    pairs = store.knn(view, q, want)[0]
    while len(pairs) < view.n and pairs and pairs[-1][0] == pairs[want - 1][0]:
        pairs = store.knn(view, q, min(2 * len(pairs), view.n))[0]
    if len(pairs) > want:
        dk = pairs[want - 1][0]
        pairs = [p for p in pairs if p[0] <= dk]
    hits = store.result(view, pairs).hits
    hits.sort(key=hit_order)
    return hits[:k]


def merge_topk(answers: Iterable[Sequence[Hit]], k: int) -> list[Hit]:
    """The exact top-k of several shards' answers, each its shard's own top-k in
    :func:`hit_order`: all of them in that order, cut at k. A frame id seen in two answers
    (a partition briefly held twice during a rebalance) counts once, at its nearer distance."""
    best: dict[str, Hit] = {}
    for hits in answers:
        for h in hits:
            old = best.get(h.frame_id)
            if old is None or hit_order(h) < hit_order(old):
                best[h.frame_id] = h
    return sorted(best.values(), key=hit_order)[: max(int(k), 0)]


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class ShardInfo:
    """What one shard's part of an answer came from."""

    model: str | None
    model_version: int
    warm_start: bool
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_version": self.model_version,
                "warm_start": self.warm_start, "n": self.n}


@dataclass
class ShardedResult:
    hits: list[Hit]
    shards: dict[str, ShardInfo] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """True when one model (name and version) made the codes of every shard searched."""
        return len({(s.model, s.model_version) for s in self.shards.values() if s.n}) <= 1

    @property
    def n_indexed(self) -> int:
        return sum(s.n for s in self.shards.values())


def shard_info(view: View) -> ShardInfo:
    return ShardInfo(view.model_name, view.model_version, view.warm_start, view.n)


# --------------------------------------------------------------------------- the sharded index


class ShardedIndex:
    """The shards a replica holds (see the module docstring). Shard membership changes under
    ``lock`` and is published as a new dict, so searches read ``self.shards`` once, lock-free.

    ``root`` is the folder of the shards' snapshots (``root/<key>/``), shared by the replicas
    that may take over each other's partitions (None: memory only, a moved shard is rebuilt by
    replay). ``index_kw`` go to each shard's :class:`LiveIndex` (``model``, ``n_bits``,
    ``seed``, ``model_params``, ``background``, ...)."""

    def __init__(self, root: str | Path | None = None, keep: int = 2, **index_kw: Any) -> None:
        self.root = None if root is None else Path(root)
        self.keep = int(keep)
        index_kw.pop("train_chunk", None)
        self.index_kw = index_kw
        self.lock = threading.RLock()
        self.shards: dict[str, LiveIndex] = {}
        #: the shared hash model (None until the learner publishes one)
        self.model: HashModel | None = None

    # ------------------------------------------------------------------ membership
    def keys(self) -> list[str]:
        return sorted(self.shards)

    def shard(self, key: str) -> LiveIndex:
        try:
            return self.shards[key]
        except KeyError:
            raise KeyError(f"this replica holds no shard {key!r}") from None

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())

    def shard_dir(self, key: str) -> Path | None:
        return None if self.root is None else self.root / check_key(key)

    def open_shard(self, key: str) -> dict[str, Any] | None:
        """Take shard ``key``: from its snapshot when there is one (returns the carry stored
        with it), else empty (returns None). A shard already held stays as it is (None)."""
        key = check_key(key)
        with self.lock:
            if key in self.shards:
                return None
            folder = self.shard_dir(key)
            carry = None
            if folder is not None and resolve_snapshot(folder) is not None:
                shard = LiveIndex.load(folder, background=self.index_kw.get("background", True),
                                       train_chunk=NEVER_TRAIN,
                                       search_threads=self.index_kw.get("search_threads"))
                carry = shard.loaded_carry
            else:
                shard = LiveIndex(train_chunk=NEVER_TRAIN, **self.index_kw)
            model = self.model
            if model is not None and len(shard) and not same_model(shard.model, model):
                shard.set_model(model)
            if model is not None and not len(shard):
                shard.learner.primary = model  # its first rows are encoded with the shared one
                shard.store.view = View(None, 0, shard.store.view.codes, 0, model, False, 0)
            self.shards = {**self.shards, key: shard}
            return carry

    def snapshot_shard(self, key: str, carry: Mapping[str, Any] | None = None) -> Path | None:
        """Snapshot one shard with ``carry`` (None without a ``root``)."""
        folder = self.shard_dir(key)
        if folder is None:
            return None
        return self.shard(key).snapshot(folder, carry, keep=self.keep)

    def close_shard(self, key: str, carry: Mapping[str, Any] | None = None,
                    snapshot: bool = True) -> None:
        """Give shard ``key`` up: snapshot it with ``carry`` (unless ``snapshot`` is False),
        then drop it. A key not held is ignored."""
        with self.lock:
            shard = self.shards.get(key)
            if shard is None:
                return
            if snapshot:
                self.snapshot_shard(key, carry)
            self.shards = {k: v for k, v in self.shards.items() if k != key}
        shard.close()

    def close(self) -> None:
        with self.lock:
            shards, self.shards = self.shards, {}
        for s in shards.values():
            s.close()

    # ------------------------------------------------------------------ writes
    def add(self, key: str, frame_ids: Sequence[str], vectors: np.ndarray, **kw: Any) -> int:
        """Index rows of partition ``key`` (see :meth:`LiveIndex.add`)."""
        return self.shard(key).add(frame_ids, vectors, **kw)

    def set_model(self, model: HashModel) -> None:
        """Adopt a model version from the learner: every shard re-encodes and swaps (each
        atomically; a query meanwhile may meet shards on either version and says so). An older
        version than the one held is ignored."""
        if model.W is None:
            raise ValueError("the model has not been fitted")
        with self.lock:
            cur = self.model
            if cur is not None and cur.name == model.name and model.version <= cur.version:
                return
            self.model = model
            shards = dict(self.shards)
        for shard in shards.values():
            if len(shard):
                shard.set_model(model)
            else:
                with shard.store.lock:
                    v = shard.store.view
                    shard.learner.primary = model
                    shard.store.view = View(None, 0, v.codes, 0, model, False, v.epoch + 1)

    # ------------------------------------------------------------------ search (lock-free)
    def search_vector(self, vector: np.ndarray, k: int = 10) -> ShardedResult:
        """Each shard encodes ``vector`` with its own model and answers its exact top-k; the
        merged answer is the exact top-k over all shards."""
        k = _check_k(k)
        x = np.asarray(vector, np.float32).reshape(1, -1)
        if not np.isfinite(x).all():
            raise ValueError("vector contains NaN or infinity")
        answers, infos = [], {}
        for key, shard in sorted(self.shards.items()):
            view = shard.store.view
            infos[key] = shard_info(view)
            if view.model is None or not view.n:
                continue
            if x.shape[1] != view.model.W.shape[0]:
                raise ValueError(f"vector has {x.shape[1]} dims; the index holds "
                                 f"{view.model.W.shape[0]}-d features")
            answers.append(shard_topk(shard, view, view.model.encode(x)[0], k))
        return ShardedResult(merge_topk(answers, k), infos)

    def search_codes(self, code: np.ndarray, k: int = 10) -> ShardedResult:
        """Exact top-k over all shards for one packed code (meaningful when ``consistent``)."""
        k = _check_k(k)
        q = np.asarray(code)
        for shard in self.shards.values():
            size = shard.store.code_size
            if q.dtype != np.uint8 or q.shape != (size,):
                raise ValueError(f"a code is {size} packed bytes (uint8), got {q.dtype} "
                                 f"{q.shape}")
        answers, infos = [], {}
        for key, shard in sorted(self.shards.items()):
            view = shard.store.view
            infos[key] = shard_info(view)
            if view.n:
                answers.append(shard_topk(shard, view, code, k))
        return ShardedResult(merge_topk(answers, k), infos)

    @property
    def dim(self) -> int | None:
        """The feature dimension of the shards that hold rows (None: none yet)."""
        return next((s.dim for s in self.shards.values() if s.dim is not None), None)

    def frame_vector(self, frame_id: str) -> np.ndarray | None:
        """The feature vector of ``frame_id`` from whichever shard holds it (None: none)."""
        for shard in self.shards.values():
            store = shard.store
            with store.lock:
                i = store.ids.get(frame_id)
                if i is not None and i < store.n:
                    return np.asarray(store.features([i])[0], np.float32).copy()
        return None

    def frame_ids(self) -> dict[str, list[str]]:
        """The frame ids each shard holds."""
        return {key: s.frame_ids() for key, s in sorted(self.shards.items())}


def _check_k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def same_model(a: HashModel | None, b: HashModel | None) -> bool:
    return (a is not None and b is not None and a.name == b.name
            and int(a.version) == int(b.version))
