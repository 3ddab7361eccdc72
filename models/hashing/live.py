"""The live binary index behind the hashing stage and the query service.

:class:`LiveIndex` keeps, per frame id: the float feature vector, an optional class label, the
packed hash code of the current hash model, and metadata joined from other topics (stream id,
capture time, caption, tracks). It learns the hash model online from labelled features (SDOH by
default, any :class:`~models.hashing.base.HashModel` by name) and serves exact Hamming top-k
search through FAISS.

It is a facade over three parts, one concern each:

* :mod:`models.hashing.store`: rows, ids, label and metadata joins, the FAISS views, search;
* :mod:`models.hashing.online`: the warm start, the threaded learner, re-encode and swap;
* :mod:`models.hashing.snapshot`: snapshots on disk and loading them;
* :mod:`models.hashing.labels`: class names, labels by track, labels waiting for a match.

The index knows nothing of where its input came from: a caller that must resume a stream
passes a *carry* to :meth:`LiveIndex.snapshot` and gets it back as :attr:`LiveIndex.loaded_carry`
after :meth:`LiveIndex.load`.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.labels import LabelOutcome, TrackKey
from vistream.models.hashing.online import OnlineLearner
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.snapshot import (
    SnapshotState,
    check_carry,
    read_snapshot,
    write_snapshot,
)
from vistream.models.hashing.store import (
    BLOCK,
    CodeStore,
    FrameMeta,
    SearchResult,
    View,
    code_capacity,
    grow,
)


class LiveIndex:
    """See the module docstring. Thread model: any number of concurrent searches; the mutating
    methods (``add``, ``set_labels``, ``set_meta``, ``set_model``, ``snapshot``) serialise on one
    lock; model updates run in one background worker."""

    def __init__(self, model: HashModel | str = "sdoh", n_bits: int = 64, seed: int = 0,
                 model_params: dict[str, Any] | None = None, train_chunk: int = 2000,
                 background: bool = True, tail_min: int = 4096, tail_fraction: float = 1 / 128,
                 read_only: bool = False, search_threads: int | None = None,
                 warm_n: int = 256, label_ttl_records: int | None = 100_000,
                 label_ttl_seconds: float | None = None) -> None:
        if isinstance(model, str):
            model = make_hash_model(model, n_bits=n_bits, seed=seed, **(model_params or {}))
        self.store = CodeStore(model.n_bits, None if model.W is None else int(model.W.shape[0]),
                               model if model.W is not None else None, tail_min=tail_min,
                               tail_fraction=tail_fraction, search_threads=search_threads)
        self.learner = OnlineLearner(self.store, model, train_chunk=train_chunk,
                                     background=background, warm_n=warm_n, read_only=read_only)
        self.set_label_ttl(label_ttl_records, label_ttl_seconds)
        self.n_bits = model.n_bits
        self.code_size = self.n_bits // 8
        self.read_only = read_only
        self.stats = self.store.stats
        self.uid = uuid.uuid4().hex
        #: the carry of the snapshot :meth:`load` restored (None: none given, or a fresh index)
        self.loaded_carry: dict[str, Any] | None = None
        self._snapshot_lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.store.view.n

    def __contains__(self, frame_id: str) -> bool:
        return frame_id in self.store

    @property
    def dim(self) -> int | None:
        return self.store.dim

    @property
    def model(self) -> HashModel | None:
        """The model that made the codes searches use now."""
        return self.store.view.model

    @property
    def model_name(self) -> str | None:
        return self.store.view.model_name

    @property
    def model_version(self) -> int:
        return self.store.view.model_version

    @property
    def configured_model(self) -> str:
        """Name of the model the index learns (the warm start aside)."""
        return self.learner.primary.name

    @property
    def warm_start(self) -> bool:
        return self.store.view.warm_start

    @property
    def updating(self) -> bool:
        return self.learner.updating

    @property
    def pending_labels(self) -> int:
        return len(self.learner.pending)

    @property
    def train_chunk(self) -> int:
        return self.learner.train_chunk

    @property
    def background(self) -> bool:
        return self.learner.background

    @property
    def warm_n(self) -> int:
        return self.learner.warm_n

    @property
    def feature_model_id(self) -> str:
        return self.store.feature_model_id

    @property
    def search_threads(self) -> int | None:
        """OpenMP threads each searching thread uses (None: leave FAISS's setting alone)."""
        return self.store.search_threads

    @search_threads.setter
    def search_threads(self, n: int | None) -> None:
        self.store.search_threads = n

    def frame_ids(self) -> list[str]:
        return self.store.frame_ids()

    def meta(self, frame_id: str) -> FrameMeta | None:
        return self.store.meta(frame_id)

    def label(self, frame_id: str) -> int | None:
        return self.store.label(frame_id)

    def codes(self) -> np.ndarray:
        """A copy of the packed codes of all indexed frames, in id order."""
        return self.store.codes()

    def features(self, ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored feature rows (all of them when ``ids`` is None), as a new array."""
        return self.store.features(ids)

    def class_names(self) -> dict[str, int]:
        """Class name -> the integer label the index learns from."""
        with self.store.lock:  # the book changes under the lock; a reader copies under it too
            return dict(self.store.book.classes)

    def class_name(self, label: int | None) -> str | None:
        with self.store.lock:
            return self.store.book.class_name(label)

    def label_stats(self) -> dict[str, Any]:
        """What ``GET /stats`` shows: the model answering searches and the one learned, codes
        indexed, labels (rows labelled; label records pending, matched, expired), class names,
        and when the model was last fitted and swapped (s since the epoch, None: never)."""
        with self.store.lock:  # a consistent set of figures, and no dict changing mid-read
            return self._label_stats()

    def _label_stats(self) -> dict[str, Any]:
        v, book, stats = self.store.view, self.store.book, self.stats
        return {"model": v.model_name, "model_version": v.model_version,
                "configured_model": self.learner.primary.name, "warm_start": v.warm_start,
                "n_bits": self.n_bits, "codes_indexed": v.n, "labelled": stats.labels,
                "labels_pending": book.pending, "labels_matched": book.matched,
                "labels_expired": book.expired, "training_queue": len(self.learner.pending),
                "labels_pseudo": book.pseudo_records, "labelled_pseudo": book.pseudo_rows,
                "classes": sorted(book.classes, key=book.classes.__getitem__),
                "model_updates": stats.model_updates, "swaps": stats.swaps,
                "last_fit_at": stats.last_fit_at, "last_swap_at": stats.last_swap_at,
                "updating": self.learner.updating}

    def info(self) -> dict[str, Any]:
        v, learner = self.store.view, self.learner
        return {"frames": v.n, "dim": self.store.dim, "n_bits": self.n_bits,
                "model": v.model_name, "model_version": v.model_version,
                "warm_start": v.warm_start, "epoch": v.epoch, "updating": learner.updating,
                "pending_labels": len(learner.pending), "train_chunk": learner.train_chunk,
                "read_only": self.read_only, "feature_model_id": self.store.feature_model_id,
                "tail": v.n - v.n_main, **dataclasses.asdict(self.stats)}

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this index was loaded read-only")
        if self.learner.closed:
            raise RuntimeError("this index is closed")

    def validate_vectors(self, X: np.ndarray) -> np.ndarray:
        return self.store.validate_vectors(X)

    def add(self, frame_ids: Sequence[str], vectors: np.ndarray,
            labels: Sequence[int | None] | None = None,
            stream_ids: Sequence[str | None] | None = None,
            timestamps: Sequence[int | None] | None = None,
            model_id: str = "", tracks: Sequence[TrackKey | None] | None = None) -> int:
        """Index new frames; returns how many were new (redeliveries are no-ops). ``tracks``
        gives the ``(stream_id, track_id)`` of rows that are crops of a track: they take the
        track's label, now or when it comes."""
        self._check_writable()
        store, learner = self.store, self.learner
        X = store.validate_vectors(vectors)
        if len(frame_ids) != X.shape[0]:
            raise ValueError(f"{len(frame_ids)} frame ids for {X.shape[0]} vectors")
        with store.lock:
            new, labelled = store.insert(frame_ids, X, labels, stream_ids, timestamps, model_id,
                                         tracks)
            learner.enqueue(labelled)
            store.book.expire(store.n)
            if new is None:
                return 0
            learner.encode_new(new)
            self.stats.added += len(new)
            trigger = learner.should_train()
        if trigger:
            learner.request_training()
        return len(new)

    def set_labels(self, frame_ids: Sequence[str], labels: Sequence[int]) -> None:
        """Labels arriving on their own (joined by frame id; the first label of a frame wins)."""
        self._check_writable()
        store, learner = self.store, self.learner
        with store.lock:
            for fid, lab in zip(frame_ids, labels):
                learner.enqueue(store.label_frame(fid, int(lab))[1])
            store.book.expire(store.n)
            trigger = learner.should_train()
        if trigger:
            learner.request_training()

    def set_label_ttl(self, records: int | None = 100_000, seconds: float | None = None) -> None:
        """How long a label for an unknown frame or track waits: ``records`` more indexed rows
        or ``seconds`` (None: no limit of that kind)."""
        self.store.book.ttl_records = None if records is None else int(records)
        self.store.book.ttl_seconds = None if seconds is None else float(seconds)

    def apply_label(self, *, frame_id: str | None = None, track_id: int | None = None,
                    stream_id: str | None = None, label: int | None = None,
                    class_name: str | None = None, now: float | None = None,
                    source: str = "user") -> LabelOutcome:
        """One label record: for ``frame_id``, or for every row of track ``track_id`` of
        ``stream_id`` (empty: any stream) now and later; the class as ``class_name`` (mapped
        to an integer id kept by the index) or ``label``. A label whose frame or track is not
        indexed yet waits for it (see :mod:`models.hashing.labels`); never an error for that.
        ValueError for a malformed label."""
        self._check_writable()
        if (frame_id is None) == (track_id is None):
            raise ValueError("a label names a frame_id or a track_id (exactly one)")
        if (label is None) == (class_name is None):
            raise ValueError("a label carries a class_name or an integer label (exactly one)")
        if class_name is not None and not class_name.strip():
            raise ValueError("class_name must not be empty")
        store, learner = self.store, self.learner
        with store.lock:
            lab = (int(label) if class_name is None
                   else store.book.class_id(class_name, store.max_label()))
            if frame_id is not None:
                status, rows = store.label_frame(frame_id, lab, now)
            else:
                status, rows = store.label_track((stream_id or "", int(track_id)), lab, now)
            learner.enqueue(rows)
            store.book.count_source(source, len(rows))  # pseudo-labels counted apart
            store.book.expire(store.n, now)
            trigger = learner.should_train()
            name = store.book.class_name(lab)
        if trigger:
            learner.request_training()
        return LabelOutcome(status, len(rows), lab, name)

    def set_meta(self, frame_id: str, **fields: Any) -> None:
        """Join metadata to a frame id (it may arrive before or after the features).
        ``stream_id`` and ``timestamp_ms`` keep their first value; ``caption`` and ``tracks``
        take the latest."""
        self._check_writable()
        with self.store.lock:
            self.store.merge_meta(frame_id, **fields)

    def set_model(self, model: HashModel, wait: bool = True) -> threading.Thread | None:
        """Adopt an already fitted model: re-encode everything with it and swap. With
        ``wait=False`` this runs in a new thread, which is returned."""
        self._check_writable()
        return self.learner.set_model(model, wait=wait)

    def compact(self) -> None:
        """Merge the tail into the flat index now (searches then scan one FAISS index)."""
        self.store.compact()

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until no model update runs or is due. Returns False on timeout."""
        return self.learner.sync(timeout)

    def close(self) -> None:
        self.learner.close()

    # ------------------------------------------------------------------ search (lock-free)
    def check_k(self, k: int) -> int:
        return self.store.check_k(k)

    def search_codes(self, code: np.ndarray, k: int = 10) -> SearchResult:
        """Top-k by Hamming distance for one packed code (``n_bits // 8`` uint8)."""
        return self.store.search_codes(code, k)

    def search_codes_batch(self, codes: np.ndarray, k: int = 10) -> list[SearchResult]:
        return self.store.search_codes_batch(codes, k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> SearchResult:
        """Encode a feature vector with the current model, then search with it."""
        return self.store.search_vector(vector, k)

    def search_frame(self, frame_id: str, k: int = 10) -> SearchResult:
        """Neighbours of an indexed frame (the frame itself is the first hit, distance 0)."""
        return self.store.search_frame(frame_id, k)

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, root: str | Path, carry: Mapping[str, Any] | None = None,
                 keep: int = 2) -> Path:
        """Write a consistent snapshot under ``root`` and return its folder.

        ``carry`` is what the caller (the runner) needs back after a restore, stored atomically
        with the state: any JSON-serialisable mapping, kept verbatim and handed back as
        :attr:`loaded_carry` by :meth:`load`. The ``keep`` newest snapshots stay on disk."""
        carry = check_carry(carry)
        with self._snapshot_lock:
            return write_snapshot(Path(root), self._capture(carry), keep)

    def _capture(self, carry: dict[str, Any] | None) -> SnapshotState:
        """The state a snapshot holds, taken under the lock (full blocks are shared, not copied:
        rows below ``n`` never change)."""
        store, learner = self.store, self.learner
        with store.lock:
            view, n = store.view, store.n
            full = n // BLOCK
            blocks = [store.blocks[b] for b in range(full)]
            if n % BLOCK:
                blocks.append(store.blocks[full][: n % BLOCK].copy())
            return SnapshotState(
                uid=self.uid, n_bits=self.n_bits, dim=store.dim,
                train_chunk=learner.train_chunk, warm_n=learner.warm_n,
                centre_pending=learner.centre_pending, feature_model_id=store.feature_model_id,
                blocks=blocks, frame_ids=list(store.frame_id_list), labels=store.labels[:n].copy(),
                pending=np.array(learner.pending, np.int64), meta=dict(store.meta_by_frame),
                orphan_labels=store.orphan_labels, label_book=store.book.to_json(),
                primary=learner.primary,
                warm=learner.warm, active=view.model, codes=view.codes[: view.n],
                warm_start=view.warm_start, epoch=view.epoch,
                stats=dataclasses.asdict(self.stats), carry=carry)

    @classmethod
    def load(cls, root: str | Path, background: bool = True, read_only: bool = False,
             train_chunk: int | None = None, mmap: bool = True,
             search_threads: int | None = None) -> LiveIndex:
        """Restore the snapshot ``root/CURRENT`` points at (or ``root`` itself if it is one).
        Full feature blocks are memory-mapped read-only when ``mmap``. What the snapshot's
        writer passed as ``carry`` is in :attr:`loaded_carry`."""
        _, s = read_snapshot(root, mmap=mmap)
        idx = cls(s.primary, train_chunk=train_chunk or s.train_chunk, background=background,
                  read_only=read_only, search_threads=search_threads)
        store, learner = idx.store, idx.learner
        idx.uid = s.uid
        learner.warm_n = s.warm_n
        learner.centre_pending = s.centre_pending
        learner.warm = s.warm
        learner.pending = [int(i) for i in s.pending]
        store.feature_model_id = s.feature_model_id
        store.dim = s.dim
        store.restore(s.blocks, s.frame_ids, s.labels, s.meta, s.orphan_labels, s.label_book)
        n = s.n
        codes = grow(s.codes, code_capacity(n))
        store.view = View(store.build_flat(codes, n), n, codes, n, s.active, s.warm_start,
                          s.epoch)
        idx.loaded_carry = s.carry
        for k, v in s.stats.items():
            if hasattr(idx.stats, k):
                setattr(idx.stats, k, v)
        if learner.should_train():
            learner.request_training()
        return idx
