"""Snapshots of the live index on disk: incremental, crash-safe, rotated.

Layout
    ``root/snap-NNNNNNNN/`` holds one snapshot; ``root/CURRENT`` names the one to load. A
    snapshot is built in a temp folder ``root/.tmp-*``, fsynced, renamed into place, and only
    then is ``CURRENT`` replaced atomically, so a crash at any point leaves the previous snapshot
    in force (a stale temp folder is ignored). The ``keep`` newest snapshots are kept.

What a snapshot holds
    Features in append-only blocks of ``BLOCK`` rows (``features/BBBBBB-ROWS.npy`` with the
    frame ids of its rows in ``.ids.json``), labels, the learning queue, codes, metadata,
    orphan labels and the label book (class names, labels by track, pending labels with their
    age), the models (``primary.npz``, ``warm.npz``) and ``manifest.json``: counters,
    model versions and the caller's *carry*. A full block that the previous snapshot of the
    same index (same ``uid``) already holds is hard-linked, not rewritten, so frequent
    snapshots of a large index cost little.

The carry
    What the caller (the runner) needs back after a restore, stored atomically with the state:
    any JSON-serialisable mapping, kept verbatim in the manifest and handed back by
    :func:`read_snapshot`. The index never interprets it. A snapshot written before the carry
    existed has a manifest key ``offsets`` (``[[topic, partition, offset], ...]``); it reads
    back as the carry ``{"positions": <that list>}``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistream.models.hashing.base import HashModel
from vistream.models.hashing.registry import load_hash_model
from vistream.models.hashing.store import BLOCK, FrameMeta, meta_from_json, meta_to_json

SNAPSHOT_FORMAT = 1
CURRENT = "CURRENT"


@dataclass
class SnapshotState:
    """Everything one snapshot holds: captured from an index under its lock, or read back."""

    uid: str
    n_bits: int
    dim: int | None
    train_chunk: int
    warm_n: int
    centre_pending: bool
    feature_model_id: str
    #: full feature blocks, then the rows of the partial last one
    blocks: list[np.ndarray]
    frame_ids: list[str]
    labels: np.ndarray  # (n,) int64, -1 where unlabelled
    pending: np.ndarray  # ids queued for training, in order
    meta: dict[str, FrameMeta]
    orphan_labels: dict[str, int]
    primary: HashModel
    warm: HashModel | None
    #: the model that made ``codes`` (``primary``, ``warm`` or another one), None before any
    active: HashModel | None
    codes: np.ndarray  # (n, n_bits // 8) uint8
    warm_start: bool
    epoch: int
    stats: dict[str, Any] = field(default_factory=dict)
    carry: dict[str, Any] | None = None
    #: the label book (class names, track labels, pending labels; ``LabelBook.to_json``);
    #: None in snapshots written before it existed
    label_book: dict[str, Any] | None = None

    @property
    def n(self) -> int:
        return len(self.frame_ids)


def check_carry(carry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``carry`` as it will read back (a JSON round trip), or a TypeError/ValueError now rather
    than half-way through writing a snapshot."""
    if carry is None:
        return None
    return json.loads(json.dumps(dict(carry)))


def resolve_snapshot(root: str | Path) -> Path | None:
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


def previous_snapshot(root: Path, uid: str) -> Path | None:
    """The current snapshot under ``root`` if the same index (``uid``) wrote it: the one whose
    full blocks a new snapshot may hard-link."""
    cur = resolve_snapshot(root)
    if cur is None:
        return None
    try:
        prev_uid = json.loads((cur / "manifest.json").read_text()).get("uid")
    except (OSError, ValueError):
        return None
    return cur if prev_uid == uid else None


# --------------------------------------------------------------------------- writing


def _manifest(s: SnapshotState) -> dict[str, Any]:
    active = s.active
    return {
        "format": SNAPSHOT_FORMAT, "uid": s.uid, "n": s.n, "dim": s.dim,
        "n_bits": s.n_bits, "block": BLOCK, "train_chunk": s.train_chunk,
        "model": None if active is None else active.name,
        "model_version": 0 if active is None else int(active.version),
        "warm_start": s.warm_start, "epoch": s.epoch, "warm_n": s.warm_n,
        "centre_pending": s.centre_pending,
        "feature_model_id": s.feature_model_id,
        "carry": s.carry,
        "created_ms": int(time.time() * 1000),
        "stats": s.stats,
        "active": ("primary" if active is s.primary else
                   "warm" if active is s.warm and s.warm is not None else
                   "active" if active is not None else None),
    }


