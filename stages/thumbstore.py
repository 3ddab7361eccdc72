"""The thumbnail store: small JPEGs of frames on disk, keyed by frame id, bounded, oldest
evicted first.

The ``thumbnail`` stage writes it (``params: {store_dir: DIR}``); the web console of
``vistream serve`` reads it, to draw the latest frame of each stream and to show pictures next
to search answers. Writer and reader may be different processes on one machine (a thumbnail
stage on Kafka, ``vistream serve`` beside it): the store is one SQLite file in WAL mode, so a
reader never blocks the writer and never sees half a batch.

Per frame id one row: stream id, capture time, the frame's own size, the thumbnail's size and
JPEG bytes, and, when they arrive, the frame's tracks (boxes in the frame's pixels, ids) and its
caption. Tracks and captions may come before or after their frame's thumbnail (they come from
other stages); a row is created by whichever arrives first and keeps its place in the order.

Bounds: ``max_bytes`` (thumbnail bytes) and ``max_frames`` (rows). A write that goes over
either evicts the oldest rows (by first arrival) until both hold again. Freed pages of the
SQLite file are reused by later writes, so the file stays near the bound instead of growing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DB_NAME = "thumbs.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    frame_id TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL DEFAULT '',
    timestamp_ms INTEGER,
    width INTEGER,
    height INTEGER,
    thumb_width INTEGER,
    thumb_height INTEGER,
    tracks TEXT,
    caption TEXT,
    nbytes INTEGER NOT NULL DEFAULT 0,
    jpeg BLOB  -- last: reading the other columns never steps over the picture
);
CREATE INDEX IF NOT EXISTS frames_stream ON frames (stream_id);
CREATE INDEX IF NOT EXISTS frames_tracks ON frames (stream_id) WHERE tracks IS NOT NULL;
CREATE INDEX IF NOT EXISTS frames_caption ON frames (stream_id) WHERE caption IS NOT NULL;
CREATE TABLE IF NOT EXISTS totals (one INTEGER PRIMARY KEY CHECK (one = 1),
                                   frames INTEGER NOT NULL, nbytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS frames_ins AFTER INSERT ON frames BEGIN
    UPDATE totals SET frames = frames + 1, nbytes = nbytes + NEW.nbytes; END;
CREATE TRIGGER IF NOT EXISTS frames_del AFTER DELETE ON frames BEGIN
    UPDATE totals SET frames = frames - 1, nbytes = nbytes - OLD.nbytes; END;
CREATE TRIGGER IF NOT EXISTS frames_upd AFTER UPDATE OF nbytes ON frames BEGIN
    UPDATE totals SET nbytes = nbytes - OLD.nbytes + NEW.nbytes; END;
"""

_COLUMNS = ("frame_id", "stream_id", "timestamp_ms", "width", "height", "thumb_width",
            "thumb_height", "tracks", "caption")


@dataclass
class StoredFrame:
    """One row of the store, without its JPEG (:meth:`ThumbnailStore.jpeg` reads that)."""

    frame_id: str
    stream_id: str
    timestamp_ms: int | None = None
    width: int | None = None
    height: int | None = None
    thumb_width: int | None = None
    thumb_height: int | None = None
    tracks: list[dict[str, Any]] | None = None
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from_row(cls, row: tuple) -> StoredFrame:
        values = dict(zip(_COLUMNS, row))
        values["tracks"] = json.loads(values["tracks"]) if values["tracks"] else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _COLUMNS}
        out.update(self.extra)
        return out


