"""The online learner of the live index: fits the hash model on chunks of labelled features,
re-encodes every stored row off to the side and swaps the store's view atomically.

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

Times
    ``stats.last_fit_at`` and ``stats.last_swap_at`` record the wall clock (s since the epoch)
    when the last fit ended and when the last re-encoded view was swapped in (``GET /stats``).

A training update in flight is never half-applied: its chunk stays queued until the swap, so a
snapshot taken meanwhile still holds it and a restored index redoes it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.store import CodeStore, View, grow

log = logging.getLogger("vistream.index")


class OnlineLearner:
    """Owns the models and the queue of labelled ids not trained on yet; writes the store only
    under ``store.lock``. At most one model update (fit + re-encode + swap) runs at a time."""

    def __init__(self, store: CodeStore, model: HashModel, train_chunk: int = 2000,
                 background: bool = True, warm_n: int = 256, read_only: bool = False) -> None:
        if train_chunk < 2:
            raise ValueError("train_chunk must be at least 2")
        self.store = store
        self.primary = model
        self.warm: HashModel | None = None
        self.train_chunk = int(train_chunk)
        self.background = background
        self.warm_n = max(int(warm_n), 1)
        self.centre_pending = False
        self.read_only = read_only
        self.pending: list[int] = []  # labelled ids not trained on yet, in arrival order
        self.updating = False
        self.closed = False
        self._update_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())  # worker wake-ups and sync()
        self._worker: threading.Thread | None = None
        self._wake = False

    # ------------------------------------------------------------------ new rows (lock held)
    def encode_new(self, X: np.ndarray) -> None:
        """Encode rows the store has just appended and publish them (``store.lock`` held)."""
        store = self.store
        view = store.view
        if view.model is None:
            view = self.start_model(X[:1])
        if self.centre_pending:
            self.centre_initial_model(view)
        else:
            store.publish_append(view, view.model.encode(X))

    def start_model(self, first: np.ndarray) -> View:
        """The model for the very first codes (see "Before the first fit")."""
        if self.primary.W is not None:
            model, warm = self.primary, False
        else:
            model = self.primary if self.primary.name == "lsh" else make_hash_model(
                "lsh", n_bits=self.store.n_bits, seed=self.primary.seed)
            model.partial_fit(first)  # draws W
            model.bias = None  # uncentred until warm_n features have arrived
            self.centre_pending = True
            warm = model is not self.primary
            if warm:
                self.warm = model
        v = self.store.view
        self.store.view = View(v.index, v.n_main, v.codes, v.n, model, warm, v.epoch)
        return self.store.view

    def centre_initial_model(self, view: View) -> None:
        """Threshold the initial LSH at the mean of the first ``min(n, warm_n)`` features and
        re-encode every row (lock held; while fewer than ``warm_n`` features exist this runs at
        every add, over at most ``warm_n`` + one batch rows). The version moves to 2 when the
        thresholds are final (at ``warm_n`` features) and stays 1 before, so it does not depend
        on how the first records were batched."""
        store = self.store
        n = store.n
        final = n >= self.warm_n
        model = copy.deepcopy(view.model)
        mean = store.gather(np.arange(min(n, self.warm_n))).mean(axis=0, dtype=np.float64)
        model.bias = -(mean @ model.W).astype(np.float32)
        if final:
            model.version += 1
            self.centre_pending = False
        codes = store.encode_all(model, n)
        if view.warm_start:
            self.warm = model
        else:
            self.primary = model
        store.view = View(store.build_flat(codes, n), n, codes, n, model, view.warm_start,
                          view.epoch + 1)

    # ------------------------------------------------------------------ the training queue
    def enqueue(self, ids: list[int]) -> None:
        """Ids that just got their first label (``store.lock`` held)."""
        self.pending.extend(ids)

    def should_train(self) -> bool:
        return (len(self.pending) >= self.train_chunk and not self.updating
                and not self.read_only and not self.closed)

    def request_training(self) -> None:
        if not self.background:
            while self.train_once():
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
                while not self._wake and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return
                self._wake = False
            while not self.closed and self.train_once():
                pass
            with self._cond:
                self._cond.notify_all()

    def train_once(self) -> bool:
        """Fit one chunk and swap; False when there is nothing (more) to do."""
        store, stats = self.store, self.store.stats
        with self._update_lock:
            with store.lock:
                if len(self.pending) < self.train_chunk or self.closed:
                    return False
                ids = np.array(self.pending[: self.train_chunk], np.int64)
                X = store.gather(ids)
                y = store.labels[ids].copy()
                model = copy.deepcopy(self.primary)
                self.updating = True
            try:
                t0 = time.perf_counter()
                old_version = model.version
                model.partial_fit(X, y)
                stats.last_fit_s = time.perf_counter() - t0
                stats.last_fit_at = time.time()
                stats.model_updates += 1
                if model.version == old_version and not store.view.warm_start:
                    with store.lock:  # nothing changed (e.g. LSH): just consume the chunk
                        del self.pending[: len(ids)]
                        self.primary = model
                else:
                    self.reencode_and_swap(model, consumed=len(ids))
            except Exception as exc:
                log.exception("model update failed; dropping its chunk of %d labels", len(ids))
                with store.lock:
                    del self.pending[: len(ids)]
                stats.train_errors += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._finish_update()
            return True

    def _finish_update(self) -> None:
        with self.store.lock:
            self.updating = False
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ swaps
    def set_model(self, model: HashModel, wait: bool = True) -> threading.Thread | None:
        """Adopt an already fitted model: re-encode everything with it and swap. With
        ``wait=False`` this runs in a new thread, which is returned."""
        store = self.store
        if model.W is None:
            raise ValueError("the model has not been fitted")
        if model.n_bits != store.n_bits:
            raise ValueError(f"the model makes {model.n_bits}-bit codes, the index {store.n_bits}")
        if store.dim is not None and model.W.shape[0] != store.dim:
            raise ValueError(f"the model takes {model.W.shape[0]}-d features, the index holds "
                             f"{store.dim}-d")

        def run() -> None:
            with self._update_lock:
                with store.lock:
                    self.updating = True
                try:
                    self.reencode_and_swap(model, consumed=0)
                finally:
                    self._finish_update()

        if wait:
            run()
            return None
        t = threading.Thread(target=run, name="index-set-model", daemon=True)
        t.start()
        return t

    def reencode_and_swap(self, model: HashModel, consumed: int) -> None:
        store, stats = self.store, self.store.stats
        t0 = time.perf_counter()
        with store.lock:
            n0 = store.n
        # The long part runs without the lock: rows < n0 never change.
        codes = store.encode_all(model, n0)
        index = store.build_flat(codes, n0)
        with store.lock:
            n = store.n
            if n > n0:  # rows added during the re-encode: encode them with the new model too
                codes = grow(codes, n)
                codes[n0:n] = model.encode(store.gather(np.arange(n0, n)))
            old = store.view
            store.view = View(index, n0, codes, n, model, False, old.epoch + 1)
            self.primary = model
            self.warm = None
            self.centre_pending = False
            del self.pending[:consumed]
            stats.swaps += 1
            stats.last_reencode_s = time.perf_counter() - t0
            stats.last_swap_at = time.time()
        log.info("hash model %s v%d in use: %d codes re-encoded in %.2f s", model.name,
                 model.version, n, stats.last_reencode_s)

    # ------------------------------------------------------------------ lifecycle
    def sync(self, timeout: float | None = None) -> bool:
        """Wait until no model update runs or is due. Returns False on timeout."""
        if not self.background:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.store.lock:
            due = self.should_train()
        if due:
            self.request_training()
        with self._cond:
            while True:
                busy = self.updating or self._wake or (
                    len(self.pending) >= self.train_chunk and not self.closed
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
            self.closed = True
            self._cond.notify_all()