def write_snapshot(root: str | Path, s: SnapshotState, keep: int = 2) -> Path:
    """Write ``s`` as a new snapshot under ``root``, point ``CURRENT`` at it, drop all but the
    ``keep`` newest; returns its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(s)
    prev = previous_snapshot(root, s.uid)
    seq = 1 + max([int(p.name[5:]) for p in root.glob("snap-*") if p.name[5:].isdigit()],
                  default=0)
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "features").mkdir(parents=True)
    try:
        _write_blocks(tmp, prev, s.blocks, s.frame_ids)
        _save_npy(tmp / "labels.npy", s.labels)
        _save_npy(tmp / "pending.npy", s.pending)
        _save_npy(tmp / "codes.npy", s.codes)
        _write_bytes(tmp / "meta.json", json.dumps(
            {"frames": {f: meta_to_json(m) for f, m in s.meta.items()},
             "orphan_labels": s.orphan_labels, "label_book": s.label_book}).encode())
        _save_model(tmp / "primary.npz", s.primary)
        if s.warm is not None:
            _save_model(tmp / "warm.npz", s.warm)
        if manifest["active"] == "active":  # pragma: no cover - defensive
            _save_model(tmp / "active.npz", s.active)
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
    snaps = sorted(p for p in root.glob("snap-*") if p.name[5:].isdigit())
    for old in snaps[: max(len(snaps) - max(keep, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_blocks(tmp: Path, prev: Path | None, blocks: list[np.ndarray],
                  frame_ids: list[str]) -> None:
    for b, arr in enumerate(blocks):
        rows = len(arr)
        fname, iname = f"features/{b:06d}-{rows}.npy", f"features/{b:06d}-{rows}.ids.json"
        if prev is not None and (prev / fname).exists() and (prev / iname).exists():
            try:
                os.link(prev / fname, tmp / fname)
                os.link(prev / iname, tmp / iname)
                continue
            except OSError:
                pass  # another file system or no hard links: write the block instead
        _save_npy(tmp / fname, arr)
        _write_bytes(tmp / iname, json.dumps(frame_ids[b * BLOCK: b * BLOCK + rows]).encode())


# --------------------------------------------------------------------------- reading


def read_snapshot(root: str | Path, mmap: bool = True) -> tuple[Path, SnapshotState]:
    """The snapshot ``root/CURRENT`` points at (or ``root`` itself if it is one) and its folder.
    Full feature blocks are memory-mapped read-only when ``mmap``."""
    snap = resolve_snapshot(Path(root))
    if snap is None:
        raise FileNotFoundError(f"no snapshot in {root}")
    man = json.loads((snap / "manifest.json").read_text())
    if man.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{snap}: snapshot format {man.get('format')} is not supported")
    n, dim = int(man["n"]), man["dim"]
    blocks, frame_ids = _read_blocks(snap, mmap)
    if len(frame_ids) != n:
        raise ValueError(f"{snap}: {len(frame_ids)} frame ids for {n} rows")
    primary = load_hash_model(snap / "primary.npz")
    warm = load_hash_model(snap / "warm.npz") if (snap / "warm.npz").exists() else None
    active = {"primary": primary, "warm": warm, None: None}.get(man.get("active"))
    if man.get("active") == "active":  # pragma: no cover - defensive
        active = load_hash_model(snap / "active.npz")
    codes = np.load(snap / "codes.npy")
    code_size = primary.n_bits // 8
    if codes.shape != (n, code_size):
        raise ValueError(f"{snap}: codes have shape {codes.shape}, expected {(n, code_size)}")
    meta = json.loads((snap / "meta.json").read_text())
    if "carry" in man:
        carry = man["carry"]
    else:  # written before the carry existed: the runner's positions were "offsets"
        carry = {"positions": man.get("offsets", [])}
    state = SnapshotState(
        uid=man["uid"], n_bits=primary.n_bits, dim=None if dim is None else int(dim),
        train_chunk=int(man["train_chunk"]), warm_n=int(man.get("warm_n", 256)),
        centre_pending=bool(man.get("centre_pending", False)),
        feature_model_id=man.get("feature_model_id", ""),
        blocks=blocks, frame_ids=frame_ids, labels=np.load(snap / "labels.npy"),
        pending=np.load(snap / "pending.npy"),
        meta={f: meta_from_json(m) for f, m in meta["frames"].items()},
        orphan_labels={f: int(v) for f, v in meta["orphan_labels"].items()},
        primary=primary, warm=warm, active=active, codes=codes,
        warm_start=bool(man["warm_start"]), epoch=int(man["epoch"]),
        stats=dict(man.get("stats", {})), carry=carry, label_book=meta.get("label_book"))
    return snap, state


def _read_blocks(snap: Path, mmap: bool) -> tuple[list[np.ndarray], list[str]]:
    files = sorted((snap / "features").glob("*.npy"))
    blocks: list[np.ndarray] = []
    frame_ids: list[str] = []
    for b, f in enumerate(files):
        bno, rows = (int(x) for x in f.name[:-4].split("-"))
        if bno != b:
            raise ValueError(f"{snap}: feature block {b} is missing")
        blocks.append(np.load(f, mmap_mode="r" if (mmap and rows == BLOCK) else None))
        frame_ids += json.loads((snap / "features" / f"{b:06d}-{rows}.ids.json").read_text())
    return blocks, frame_ids


# --------------------------------------------------------------------------- durable writes


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