def tracks_meta(boxes: Any, track_ids: Any = None, scores: Any = None) -> list[dict[str, Any]]:
    """Tracks as plain JSON: ``[{track_id, box: [x, y, w, h], score}, ...]``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ids = np.asarray(track_ids if track_ids is not None else [], np.int64).reshape(-1)
    sc = np.asarray(scores if scores is not None else [], np.float64).reshape(-1)
    return [{"track_id": int(ids[i]) if i < len(ids) else None,
             "box": [round(float(v), 2) for v in boxes[i]],
             "score": round(float(sc[i]), 4) if i < len(sc) and np.isfinite(sc[i]) else None}
            for i in range(len(boxes))]


class ThumbnailStore:
    """Thumbnails and their frame's tracks and caption, by frame id, in ``root/thumbs.sqlite``.

    Thread-safe (one connection behind a lock); several processes may open the same folder.
    """

    def __init__(self, root: str | Path, max_bytes: int = 256 * 1024 * 1024,
                 max_frames: int = 1_000_000) -> None:
        if max_bytes < 1 or max_frames < 1:
            raise ValueError("max_bytes and max_frames must be at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.max_frames = int(max_frames)
        self.evicted = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / DB_NAME, timeout=30, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)

    # -- writing -------------------------------------------------------------------------
    def put(self, frame_id: str, stream_id: str, jpeg: bytes, *, timestamp_ms: int | None = None,
            width: int | None = None, height: int | None = None,
            thumb_width: int | None = None, thumb_height: int | None = None) -> None:
        """Store (or replace) the thumbnail of ``frame_id``; evicts the oldest when over."""
        self.put_many([dict(frame_id=frame_id, stream_id=stream_id, jpeg=jpeg,
                            timestamp_ms=timestamp_ms, width=width, height=height,
                            thumb_width=thumb_width, thumb_height=thumb_height)])

    def put_many(self, rows: list[dict[str, Any]]) -> None:
        """Store several thumbnails in one transaction (the thumbnail stage's batch)."""
        if not rows:
            return
        sql = ("INSERT INTO frames (frame_id, stream_id, timestamp_ms, width, height, "
               "thumb_width, thumb_height, jpeg, nbytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (frame_id) DO UPDATE SET stream_id = excluded.stream_id, "
               "timestamp_ms = coalesce(excluded.timestamp_ms, timestamp_ms), "
               "width = excluded.width, height = excluded.height, "
               "thumb_width = excluded.thumb_width, thumb_height = excluded.thumb_height, "
               "jpeg = excluded.jpeg, nbytes = excluded.nbytes")
        params = [(r["frame_id"], r.get("stream_id") or "", r.get("timestamp_ms"), r.get("width"),
                   r.get("height"), r.get("thumb_width"), r.get("thumb_height"),
                   bytes(r["jpeg"]), len(r["jpeg"])) for r in rows]
        self._write(sql, params)

    def set_tracks(self, frame_id: str, stream_id: str, tracks: list[dict[str, Any]],
                   timestamp_ms: int | None = None) -> None:
        """Attach tracks (see :func:`tracks_meta`) to ``frame_id``, thumbnail or not yet."""
        self._set_meta(frame_id, stream_id, "tracks", json.dumps(tracks), timestamp_ms)

    def set_caption(self, frame_id: str, stream_id: str, caption: str,
                    timestamp_ms: int | None = None) -> None:
        self._set_meta(frame_id, stream_id, "caption", str(caption), timestamp_ms)

    def _set_meta(self, frame_id: str, stream_id: str, column: str, value: str,
                  timestamp_ms: int | None) -> None:
        sql = (f"INSERT INTO frames (frame_id, stream_id, timestamp_ms, {column}) "
               f"VALUES (?, ?, ?, ?) ON CONFLICT (frame_id) DO UPDATE SET {column} = "
               f"excluded.{column}, timestamp_ms = coalesce(timestamp_ms, excluded.timestamp_ms)")
        self._write(sql, [(frame_id, stream_id or "", timestamp_ms, value)])

    def _write(self, sql: str, params: list[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, params)
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _evict(self) -> None:
        frames, nbytes = self._db.execute("SELECT frames, nbytes FROM totals").fetchone()
        over_frames, over_bytes = frames - self.max_frames, nbytes - self.max_bytes
        if over_frames <= 0 and over_bytes <= 0:
            return
        cutoff, n, freed = None, 0, 0
        for rowid, size in self._db.execute("SELECT rowid, nbytes FROM frames ORDER BY rowid"):
            cutoff, n, freed = rowid, n + 1, freed + size
            if n >= over_frames and freed >= over_bytes:
                break
        if cutoff is not None:
            self._db.execute("DELETE FROM frames WHERE rowid <= ?", (cutoff,))
            self.evicted += n

    # -- reading -------------------------------------------------------------------------
    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def jpeg(self, frame_id: str) -> bytes | None:
        """The thumbnail's JPEG bytes; None when the frame is unknown or has no thumbnail."""
        rows = self._read("SELECT jpeg FROM frames WHERE frame_id = ?", (frame_id,))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    def get(self, frame_id: str) -> StoredFrame | None:
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM frames WHERE frame_id = ?",
                          (frame_id,))
        return StoredFrame._from_row(rows[0]) if rows else None

    def streams(self) -> list[str]:
        """Stream ids, sorted: one index seek per stream (not a scan of every row)."""
        return [r[0] for r in self._read(
            "WITH RECURSIVE s(x) AS (SELECT min(stream_id) FROM frames UNION ALL "
            "SELECT (SELECT min(stream_id) FROM frames WHERE stream_id > x) FROM s "
            "WHERE x IS NOT NULL) SELECT x FROM s WHERE x IS NOT NULL")]

    def latest(self, stream_id: str) -> StoredFrame | None:
        """The stream's newest frame that has a thumbnail, with the stream's newest tracks and
        caption (``extra``: ``tracks_frame_id``, ``caption_frame_id``, the frames they belong
        to): tracks and captions come from other stages and may lag behind the thumbnails.
        Each is one seek in an index of the rows that have them."""
        cols = ", ".join(_COLUMNS)
        rows = self._read(f"SELECT {cols} FROM frames WHERE stream_id = ? AND nbytes > 0 "
                          "ORDER BY rowid DESC LIMIT 1", (stream_id,))
        if not rows:
            return None
        frame = StoredFrame._from_row(rows[0])
        for column in ("tracks", "caption"):
            if getattr(frame, column) is not None:
                frame.extra[f"{column}_frame_id"] = frame.frame_id
                continue
            found = self._read(f"SELECT frame_id, {column} FROM frames WHERE stream_id = ? AND "
                               f"{column} IS NOT NULL ORDER BY rowid DESC LIMIT 1", (stream_id,))
            if found:
                value = json.loads(found[0][1]) if column == "tracks" else found[0][1]
                setattr(frame, column, value)
                frame.extra[f"{column}_frame_id"] = found[0][0]
            else:
                frame.extra[f"{column}_frame_id"] = None
        return frame

    def totals(self) -> dict[str, int]:
        frames, nbytes = self._read("SELECT frames, nbytes FROM totals")[0]
        return {"frames": int(frames), "bytes": int(nbytes), "max_frames": self.max_frames,
                "max_bytes": self.max_bytes, "evicted": self.evicted}

    def __len__(self) -> int:
        return self.totals()["frames"]

    def __contains__(self, frame_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM frames WHERE frame_id = ?", (frame_id,)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
