"""The live binary index behind the hashing stage and the query service.

:class:`LiveIndex` keeps, per frame id: the float feature vector, an optional class label, the
packed hash code of the current hash model, and metadata joined from other topics (stream id,
capture time, caption, tracks). It learns the hash model online from labelled features (SDOH by
default, any :class:`~models.hashing.base.HashModel` by name) and serves exact Hamming top-k
search through FAISS.

Ids
    Every frame id gets a stable int64 id: its arrival rank (0, 1, 2, ...). The map is part of
    every snapshot, so an id never changes and can never collide. A frame id seen again is a
    redelivery and changes nothing (first write wins; a *different* vector for a known frame id
    is counted as a conflict and ignored), so at-least-once delivery never duplicates a result.

Search structure (one writer, lock-free readers)
    Everything a search needs is one immutable :class:`_View`: a FAISS ``IndexBinaryFlat`` that
    holds ids ``[0, n_main)`` and is never mutated once published, a packed-code array whose
    rows ``[n_main, n)`` are the small *tail* added since (searched with ``faiss.knn_hamming``),
    and the hash model that made those codes. A search reads ``self._view`` once and uses only
    that object, so every answer comes from a single model version. Writers hold one lock,
    write new rows past ``n`` (which no published view can see) and publish a new view; when
    the tail outgrows ``max(tail_min, n_main * tail_fraction)`` the writer builds a new flat
    index off to the side and publishes it. An old view stays valid for as long as a reader
    holds it (the arrays it references are never rewritten, only replaced).

Learning and re-encoding
    Labelled features (a label on the feature record, or a separate label record joined by
    frame id) queue up in arrival order; every ``train_chunk`` of them is one
    ``model.partial_fit(X, y)`` on a *copy* of the model. Then all stored features are
    re-encoded with the new model into a new code array and a new flat index, off to the side,
    while queries keep using the old view; rows added meanwhile are encoded with the old model
    for the old view and, under the lock just before the swap, with the new model for the new
    one; then the view reference is swapped. With ``background=True`` (the default) fitting and
    re-encoding run in a worker thread; ``background=False`` runs them inline (tests).

Before the first fit
    A supervised model has no hash functions until it has seen a labelled chunk. Until then the
    index encodes with a warm-start LSH model (sign random projections with the same ``n_bits``
    and ``seed``). Its thresholds come from the data: while fewer than ``warm_n`` (256)
    features exist, the projections are centred at the mean of all of them and the few stored
    rows are re-encoded at every add; at the ``warm_n``-th feature the centre is fixed to the
    mean of the first ``warm_n`` features (version 1 -> 2) and stays. The final choice depends
    only on the order of the features, not on how records were batched, so a restarted index
    makes the same choice. (Uncentred projections give backbone features, which are
    non-negative after ReLU, nearly identical codes.) The first model update re-encodes
    everything with the learned model and retires the warm start. Searches report which model
    made their codes (``model``, ``model_version``, ``warm_start``). If the configured model is
    ``lsh`` itself, it is its own warm start, centred the same way.

Snapshots
    :meth:`LiveIndex.snapshot` writes a folder ``snap-NNNNNNNN`` (built as a temp folder, fsynced,
    then renamed) and then atomically replaces the pointer file ``CURRENT``. Features are stored
    in append-only blocks of ``BLOCK`` rows; a full block that the previous snapshot of the same
    index already holds is hard-linked, not rewritten, so frequent snapshots of a large index
    cost little. A snapshot holds features, frame ids, labels, codes, metadata, the learning
    queue, the models and the caller's consumed offsets; :meth:`LiveIndex.load` restores all of
    it. A training update in flight is not in the snapshot (its chunk is still queued), so a
    restarted index redoes it and ends in the same state as one that never restarted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel

log = logging.getLogger("vistream.index")

#: Rows per feature block (the unit of storage and of snapshot reuse).
BLOCK = 16384
SNAPSHOT_FORMAT = 1
CURRENT = "CURRENT"


def _faiss():
    import faiss

    return faiss


_omp = threading.local()


def set_search_threads(n: int | None) -> None:
    """FAISS (OpenMP) threads for searches made by *this* thread. OpenMP keeps the setting per
    thread: a thread that never sets it uses one thread per core, and on a small shared machine
    several such teams spinning at once make a 0.1 ms search take tens of ms."""
    if n and getattr(_omp, "n", None) != n:
        _faiss().omp_set_num_threads(int(n))
        _omp.n = n


def hash_model_names() -> list[str]:
    _import_hash_models()
    return sorted(HashModel.registry)


def _import_hash_models() -> None:
    # Importing the modules registers their models in HashModel.registry.
    import vistream.models.hashing.baselines  # noqa: F401
    import vistream.models.hashing.sdoh  # noqa: F401


def make_hash_model(name: str, n_bits: int = 64, seed: int = 0, **params: Any) -> HashModel:
    """A fresh hash model from the registry (``sdoh``, ``lsh``, ...)."""
    _import_hash_models()
    cls = HashModel.registry.get(name)
    if cls is None:
        raise ValueError(f"unknown hash model {name!r}; known: {', '.join(sorted(HashModel.registry))}")
    return cls(n_bits=n_bits, seed=seed, **params)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FrameMeta:
    """Metadata joined to a frame id. Immutable: an update replaces the whole object."""

    stream_id: str | None = None
    timestamp_ms: int | None = None
    caption: str | None = None
    #: ``[{"track_id": int, "box": [x, y, w, h], "score": float}, ...]``
    tracks: tuple[dict[str, Any], ...] | None = None


@dataclass(slots=True)
class Hit:
    frame_id: str
    id: int
    distance: int
    stream_id: str | None = None
    timestamp_ms: int | None = None
    label: int | None = None
    caption: str | None = None
    tracks: tuple[dict[str, Any], ...] | None = None


@dataclass(slots=True)
class SearchResult:
    hits: list[Hit]
    model: str | None
    model_version: int
    warm_start: bool
    n_indexed: int


@dataclass(frozen=True)
class _View:
    """Everything one search needs; never mutated after it is published."""

    index: Any  # faiss.IndexBinaryFlat over ids [0, n_main), or None when n_main == 0
    n_main: int
    codes: np.ndarray  # (capacity, n_bits // 8) uint8; rows [0, n) are valid
    n: int
    model: HashModel | None
    warm_start: bool
    epoch: int  # increases by one per model swap

    @property
    def model_name(self) -> str | None:
        return None if self.model is None else self.model.name

    @property
    def model_version(self) -> int:
        return 0 if self.model is None else int(self.model.version)


@dataclass
class IndexStats:
    added: int = 0
    duplicates: int = 0
    conflicts: int = 0
    labels: int = 0
    model_updates: int = 0
    swaps: int = 0
    merges: int = 0
    train_errors: int = 0
    last_fit_s: float = 0.0
    last_reencode_s: float = 0.0
    last_error: str | None = None


def _grow(arr: np.ndarray, need: int, fill: Any = None) -> np.ndarray:
    """A copy of ``arr`` with room for at least ``need`` rows (doubling); ``arr`` if it fits."""
    if need <= arr.shape[0]:
        return arr
    cap = max(need, 2 * arr.shape[0], 1024)
    out = np.empty((cap,) + arr.shape[1:], arr.dtype)
    if fill is not None:
        out[arr.shape[0]:] = fill
    out[: arr.shape[0]] = arr
    return out


# --------------------------------------------------------------------------- the index


class LiveIndex:
    """See the module docstring. Thread model: any number of concurrent searches; the mutating
    methods (``add``, ``set_labels``, ``set_meta``, ``set_model``, ``snapshot``) serialise on one
    lock; model updates run in one background worker."""

    def __init__(self, model: HashModel | str = "sdoh", n_bits: int = 64, seed: int = 0,
                 model_params: dict[str, Any] | None = None, train_chunk: int = 2000,
                 background: bool = True, tail_min: int = 4096, tail_fraction: float = 1 / 128,
                 read_only: bool = False, search_threads: int | None = None,
                 warm_n: int = 256) -> None:
        if isinstance(model, str):
            model = make_hash_model(model, n_bits=n_bits, seed=seed, **(model_params or {}))
        if train_chunk < 2:
            raise ValueError("train_chunk must be at least 2")
        self.n_bits = model.n_bits
        self.code_size = self.n_bits // 8
        self.train_chunk = int(train_chunk)
        self.background = background
        self.tail_min = int(tail_min)
        self.warm_n = max(int(warm_n), 1)
        self._centre_pending = False
        self.tail_fraction = float(tail_fraction)
        self.read_only = read_only
        #: OpenMP threads each searching thread uses (None: leave FAISS's setting alone)
        self.search_threads = search_threads
        self.uid = uuid.uuid4().hex
        self.feature_model_id = ""
        self.stats = IndexStats()
        #: offsets restored by :meth:`load` (``{(topic, partition): next offset}``)
        self.loaded_offsets: dict[tuple[str, int], int] = {}

        self._lock = threading.RLock()
        self._update_lock = threading.Lock()  # one model update (fit + re-encode + swap) at a time
        self._snapshot_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())  # worker wake-ups and sync()
        self._primary = model
        self._warm: HashModel | None = None
        self._dim: int | None = None if model.W is None else int(model.W.shape[0])
        self._n = 0
        self._blocks: list[np.ndarray] = []
        self._labels = np.full(1024, -1, np.int64)
        self._frame_ids: list[str] = []
        self._ids: dict[str, int] = {}
        self._meta: dict[str, FrameMeta] = {}
        self._orphan_labels: dict[str, int] = {}
        self._pending: list[int] = []  # labelled ids not trained on yet, in arrival order
        self._updating = False
        self._worker: threading.Thread | None = None
        self._wake = False
        self._closed = False
        self._view = _View(None, 0, np.empty((0, self.code_size), np.uint8), 0,
                           model if model.W is not None else None, False, 0)
        self._last_snapshot_dir: Path | None = None

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self._view.n

    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def model(self) -> HashModel | None:
        """The model that made the codes searches use now."""
        return self._view.model

    @property
    def model_name(self) -> str | None:
        return self._view.model_name

    @property
    def model_version(self) -> int:
        return self._view.model_version

    @property
    def configured_model(self) -> str:
        """Name of the model the index learns (the warm start aside)."""
        return self._primary.name

    @property
    def warm_start(self) -> bool:
        return self._view.warm_start

    @property
    def updating(self) -> bool:
        return self._updating

    @property
    def pending_labels(self) -> int:
        return len(self._pending)

    def __contains__(self, frame_id: str) -> bool:
        i = self._ids.get(frame_id)
        return i is not None and i < self._view.n

    def frame_ids(self) -> list[str]:
        return self._frame_ids[: self._view.n]

    def meta(self, frame_id: str) -> FrameMeta | None:
        return self._meta.get(frame_id)

    def label(self, frame_id: str) -> int | None:
        i = self._ids.get(frame_id)
        if i is None:
            return self._orphan_labels.get(frame_id)
        lab = int(self._labels[i])
        return None if lab < 0 else lab

    def codes(self) -> np.ndarray:
        """A copy of the packed codes of all indexed frames, in id order."""
        v = self._view
        return v.codes[: v.n].copy()

    def features(self, ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored feature rows (all of them when ``ids`` is None), as a new array."""
        if ids is None:
            ids = np.arange(self._n)
        return self._gather(np.asarray(ids, np.int64))

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this index was loaded read-only")
        if self._closed:
            raise RuntimeError("this index is closed")

    def validate_vectors(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] == 0:
            raise ValueError(f"feature vectors must be a non-empty 2-D array, got shape {X.shape}")
        if self._dim is not None and X.shape[1] != self._dim:
            raise ValueError(f"feature vector has {X.shape[1]} dims; this index holds {self._dim}-d "
                             "features")
        if not np.isfinite(X).all():
            raise ValueError("feature vector contains NaN or infinity")
        return X

    def add(self, frame_ids: Sequence[str], vectors: np.ndarray,
            labels: Sequence[int | None] | None = None,
            stream_ids: Sequence[str | None] | None = None,
            timestamps: Sequence[int | None] | None = None,
            model_id: str = "") -> int:
        """Index new frames; returns how many were new (redeliveries are no-ops)."""
        self._check_writable()
        X = self.validate_vectors(vectors)
        if len(frame_ids) != X.shape[0]:
            raise ValueError(f"{len(frame_ids)} frame ids for {X.shape[0]} vectors")
        with self._lock:
            if model_id and self.feature_model_id and model_id != self.feature_model_id:
                raise ValueError(f"features come from model {model_id!r} but this index holds "
                                 f"features of {self.feature_model_id!r}; use a new index")
            new: list[int] = []
            seen: dict[str, int] = {}
            for i, fid in enumerate(frame_ids):
                j = self._ids.get(fid)
                if j is None and fid in seen:
                    j = -1 - seen[fid]  # duplicate within this batch
                if j is not None:
                    self.stats.duplicates += 1
                    if j >= 0 and not np.array_equal(self._row(j), X[i]):
                        self.stats.conflicts += 1
                        log.warning("frame %s arrived again with a different vector; kept the "
                                    "first", fid)
                    if j >= 0 and labels is not None and labels[i] is not None:
                        self._set_label(fid, int(labels[i]))  # a label may come late
                    continue
                seen[fid] = i
                new.append(i)
            if stream_ids is not None or timestamps is not None:
                for i, fid in enumerate(frame_ids):
                    self._merge_meta(fid, stream_id=None if stream_ids is None else stream_ids[i],
                                     timestamp_ms=None if timestamps is None else timestamps[i])
            if not new:
                return 0
            if model_id and not self.feature_model_id:
                self.feature_model_id = model_id
            Xn = X[new]
            if self._dim is None:
                self._dim = Xn.shape[1]
            view = self._view
            if view.model is None:
                view = self._start_model(Xn[:1])
            start = self._n
            self._append_features(Xn)
            self._labels = _grow(self._labels, start + len(new), fill=-1)
            for r, i in enumerate(new):
                fid = frame_ids[i]
                self._frame_ids.append(fid)
                self._ids[fid] = start + r
                lab = self._orphan_labels.pop(fid, None)  # the first label wins
                if lab is None and labels is not None:
                    lab = labels[i]
                if lab is not None:
                    self._labels[start + r] = int(lab)
                    self._pending.append(start + r)
                    self.stats.labels += 1
            if self._centre_pending:
                self._centre_initial_model(view)
            else:
                self._publish_append(view, view.model.encode(Xn))
            self.stats.added += len(new)
            trigger = self._should_train()
        if trigger:
            self._request_training()
        return len(new)

    def set_labels(self, frame_ids: Sequence[str], labels: Sequence[int]) -> None:
        """Labels arriving on their own (joined by frame id; the first label of a frame wins)."""
        self._check_writable()
        with self._lock:
            for fid, lab in zip(frame_ids, labels):
                self._set_label(fid, int(lab))
            trigger = self._should_train()
        if trigger:
            self._request_training()

    def _set_label(self, fid: str, lab: int) -> None:
        if lab < 0:
            raise ValueError(f"labels must be >= 0, got {lab}")
        i = self._ids.get(fid)
        if i is None:
            self._orphan_labels.setdefault(fid, lab)
            return
        if self._labels[i] >= 0:
            if self._labels[i] != lab:
                self.stats.conflicts += 1
            return
        self._labels[i] = lab
        self._pending.append(i)
        self.stats.labels += 1

    def set_meta(self, frame_id: str, **fields: Any) -> None:
        """Join metadata to a frame id (it may arrive before or after the features).
        ``stream_id`` and ``timestamp_ms`` keep their first value; ``caption`` and ``tracks``
        take the latest."""
        self._check_writable()
        with self._lock:
            self._merge_meta(frame_id, **fields)

    def _merge_meta(self, fid: str, stream_id: str | None = None, timestamp_ms: int | None = None,
                    caption: str | None = None, tracks: Iterable[dict[str, Any]] | None = None
                    ) -> None:
        old = self._meta.get(fid) or FrameMeta()
        new = dataclasses.replace(
            old,
            stream_id=old.stream_id if old.stream_id is not None else stream_id,
            timestamp_ms=old.timestamp_ms if old.timestamp_ms is not None else (
                None if timestamp_ms is None else int(timestamp_ms)),
            caption=caption if caption is not None else old.caption,
            tracks=tuple(tracks) if tracks is not None else old.tracks,
        )
        if new != old or fid not in self._meta:
            self._meta[fid] = new

    # ------------------------------------------------------------------ storage
    def _row(self, i: int) -> np.ndarray:
        return self._blocks[i // BLOCK][i % BLOCK]

    def _append_features(self, X: np.ndarray) -> None:
        pos = 0
        while pos < len(X):
            b, off = divmod(self._n, BLOCK)
            if b == len(self._blocks):
                self._blocks.append(np.empty((BLOCK, self._dim), np.float32))
            elif not self._blocks[b].flags.writeable:  # a read-only (mmap) block from a snapshot
                blk = np.empty((BLOCK, self._dim), np.float32)
                blk[:off] = self._blocks[b][:off]
                self._blocks[b] = blk
            take = min(BLOCK - off, len(X) - pos)
            self._blocks[b][off: off + take] = X[pos: pos + take]
            self._n += take
            pos += take

    def _gather(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self._dim or 0), np.float32)
        if len(ids) == 0:
            return out
        blocks, offs = np.divmod(ids, BLOCK)
        for b in np.unique(blocks):
            sel = blocks == b
            out[sel] = self._blocks[int(b)][offs[sel]]
        return out

    def _iter_blocks(self, n: int) -> Iterable[tuple[int, np.ndarray]]:
        for b in range((n + BLOCK - 1) // BLOCK):
            rows = min(BLOCK, n - b * BLOCK)
            yield b * BLOCK, self._blocks[b][:rows]

    def _start_model(self, first: np.ndarray) -> _View:
        """The model for the very first codes (see "Before the first fit")."""
        if self._primary.W is not None:
            model, warm = self._primary, False
        else:
            model = self._primary if self._primary.name == "lsh" else make_hash_model(
                "lsh", n_bits=self.n_bits, seed=self._primary.seed)
            model.partial_fit(first)  # draws W
            model.bias = None  # uncentred until warm_n features have arrived
            self._centre_pending = True
            warm = model is not self._primary
            if warm:
                self._warm = model
        v = self._view
        self._view = _View(v.index, v.n_main, v.codes, v.n, model, warm, v.epoch)
        return self._view

    def _centre_initial_model(self, view: _View) -> None:
        """Threshold the initial LSH at the mean of the first ``min(n, warm_n)`` features and
        re-encode every row (lock held; while fewer than ``warm_n`` features exist this runs at
        every add, over at most ``warm_n`` + one batch rows). The version moves to 2 when the
        thresholds are final (at ``warm_n`` features) and stays 1 before, so it does not depend
        on how the first records were batched."""
        n = self._n
        final = n >= self.warm_n
        model = copy.deepcopy(view.model)
        mean = self._gather(np.arange(min(n, self.warm_n))).mean(axis=0, dtype=np.float64)
        model.bias = -(mean @ model.W).astype(np.float32)
        if final:
            model.version += 1
            self._centre_pending = False
        codes = np.empty((max(n + n // 8, 1024), self.code_size), np.uint8)
        for start, rows in self._iter_blocks(n):
            codes[start: start + len(rows)] = model.encode(rows)
        if view.warm_start:
            self._warm = model
        else:
            self._primary = model
        self._view = _View(self._build_flat(codes, n), n, codes, n, model, view.warm_start,
                           view.epoch + 1)

    def _publish_append(self, view: _View, codes: np.ndarray) -> None:
        """Write ``codes`` past the view's end and publish the longer view (lock held)."""
        n = view.n + len(codes)
        arr = _grow(view.codes, n)
        arr[view.n: n] = codes
        index, n_main = view.index, view.n_main
        if n - n_main > max(self.tail_min, int(n_main * self.tail_fraction)):
            index, n_main = self._build_flat(arr, n), n
            self.stats.merges += 1
        self._view = _View(index, n_main, arr, n, view.model, view.warm_start, view.epoch)

    def _build_flat(self, codes: np.ndarray, n: int):
        index = _faiss().IndexBinaryFlat(self.n_bits)
        if n:
            index.add(np.ascontiguousarray(codes[:n]))
        return index

    def compact(self) -> None:
        """Merge the tail into the flat index now (searches then scan one FAISS index)."""
        with self._lock:
            v = self._view
            if v.n > v.n_main:
                self._view = _View(self._build_flat(v.codes, v.n), v.n, v.codes, v.n, v.model,
                                   v.warm_start, v.epoch)
                self.stats.merges += 1

    # ------------------------------------------------------------------ search (lock-free)
    def _knn(self, view: _View, q: np.ndarray, k: int) -> list[list[tuple[int, int]]]:
        """Top-k ``(distance, id)`` pairs per packed query row of ``q`` over one view, ordered
        by distance then id (FAISS orders ties arbitrarily; this makes answers canonical)."""
        if self.search_threads:
            set_search_threads(self.search_threads)
        q = np.ascontiguousarray(q, dtype=np.uint8)
        nq = q.shape[0]
        out: list[list[tuple[int, int]]] = [[] for _ in range(nq)]
        if view.n_main:
            D, nn = view.index.search(q, min(k, view.n_main))
            for r in range(nq):
                out[r].extend(zip(D[r].tolist(), nn[r].tolist()))
        n_tail = view.n - view.n_main
        if n_tail:
            D, nn = _faiss().knn_hamming(q, view.codes[view.n_main: view.n], min(k, n_tail))
            nn += view.n_main
            for r in range(nq):
                out[r].extend(zip(D[r].tolist(), nn[r].tolist()))
        for r in range(nq):
            pairs = out[r]
            if pairs and pairs[-1][1] < 0 or n_tail and view.n_main:
                pairs = [p for p in pairs if p[1] >= 0]
            pairs.sort()
            out[r] = pairs[:k]
        return out

    def _result(self, view: _View, pairs: list[tuple[int, int]]) -> SearchResult:
        hits = []
        labels, frame_ids, meta = self._labels, self._frame_ids, self._meta
        labs = labels[[i for _, i in pairs]].tolist() if pairs else []
        for (d, i), lab in zip(pairs, labs):
            fid = frame_ids[i]
            m = meta.get(fid)
            if lab < 0:
                lab = None
            if m is None:
                hits.append(Hit(fid, i, d, None, None, lab, None, None))
            else:
                hits.append(Hit(fid, i, d, m.stream_id, m.timestamp_ms, lab, m.caption, m.tracks))
        return SearchResult(hits, view.model_name, view.model_version, view.warm_start, view.n)

    def check_k(self, k: int) -> int:
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return k

    def search_codes(self, code: np.ndarray, k: int = 10) -> SearchResult:
        """Top-k by Hamming distance for one packed code (``n_bits // 8`` uint8)."""
        k = self.check_k(k)
        q = np.asarray(code)
        if q.dtype != np.uint8 or q.shape != (self.code_size,):
            raise ValueError(f"a code is {self.code_size} packed bytes (uint8), got "
                             f"{q.dtype} {q.shape}")
        view = self._view
        return self._result(view, self._knn(view, q.reshape(1, -1), k)[0])

    def search_codes_batch(self, codes: np.ndarray, k: int = 10) -> list[SearchResult]:
        k = self.check_k(k)
        view = self._view
        rows = self._knn(view, np.asarray(codes, np.uint8).reshape(-1, self.code_size), k)
        return [self._result(view, pairs) for pairs in rows]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> SearchResult:
        """Encode a feature vector with the current model, then search with it."""
        k = self.check_k(k)
        x = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        view = self._view  # the same view encodes and searches: one model version
        if view.model is None:
            if self._dim is not None and x.shape[1] != self._dim:
                raise ValueError(f"vector has {x.shape[1]} dims; the index holds {self._dim}-d features")
            return SearchResult([], None, 0, False, 0)
        if not np.isfinite(x).all():
            raise ValueError("vector contains NaN or infinity")
        if x.shape[1] != view.model.W.shape[0]:
            raise ValueError(f"vector has {x.shape[1]} dims; the index holds "
                             f"{view.model.W.shape[0]}-d features")
        return self._result(view, self._knn(view, view.model.encode(x), k)[0])

    def search_frame(self, frame_id: str, k: int = 10) -> SearchResult:
        """Neighbours of an indexed frame (the frame itself is the first hit, distance 0)."""
        k = self.check_k(k)
        view = self._view
        i = self._ids.get(frame_id)
        if i is None or i >= view.n:
            raise KeyError(frame_id)
        return self._result(view, self._knn(view, view.codes[i: i + 1], k)[0])

    # ------------------------------------------------------------------ learning
    def _should_train(self) -> bool:
        return (len(self._pending) >= self.train_chunk and not self._updating
                and not self.read_only and not self._closed)

    def _request_training(self) -> None:
        if not self.background:
            while self._train_once():
                pass
            return
        with self._cond:
            self._wake = True
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="index-trainer",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._wake and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._wake = False
            while not self._closed and self._train_once():
                pass
            with self._cond:
                self._cond.notify_all()

    def _train_once(self) -> bool:
        """Fit one chunk and swap; False when there is nothing (more) to do."""
        with self._update_lock:
            with self._lock:
                if len(self._pending) < self.train_chunk or self._closed:
                    return False
                ids = np.array(self._pending[: self.train_chunk], np.int64)
                X = self._gather(ids)
                y = self._labels[ids].copy()
                model = copy.deepcopy(self._primary)
                self._updating = True
            try:
                t0 = time.perf_counter()
                old_version = model.version
                model.partial_fit(X, y)
                self.stats.last_fit_s = time.perf_counter() - t0
                self.stats.model_updates += 1
                if model.version == old_version and not self._view.warm_start:
                    with self._lock:  # nothing changed (e.g. LSH): just consume the chunk
                        del self._pending[: len(ids)]
                        self._primary = model
                else:
                    self._reencode_and_swap(model, consumed=len(ids))
            except Exception as exc:
                log.exception("model update failed; dropping its chunk of %d labels", len(ids))
                with self._lock:
                    del self._pending[: len(ids)]
                self.stats.train_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._updating = False
                with self._cond:
                    self._cond.notify_all()
            return True

    def set_model(self, model: HashModel, wait: bool = True) -> threading.Thread | None:
        """Adopt an already fitted model: re-encode everything with it and swap. With
        ``wait=False`` this runs in a new thread, which is returned."""
        self._check_writable()
        if model.W is None:
            raise ValueError("the model has not been fitted")
        if model.n_bits != self.n_bits:
            raise ValueError(f"the model makes {model.n_bits}-bit codes, the index {self.n_bits}")
        if self._dim is not None and model.W.shape[0] != self._dim:
            raise ValueError(f"the model takes {model.W.shape[0]}-d features, the index holds "
                             f"{self._dim}-d")

        def run() -> None:
            with self._update_lock:
                with self._lock:
                    self._updating = True
                try:
                    self._reencode_and_swap(model, consumed=0)
                finally:
                    with self._lock:
                        self._updating = False
                    with self._cond:
                        self._cond.notify_all()

        if wait:
            run()
            return None
        t = threading.Thread(target=run, name="index-set-model", daemon=True)
        t.start()
        return t

    def _reencode_and_swap(self, model: HashModel, consumed: int) -> None:
        t0 = time.perf_counter()
        with self._lock:
            n0 = self._n
        codes = np.empty((max(n0 + n0 // 8, 1024), self.code_size), np.uint8)
        # The long part runs without the lock: rows < n0 never change.
        for start, rows in self._iter_blocks(n0):
            codes[start: start + len(rows)] = model.encode(rows)
        index = self._build_flat(codes, n0)
        with self._lock:
            n = self._n
            if n > n0:  # rows added during the re-encode: encode them with the new model too
                codes = _grow(codes, n)
                codes[n0:n] = model.encode(self._gather(np.arange(n0, n)))
            old = self._view
            self._view = _View(index, n0, codes, n, model, False, old.epoch + 1)
            self._primary = model
            self._warm = None
            self._centre_pending = False
            del self._pending[:consumed]
            self.stats.swaps += 1
            self.stats.last_reencode_s = time.perf_counter() - t0
        log.info("hash model %s v%d in use: %d codes re-encoded in %.2f s", model.name,
                 model.version, n, self.stats.last_reencode_s)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until no model update runs or is due. Returns False on timeout."""
        if not self.background:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            due = self._should_train()
        if due:
            self._request_training()
        with self._cond:
            while True:
                busy = self._updating or self._wake or (
                    len(self._pending) >= self.train_chunk and not self._closed
                    and not self.read_only and self._worker is not None
                    and self._worker.is_alive())
                if not busy:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, root: str | Path, offsets: dict[tuple[str, int], int] | None = None,
                 keep: int = 2) -> Path:
        """Write a consistent snapshot under ``root``; returns its folder."""
        with self._snapshot_lock:
            return self._snapshot(Path(root), offsets, keep)

    def _snapshot(self, root: Path, offsets: dict[tuple[str, int], int] | None, keep: int) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        with self._lock:
            view = self._view
            n = self._n
            full = n // BLOCK
            blocks = [self._blocks[b] for b in range(full)]
            if n % BLOCK:
                blocks.append(self._blocks[full][: n % BLOCK].copy())
            frame_ids = list(self._frame_ids)
            labels = self._labels[:n].copy()
            pending = np.array(self._pending, np.int64)
            meta = dict(self._meta)
            orphans = dict(self._orphan_labels)
            primary = self._primary
            warm = self._warm
            dim = self._dim
            manifest = {
                "format": SNAPSHOT_FORMAT, "uid": self.uid, "n": n, "dim": dim,
                "n_bits": self.n_bits, "block": BLOCK, "train_chunk": self.train_chunk,
                "model": view.model_name, "model_version": view.model_version,
                "warm_start": view.warm_start, "epoch": view.epoch, "warm_n": self.warm_n,
                "centre_pending": self._centre_pending,
                "feature_model_id": self.feature_model_id,
                "offsets": [[t, int(p), int(o)] for (t, p), o in sorted((offsets or {}).items())],
                "created_ms": int(time.time() * 1000),
                "stats": dataclasses.asdict(self.stats),
            }
        prev = self._previous_snapshot(root)
        seq = 1 + max([int(p.name[5:]) for p in root.glob("snap-*") if p.name[5:].isdigit()],
                      default=0)
        tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
        (tmp / "features").mkdir(parents=True)
        try:
            for b, arr in enumerate(blocks):
                rows = len(arr)
                fname, iname = f"features/{b:06d}-{rows}.npy", f"features/{b:06d}-{rows}.ids.json"
                if prev is not None and (prev / fname).exists() and (prev / iname).exists():
                    try:
                        os.link(prev / fname, tmp / fname)
                        os.link(prev / iname, tmp / iname)
                        continue
                    except OSError:
                        pass
                _save_npy(tmp / fname, arr)
                _write_bytes(tmp / iname,
                             json.dumps(frame_ids[b * BLOCK: b * BLOCK + rows]).encode())
            _save_npy(tmp / "labels.npy", labels)
            _save_npy(tmp / "pending.npy", pending)
            _save_npy(tmp / "codes.npy", view.codes[: view.n])
            _write_bytes(tmp / "meta.json", json.dumps(
                {"frames": {f: _meta_json(m) for f, m in meta.items()},
                 "orphan_labels": orphans}).encode())
            _save_model(tmp / "primary.npz", primary)
            if warm is not None:
                _save_model(tmp / "warm.npz", warm)
            if view.model is not None and view.model is not primary and view.model is not warm:
                _save_model(tmp / "active.npz", view.model)  # pragma: no cover - defensive
            manifest["active"] = ("primary" if view.model is primary else
                                  "warm" if view.model is warm and warm is not None else
                                  "active" if view.model is not None else None)
            _write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp / "features")
            _fsync_dir(tmp)
            final = root / f"snap-{seq:08d}"
            os.rename(tmp, final)
            _write_bytes(root / (CURRENT + ".tmp"), final.name.encode())
            os.replace(root / (CURRENT + ".tmp"), root / CURRENT)
            _fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._last_snapshot_dir = final
        snaps = sorted(p for p in root.glob("snap-*") if p.name[5:].isdigit())
        for old in snaps[: max(len(snaps) - max(keep, 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _previous_snapshot(self, root: Path) -> Path | None:
        cur = resolve_snapshot(root)
        if cur is None:
            return None
        try:
            uid = json.loads((cur / "manifest.json").read_text()).get("uid")
        except (OSError, ValueError):
            return None
        return cur if uid == self.uid else None

    @classmethod
    def load(cls, root: str | Path, background: bool = True, read_only: bool = False,
             train_chunk: int | None = None, mmap: bool = True,
             search_threads: int | None = None) -> LiveIndex:
        """Restore the snapshot ``root/CURRENT`` points at (or ``root`` itself if it is one).
        Full feature blocks are memory-mapped read-only when ``mmap``."""
        snap = resolve_snapshot(Path(root))
        if snap is None:
            raise FileNotFoundError(f"no snapshot in {root}")
        man = json.loads((snap / "manifest.json").read_text())
        if man.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{snap}: snapshot format {man.get('format')} is not supported")
        _import_hash_models()
        primary = HashModel.load(snap / "primary.npz")
        idx = cls(primary, train_chunk=train_chunk or man["train_chunk"], background=background,
                  read_only=read_only, search_threads=search_threads)
        idx.uid = man["uid"]
        idx.warm_n = int(man.get("warm_n", idx.warm_n))
        idx._centre_pending = bool(man.get("centre_pending", False))
        idx.feature_model_id = man.get("feature_model_id", "")
        n, dim = int(man["n"]), man["dim"]
        idx._dim = None if dim is None else int(dim)
        files = sorted((snap / "features").glob("*.npy"))
        frame_ids: list[str] = []
        for b, f in enumerate(files):
            bno, rows = (int(x) for x in f.name[:-4].split("-"))
            if bno != b:
                raise ValueError(f"{snap}: feature block {b} is missing")
            arr = np.load(f, mmap_mode="r" if (mmap and rows == BLOCK) else None)
            if rows < BLOCK:
                blk = np.empty((BLOCK, idx._dim), np.float32)
                blk[:rows] = arr
                arr = blk
            idx._blocks.append(arr)
            frame_ids += json.loads((snap / "features" / f"{b:06d}-{rows}.ids.json").read_text())
        if len(frame_ids) != n:
            raise ValueError(f"{snap}: {len(frame_ids)} frame ids for {n} rows")
        idx._n = n
        idx._frame_ids = frame_ids
        idx._ids = {f: i for i, f in enumerate(frame_ids)}
        idx._labels = _grow(np.load(snap / "labels.npy"), max(n, 1024), fill=-1)
        idx._pending = [int(i) for i in np.load(snap / "pending.npy")]
        meta = json.loads((snap / "meta.json").read_text())
        idx._meta = {f: _meta_from_json(m) for f, m in meta["frames"].items()}
        idx._orphan_labels = {f: int(v) for f, v in meta["orphan_labels"].items()}
        active = man.get("active")
        if (snap / "warm.npz").exists():
            idx._warm = HashModel.load(snap / "warm.npz")
        model = {"primary": idx._primary, "warm": idx._warm, None: None}.get(active)
        if active == "active":  # pragma: no cover - defensive
            model = HashModel.load(snap / "active.npz")
        codes = np.load(snap / "codes.npy")
        if codes.shape != (n, idx.code_size):
            raise ValueError(f"{snap}: codes have shape {codes.shape}, expected {(n, idx.code_size)}")
        codes = _grow(codes, max(n + n // 8, 1024))
        idx._view = _View(idx._build_flat(codes, n), n, codes, n, model,
                          bool(man["warm_start"]), int(man["epoch"]))
        idx.loaded_offsets = {(t, int(p)): int(o) for t, p, o in man["offsets"]}
        for k, v in man.get("stats", {}).items():
            if hasattr(idx.stats, k):
                setattr(idx.stats, k, v)
        idx._last_snapshot_dir = snap
        if idx._should_train():
            idx._request_training()
        return idx

    def info(self) -> dict[str, Any]:
        v = self._view
        return {"frames": v.n, "dim": self._dim, "n_bits": self.n_bits, "model": v.model_name,
                "model_version": v.model_version, "warm_start": v.warm_start, "epoch": v.epoch,
                "updating": self._updating, "pending_labels": len(self._pending),
                "train_chunk": self.train_chunk, "read_only": self.read_only,
                "feature_model_id": self.feature_model_id, "tail": v.n - v.n_main,
                **dataclasses.asdict(self.stats)}


# --------------------------------------------------------------------------- helpers


def resolve_snapshot(root: Path) -> Path | None:
    """The snapshot folder ``root`` designates: via ``CURRENT``, or ``root`` itself."""
    root = Path(root)
    cur = root / CURRENT
    if cur.is_file():
        snap = root / cur.read_text().strip()
        if (snap / "manifest.json").is_file():
            return snap
    if (root / "manifest.json").is_file():
        return root
    return None


def _meta_json(m: FrameMeta) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    if m.tracks is not None:
        d["tracks"] = list(m.tracks)
    return d


def _meta_from_json(d: dict[str, Any]) -> FrameMeta:
    tracks = d.get("tracks")
    return FrameMeta(d.get("stream_id"), d.get("timestamp_ms"), d.get("caption"),
                     None if tracks is None else tuple(tracks))


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _save_model(path: Path, model: HashModel) -> None:
    model.save(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
