"""The code store of the live index: feature rows, ids, labels, metadata joins and the FAISS views
that exact Hamming k-NN search runs on.

Ids
    Every frame id gets a stable int64 id: its arrival rank (0, 1, 2, ...). The map is part of
    every snapshot, so an id never changes and can never collide. A frame id seen again is a
    redelivery and changes nothing (first write wins; a *different* vector for a known frame id
    is counted as a conflict and ignored), so at-least-once delivery never duplicates a result.

Search structure (one writer, lock-free readers)
    Everything a search needs is one immutable :class:`View`: a FAISS ``IndexBinaryFlat`` that
    holds ids ``[0, n_main)`` and is never mutated once published, a packed-code array whose
    rows ``[n_main, n)`` are the small *tail* added since (searched with ``faiss.knn_hamming``),
    and the hash model that made those codes. A search reads ``store.view`` once and uses only
    that object, so every answer comes from a single model version. Writers hold ``store.lock``,
    write new rows past ``n`` (which no published view can see) and publish a new view; when
    the tail outgrows ``max(tail_min, n_main * tail_fraction)`` the writer builds a new flat
    index off to the side and publishes it. An old view stays valid for as long as a reader
    holds it (the arrays it references are never rewritten, only replaced).

Which model encodes new rows, and when the codes are replaced wholesale, is the online
learner's business (:mod:`models.hashing.online`); the store only holds what it is given.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.labels import LabelBook, TrackKey

log = logging.getLogger("vistream.index")

#: Rows per feature block (the unit of storage and of snapshot reuse).
BLOCK = 16384


def faiss():
    """The faiss module, imported on first use: it is a heavy optional dependency of the
    hashing package (the offline evaluation does not need it)."""
    import faiss as _faiss

    return _faiss


_omp = threading.local()


def set_search_threads(n: int | None) -> None:
    """FAISS (OpenMP) threads for searches made by *this* thread. OpenMP keeps the setting per
    thread: a thread that never sets it uses one thread per core, and on a small shared machine
    several such teams spinning at once make a 0.1 ms search take tens of ms."""
    if n and getattr(_omp, "n", None) != n:
        faiss().omp_set_num_threads(int(n))
        _omp.n = n


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
class View:
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
    #: wall clock (s since the epoch) of the last model fit and of the last model swap
    last_fit_at: float | None = None
    last_swap_at: float | None = None


def grow(arr: np.ndarray, need: int, fill: Any = None) -> np.ndarray:
    """A copy of ``arr`` with room for at least ``need`` rows (doubling); ``arr`` if it fits."""
    if need <= arr.shape[0]:
        return arr
    cap = max(need, 2 * arr.shape[0], 1024)
    out = np.empty((cap,) + arr.shape[1:], arr.dtype)
    if fill is not None:
        out[arr.shape[0]:] = fill
    out[: arr.shape[0]] = arr
    return out


def code_capacity(n: int) -> int:
    """Rows to allocate for ``n`` codes, leaving room to append before the next copy."""
    return max(n + n // 8, 1024)


def meta_to_json(m: FrameMeta) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    if m.tracks is not None:
        d["tracks"] = list(m.tracks)
    return d


def meta_from_json(d: dict[str, Any]) -> FrameMeta:
    tracks = d.get("tracks")
    return FrameMeta(d.get("stream_id"), d.get("timestamp_ms"), d.get("caption"),
                     None if tracks is None else tuple(tracks))


# --------------------------------------------------------------------------- the store


class CodeStore:
    """Rows, joins and views (see the module docstring). Attributes other than ``view`` are
    written only under ``lock``; searches read ``view`` once and need no lock."""

    def __init__(self, n_bits: int, dim: int | None = None, model: HashModel | None = None,
                 tail_min: int = 4096, tail_fraction: float = 1 / 128,
                 search_threads: int | None = None, stats: IndexStats | None = None) -> None:
        self.n_bits = n_bits
        self.code_size = n_bits // 8
        self.tail_min = int(tail_min)
        self.tail_fraction = float(tail_fraction)
        #: OpenMP threads each searching thread uses (None: leave FAISS's setting alone)
        self.search_threads = search_threads
        self.stats = stats if stats is not None else IndexStats()
        self.feature_model_id = ""
        self.lock = threading.RLock()
        self.dim = dim
        self.n = 0
        self.blocks: list[np.ndarray] = []
        self.labels = np.full(1024, -1, np.int64)
        self.frame_id_list: list[str] = []
        self.ids: dict[str, int] = {}
        self.meta_by_frame: dict[str, FrameMeta] = {}
        #: class names, labels by track and labels waiting for their frame or track
        self.book = LabelBook()
        self.view = View(None, 0, np.empty((0, self.code_size), np.uint8), 0, model, False, 0)

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return self.view.n

    def __contains__(self, frame_id: str) -> bool:
        i = self.ids.get(frame_id)
        return i is not None and i < self.view.n

    def frame_ids(self) -> list[str]:
        return self.frame_id_list[: self.view.n]

    def meta(self, frame_id: str) -> FrameMeta | None:
        return self.meta_by_frame.get(frame_id)

    @property
    def orphan_labels(self) -> dict[str, int]:
        """Labels waiting for their frame id, by frame id."""
        return {f: p.label for f, p in self.book.pending_frames.items()}

    def label(self, frame_id: str) -> int | None:
        i = self.ids.get(frame_id)
        if i is None:
            p = self.book.pending_frames.get(frame_id)
            return None if p is None else p.label
        lab = int(self.labels[i])
        return None if lab < 0 else lab

    def codes(self) -> np.ndarray:
        """A copy of the packed codes of all indexed frames, in id order."""
        v = self.view
        return v.codes[: v.n].copy()

    def features(self, ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored feature rows (all of them when ``ids`` is None), as a new array."""
        if ids is None:
            ids = np.arange(self.n)
        return self.gather(np.asarray(ids, np.int64))

    def validate_vectors(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] == 0:
            raise ValueError(f"feature vectors must be a non-empty 2-D array, got shape {X.shape}")
        if self.dim is not None and X.shape[1] != self.dim:
            raise ValueError(f"feature vector has {X.shape[1]} dims; this index holds {self.dim}-d "
                             "features")
        if not np.isfinite(X).all():
            raise ValueError("feature vector contains NaN or infinity")
        return X

    # ------------------------------------------------------------------ writes (lock held)
    def insert(self, frame_ids: Sequence[str], X: np.ndarray,
               labels: Sequence[int | None] | None = None,
               stream_ids: Sequence[str | None] | None = None,
               timestamps: Sequence[int | None] | None = None,
               model_id: str = "", tracks: Sequence[TrackKey | None] | None = None
               ) -> tuple[np.ndarray | None, list[int]]:
        """Store the rows of ``X`` whose frame ids are new (not yet encoded: the caller encodes
        and publishes them). Returns those rows (None if none was new) and the ids that got
        their first label, in the order they got it. ``tracks`` names the track of each row
        (a crop), whose label it then takes. Caller holds ``lock``."""
        if model_id and self.feature_model_id and model_id != self.feature_model_id:
            raise ValueError(f"features come from model {model_id!r} but this index holds "
                             f"features of {self.feature_model_id!r}; use a new index")
        new: list[int] = []
        seen: dict[str, int] = {}
        labelled: list[int] = []
        for i, fid in enumerate(frame_ids):
            j = self.ids.get(fid)
            if j is None and fid in seen:
                j = -1 - seen[fid]  # duplicate within this batch
            if j is not None:
                self.stats.duplicates += 1
                if j >= 0 and not np.array_equal(self.row(j), X[i]):
                    self.stats.conflicts += 1
                    log.warning("frame %s arrived again with a different vector; kept the "
                                "first", fid)
                if j >= 0 and labels is not None and labels[i] is not None:
                    row = self.set_label(fid, int(labels[i]))  # a label may come late
                    if row is not None:
                        labelled.append(row)
                continue
            seen[fid] = i
            new.append(i)
        if stream_ids is not None or timestamps is not None:
            for i, fid in enumerate(frame_ids):
                self.merge_meta(fid, stream_id=None if stream_ids is None else stream_ids[i],
                                timestamp_ms=None if timestamps is None else timestamps[i])
        if not new:
            return None, labelled
        if model_id and not self.feature_model_id:
            self.feature_model_id = model_id
        Xn = X[new]
        if self.dim is None:
            self.dim = Xn.shape[1]
        start = self.n
        self.append_features(Xn)
        self.labels = grow(self.labels, start + len(new), fill=-1)
        for r, i in enumerate(new):
            fid = frame_ids[i]
            self.frame_id_list.append(fid)
            self.ids[fid] = start + r
            lab = self.book.take_frame(fid)  # the first label wins
            if lab is None and labels is not None:
                lab = labels[i]
            key = None if tracks is None else tracks[i]
            if key is not None:
                track_lab = self.book.add_row((str(key[0]), int(key[1])), start + r)
                lab = track_lab if lab is None else lab
            if lab is not None:
                self.labels[start + r] = int(lab)
                labelled.append(start + r)
                self.stats.labels += 1
        return Xn, labelled

    def set_label(self, fid: str, lab: int, now: float | None = None) -> int | None:
        """Join a label to a frame id; returns the id it newly labelled (None for an orphan
        kept for later, or when the frame already has one: the first label wins)."""
        if lab < 0:
            raise ValueError(f"labels must be >= 0, got {lab}")
        i = self.ids.get(fid)
        if i is None:
            self.book.hold_frame(fid, lab, self.n, now)
            return None
        if self.labels[i] >= 0:
            if self.labels[i] != lab:
                self.stats.conflicts += 1
            return None
        self.labels[i] = lab
        self.stats.labels += 1
        return i

    def label_frame(self, fid: str, lab: int, now: float | None = None) -> tuple[str, list[int]]:
        """A label record for a frame id: ``("applied", [row])``, ``("pending", [])`` (kept
        until the frame arrives) or ``("unchanged", [])`` (the frame has a label already)."""
        if fid not in self.ids:
            self.set_label(fid, lab, now)
            return "pending", []
        row = self.set_label(fid, lab, now)
        if row is None:
            return "unchanged", []
        self.book.matched += 1
        return "applied", [row]

    def label_track(self, key: TrackKey, lab: int, now: float | None = None
                    ) -> tuple[str, list[int]]:
        """A label record for a track: every row of it not labelled yet takes ``lab``, and so
        will its later rows. Returns the status and the rows newly labelled."""
        if lab < 0:
            raise ValueError(f"labels must be >= 0, got {lab}")
        status, rows = self.book.label_track(key, lab, self.n, now)
        fresh = [r for r in rows if self.labels[r] < 0]
        for r in fresh:
            self.labels[r] = lab
        self.stats.labels += len(fresh)
        return status, fresh

    def max_label(self) -> int:
        """The largest integer label any row holds (-1 when none)."""
        return int(self.labels[: self.n].max()) if self.n else -1

    def merge_meta(self, fid: str, stream_id: str | None = None, timestamp_ms: int | None = None,
                   caption: str | None = None, tracks: Iterable[dict[str, Any]] | None = None
                   ) -> None:
        """``stream_id`` and ``timestamp_ms`` keep their first value; ``caption`` and ``tracks``
        take the latest."""
        old = self.meta_by_frame.get(fid) or FrameMeta()
        new = dataclasses.replace(
            old,
            stream_id=old.stream_id if old.stream_id is not None else stream_id,
            timestamp_ms=old.timestamp_ms if old.timestamp_ms is not None else (
                None if timestamp_ms is None else int(timestamp_ms)),
            caption=caption if caption is not None else old.caption,
            tracks=tuple(tracks) if tracks is not None else old.tracks,
        )
        if new != old or fid not in self.meta_by_frame:
            self.meta_by_frame[fid] = new

    # ------------------------------------------------------------------ feature blocks
    def row(self, i: int) -> np.ndarray:
        return self.blocks[i // BLOCK][i % BLOCK]

    def append_features(self, X: np.ndarray) -> None:
        pos = 0
        while pos < len(X):
            b, off = divmod(self.n, BLOCK)
            if b == len(self.blocks):
                self.blocks.append(np.empty((BLOCK, self.dim), np.float32))
            elif not self.blocks[b].flags.writeable:  # a read-only (mmap) block from a snapshot
                blk = np.empty((BLOCK, self.dim), np.float32)
                blk[:off] = self.blocks[b][:off]
                self.blocks[b] = blk
            take = min(BLOCK - off, len(X) - pos)
            self.blocks[b][off: off + take] = X[pos: pos + take]
            self.n += take
            pos += take

    def gather(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim or 0), np.float32)
        if len(ids) == 0:
            return out
        blocks, offs = np.divmod(ids, BLOCK)
        for b in np.unique(blocks):
            sel = blocks == b
            out[sel] = self.blocks[int(b)][offs[sel]]
        return out

    def iter_blocks(self, n: int) -> Iterable[tuple[int, np.ndarray]]:
        for b in range((n + BLOCK - 1) // BLOCK):
            rows = min(BLOCK, n - b * BLOCK)
            yield b * BLOCK, self.blocks[b][:rows]

    def encode_all(self, model: HashModel, n: int) -> np.ndarray:
        """Codes of rows ``[0, n)`` under ``model``, in a new array with room to grow. Rows below
        ``n`` never change, so this may run without the lock."""
        codes = np.empty((code_capacity(n), self.code_size), np.uint8)
        for start, rows in self.iter_blocks(n):
            codes[start: start + len(rows)] = model.encode(rows)
        return codes

    def restore(self, blocks: list[np.ndarray], frame_ids: list[str], labels: np.ndarray,
                meta: dict[str, FrameMeta], orphan_labels: dict[str, int],
                book: dict[str, Any] | None = None) -> None:
        """Take rows and joins read from a snapshot (before anything else touches the store).
        A partial last block gets a writable full-size buffer; full blocks are kept as given
        (possibly read-only memory maps, copied on the first write)."""
        self.blocks = []
        for arr in blocks:
            if len(arr) < BLOCK:
                blk = np.empty((BLOCK, self.dim), np.float32)
                blk[: len(arr)] = arr
                arr = blk
            self.blocks.append(arr)
        n = len(frame_ids)
        self.n = n
        self.frame_id_list = frame_ids
        self.ids = {f: i for i, f in enumerate(frame_ids)}
        self.labels = grow(labels, max(n, 1024), fill=-1)
        self.meta_by_frame = meta
        if book is not None:
            self.book = LabelBook.from_json(book)
        else:  # a snapshot from before the label book: its orphans start their TTL now
            for fid, lab in orphan_labels.items():
                self.book.hold_frame(fid, int(lab), n)

    # ------------------------------------------------------------------ views
    def build_flat(self, codes: np.ndarray, n: int):
        index = faiss().IndexBinaryFlat(self.n_bits)
        if n:
            index.add(np.ascontiguousarray(codes[:n]))
        return index

    def publish_append(self, view: View, codes: np.ndarray) -> None:
        """Write ``codes`` past the view's end and publish the longer view (lock held)."""
        n = view.n + len(codes)
        arr = grow(view.codes, n)
        arr[view.n: n] = codes
        index, n_main = view.index, view.n_main
        if n - n_main > max(self.tail_min, int(n_main * self.tail_fraction)):
            index, n_main = self.build_flat(arr, n), n
            self.stats.merges += 1
        self.view = View(index, n_main, arr, n, view.model, view.warm_start, view.epoch)

    def compact(self) -> None:
        """Merge the tail into the flat index now (searches then scan one FAISS index)."""
        with self.lock:
            v = self.view
            if v.n > v.n_main:
                self.view = View(self.build_flat(v.codes, v.n), v.n, v.codes, v.n, v.model,
                                 v.warm_start, v.epoch)
                self.stats.merges += 1

    # ------------------------------------------------------------------ search (lock-free)
    def knn(self, view: View, q: np.ndarray, k: int) -> list[list[tuple[int, int]]]:
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
            D, nn = faiss().knn_hamming(q, view.codes[view.n_main: view.n], min(k, n_tail))
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

    def result(self, view: View, pairs: list[tuple[int, int]]) -> SearchResult:
        hits = []
        labels, frame_ids, meta = self.labels, self.frame_id_list, self.meta_by_frame
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

    @staticmethod
    def check_k(k: int) -> int:
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
        view = self.view
        return self.result(view, self.knn(view, q.reshape(1, -1), k)[0])

    def search_codes_batch(self, codes: np.ndarray, k: int = 10) -> list[SearchResult]:
        k = self.check_k(k)
        view = self.view
        rows = self.knn(view, np.asarray(codes, np.uint8).reshape(-1, self.code_size), k)
        return [self.result(view, pairs) for pairs in rows]

    def search_vector(self, vector: np.ndarray, k: int = 10) -> SearchResult:
        """Encode a feature vector with the current model, then search with it."""
        k = self.check_k(k)
        x = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        view = self.view  # the same view encodes and searches: one model version
        if view.model is None:
            if self.dim is not None and x.shape[1] != self.dim:
                raise ValueError(f"vector has {x.shape[1]} dims; the index holds {self.dim}-d "
                                 "features")
            return SearchResult([], None, 0, False, 0)
        if not np.isfinite(x).all():
            raise ValueError("vector contains NaN or infinity")
        if x.shape[1] != view.model.W.shape[0]:
            raise ValueError(f"vector has {x.shape[1]} dims; the index holds "
                             f"{view.model.W.shape[0]}-d features")
        return self.result(view, self.knn(view, view.model.encode(x), k)[0])

    def search_frame(self, frame_id: str, k: int = 10) -> SearchResult:
        """Neighbours of an indexed frame (the frame itself is the first hit, distance 0)."""
        k = self.check_k(k)
        view = self.view
        i = self.ids.get(frame_id)
        if i is None or i >= view.n:
            raise KeyError(frame_id)
        return self.result(view, self.knn(view, view.codes[i: i + 1], k)[0])
