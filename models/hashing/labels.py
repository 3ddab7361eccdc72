"""The label book of the live index: class names, labels by track, labels waiting for a match.

Choices made here (the store applies them under its lock; see :mod:`models.hashing.store`):

Class names
    A label may name its class (``"car"``) instead of giving an integer. The book keeps the
    name -> id map and is part of every snapshot, so an id never changes. A new name gets the
    id one past the largest id in use (names and integer labels alike), so names never take an
    integer label's id that was seen before them. Mixing both in one index is allowed but
    not advised: an integer label that arrives later may fall on a name's id.

Labels by track
    A track is ``(stream_id, track_id)``; ``stream_id`` ``""`` means that track id in any
    stream. A label for a track labels every row (a frame or a crop) indexed for that track,
    and every row of it that arrives later. The first label of a track wins, as the first
    label of a frame does (SDOH cannot unlearn what it has fitted).

Pseudo-labels
    A label record with source ``pseudo`` comes from a classifier head (the features stage's
    ``pseudo_label_threshold``), not from a person. It labels one row (its frame id, or the
    crop's ``<frame_id>#t<track>``) and is applied like any frame label, so the first label of
    a row wins either way: a person's later label of that row, or of its track, leaves a
    pseudo-labelled row as it is (SDOH cannot unlearn it). The book counts them apart:
    ``pseudo_records`` (pseudo label records received) and ``pseudo_rows`` (rows they labelled),
    so ``GET /stats`` can tell how much of the training came from people.

Labels that match nothing (yet)
    A label for a frame id or a track that the index does not hold is kept, waiting, until its
    frame or a row of its track arrives, or until it expires: after ``ttl_records`` more rows
    have been indexed (the default; deterministic, so a restarted index that replays the same
    records expires the same labels), or ``ttl_seconds`` of wall-clock time (off by default).
    Never an exception. Counted: ``pending`` (waiting now), ``matched`` (label records that
    found their frame or track, at once or later), ``expired`` (dropped unmatched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: ``(stream_id, track_id)``; stream ``""`` matches the track id in any stream.
TrackKey = tuple[str, int]


@dataclass(slots=True)
class PendingLabel:
    label: int
    at_n: int  # rows indexed when it arrived
    at_s: float  # wall clock (s) when it arrived


@dataclass(slots=True)
class LabelOutcome:
    """What one label did: ``applied`` (``rows`` newly labelled now), ``pending`` (kept until
    its frame or track arrives) or ``unchanged`` (the frame or track already had a label)."""

    status: str
    rows: int
    label: int
    class_name: str | None


class LabelBook:
    """Class names, track labels and pending labels (see the module docstring). Not
    thread-safe by itself: the store calls it under its lock."""

    def __init__(self, ttl_records: int | None = 100_000, ttl_seconds: float | None = None) -> None:
        self.ttl_records = ttl_records
        self.ttl_seconds = ttl_seconds
        self.classes: dict[str, int] = {}
        self.pending_frames: dict[str, PendingLabel] = {}  # insertion order = arrival order
        self.pending_tracks: dict[TrackKey, PendingLabel] = {}
        self.track_labels: dict[TrackKey, int] = {}  # matched: applies to later rows too
        self.rows_by_track: dict[TrackKey, list[int]] = {}
        self.matched = 0
        self.expired = 0
        self.pseudo_records = 0
        self.pseudo_rows = 0

    def count_source(self, source: str, rows: int) -> None:
        """Count one label record by where it came from (only pseudo-labels are counted apart:
        the user's figures are the totals less these)."""
        if source == "pseudo":
            self.pseudo_records += 1
            self.pseudo_rows += int(rows)

    # ------------------------------------------------------------------ classes
    def class_id(self, name: str, max_label_seen: int = -1) -> int:
        name = name.strip()
        cid = self.classes.get(name)
        if cid is None:
            used = [max_label_seen, *self.classes.values(), *self.track_labels.values(),
                    *(p.label for p in self.pending_frames.values()),
                    *(p.label for p in self.pending_tracks.values())]
            cid = self.classes[name] = max(used, default=-1) + 1
        return cid

    def class_name(self, label: int | None) -> str | None:
        if label is None:
            return None
        for name, cid in self.classes.items():
            if cid == label:
                return name
        return None

    # ------------------------------------------------------------------ frames
    def hold_frame(self, frame_id: str, label: int, n: int, now: float | None = None) -> None:
        """Keep a label for a frame id the index does not hold (the first label wins)."""
        if frame_id not in self.pending_frames:
            self.pending_frames[frame_id] = PendingLabel(label, n, _now(now))

    def take_frame(self, frame_id: str) -> int | None:
        """The pending label of a frame that has just arrived (counted as matched)."""
        p = self.pending_frames.pop(frame_id, None)
        if p is None:
            return None
        self.matched += 1
        return p.label

    # ------------------------------------------------------------------ tracks
    def add_row(self, key: TrackKey, row: int) -> int | None:
        """Remember that ``row`` belongs to track ``key``; returns the label it gets from its
        track (a matched one, or a pending one that matches now), if any."""
        self.rows_by_track.setdefault(key, []).append(row)
        for k in (key, ("", key[1])):
            lab = self.track_labels.get(k)
            if lab is not None:
                return lab
        for k in (key, ("", key[1])):
            p = self.pending_tracks.pop(k, None)
            if p is not None:
                self.track_labels[k] = p.label
                self.matched += 1
                return p.label
        return None

    def track_rows(self, key: TrackKey) -> list[int]:
        if key[0]:
            return list(self.rows_by_track.get(key, ()))
        return [r for (_, t), rows in self.rows_by_track.items() if t == key[1] for r in rows]

    def label_track(self, key: TrackKey, label: int, n: int,
                    now: float | None = None) -> tuple[str, list[int]]:
        """A label for a track: ``("applied", its rows)``, ``("pending", [])`` when no row of
        it is indexed yet, ``("unchanged", [])`` when it already has a label."""
        if key in self.track_labels:
            return "unchanged", []
        if key in self.pending_tracks:  # the first label of a track wins, pending or not
            return "pending", []
        rows = self.track_rows(key)
        if not rows:
            self.pending_tracks[key] = PendingLabel(label, n, _now(now))
            return "pending", []
        self.track_labels[key] = label
        self.matched += 1
        return "applied", rows

    # ------------------------------------------------------------------ expiry
    @property
    def pending(self) -> int:
        return len(self.pending_frames) + len(self.pending_tracks)

    def expire(self, n: int, now: float | None = None) -> int:
        """Drop pending labels older than the TTL; returns how many expired."""
        if not (self.pending_frames or self.pending_tracks):
            return 0
        t = _now(now)
        dropped = 0
        for book in (self.pending_frames, self.pending_tracks):
            for k in [k for k, p in book.items() if self._stale(p, n, t)]:
                del book[k]
                dropped += 1
        self.expired += dropped
        return dropped

    def _stale(self, p: PendingLabel, n: int, t: float) -> bool:
        return ((self.ttl_records is not None and n - p.at_n >= self.ttl_records)
                or (self.ttl_seconds is not None and t - p.at_s >= self.ttl_seconds))

    # ------------------------------------------------------------------ snapshots
    def to_json(self) -> dict[str, Any]:
        return {
            "ttl_records": self.ttl_records, "ttl_seconds": self.ttl_seconds,
            "classes": dict(self.classes),
            "pending_frames": [[f, p.label, p.at_n, p.at_s] for f, p in self.pending_frames.items()],
            "pending_tracks": [[s, t, p.label, p.at_n, p.at_s]
                               for (s, t), p in self.pending_tracks.items()],
            "track_labels": [[s, t, lab] for (s, t), lab in self.track_labels.items()],
            "rows_by_track": [[s, t, list(rows)] for (s, t), rows in self.rows_by_track.items()],
            "matched": self.matched, "expired": self.expired,
            "pseudo_records": self.pseudo_records, "pseudo_rows": self.pseudo_rows,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelBook:
        book = cls(d.get("ttl_records"), d.get("ttl_seconds"))
        book.classes = {str(k): int(v) for k, v in d.get("classes", {}).items()}
        book.pending_frames = {str(f): PendingLabel(int(lab), int(n), float(s))
                               for f, lab, n, s in d.get("pending_frames", [])}
        book.pending_tracks = {(str(st), int(t)): PendingLabel(int(lab), int(n), float(s))
                               for st, t, lab, n, s in d.get("pending_tracks", [])}
        book.track_labels = {(str(s), int(t)): int(lab) for s, t, lab in d.get("track_labels", [])}
        book.rows_by_track = {(str(s), int(t)): [int(r) for r in rows]
                              for s, t, rows in d.get("rows_by_track", [])}
        book.matched = int(d.get("matched", 0))
        book.expired = int(d.get("expired", 0))
        book.pseudo_records = int(d.get("pseudo_records", 0))
        book.pseudo_rows = int(d.get("pseudo_rows", 0))
        return book


def _now(now: float | None) -> float:
    return time.time() if now is None else float(now)
