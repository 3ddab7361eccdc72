"""Sinks: the end of a pipeline. The summary sink keeps one entry per frame id.

Idempotent by frame id, so at-least-once delivery gives exactly-once results: a redelivered
frame overwrites its own entry. With ``out_dir`` set, each entry is a small JSON file written
atomically (write to a temp name, then rename), so a sink killed mid-batch and restarted never
leaves a half entry and never counts a frame twice. On close it writes ``summary.json`` and a
contact sheet of thumbnails (``contact_sheet.png``).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from vistream.stages.records import FrameSummary, Message, decode_image
from vistream.stages.base import Stage, StageParams, register_stage
from vistream.stages.thumbnail import summarize_frame


class SummaryParams(StageParams):
    out_dir: str | None = Field(None, description="folder for per-frame entries and summary")
    contact_sheet_columns: int = Field(8, ge=1, le=64)
    contact_sheet_max: int = Field(64, ge=0, le=4096, description="thumbnails on the sheet")


@register_stage("summary")
class SummarySink(Stage):
    accepts = ("frame_summary", "frame")
    emits = ()
    Params = SummaryParams

    def setup(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        self.thumbnails: dict[str, bytes] = {}
        self.redeliveries = 0
        self.out_dir = Path(self.params.out_dir) if self.params.out_dir else None
        if self.out_dir:
            (self.out_dir / "frames").mkdir(parents=True, exist_ok=True)
            # Temp files are what a killed writer leaves behind; the entry itself never is.
            for stale in (self.out_dir / "frames").glob("*.tmp*"):
                stale.unlink(missing_ok=True)
            # A restarted sink picks up what it already holds, thumbnails included.
            for p in (self.out_dir / "frames").glob("*.json"):
                entry = json.loads(p.read_text())
                self.entries[entry["frame_id"]] = entry
                thumb = p.with_name(p.name.removesuffix(".json") + ".jpg")
                if thumb.exists():
                    self.thumbnails[entry["frame_id"]] = thumb.read_bytes()

    def process(self, batch: list[Message]) -> list[Message]:
        for msg in batch:
            s = msg if isinstance(msg, FrameSummary) else summarize_frame(msg)
            entry = {
                "frame_id": s.frame_id, "stream_id": s.stream_id, "width": s.width,
                "height": s.height, "timestamp_ms": s.timestamp_ms,
                "mean_bgr": [round(float(v), 2) for v in s.mean_bgr],
            }
            with self._lock:
                if s.frame_id in self.entries:
                    self.redeliveries += 1
                self.entries[s.frame_id] = entry
                self.thumbnails[s.frame_id] = s.thumbnail.tobytes()
            if self.out_dir:
                self._write_entry(entry, s.thumbnail.tobytes())
        return []

    def _write_entry(self, entry: dict[str, Any], thumbnail: bytes) -> None:
        # Frame ids may hold dots, so build names rather than swap suffixes.
        stem = urllib.parse.quote(entry["frame_id"], safe="")
        folder = self.out_dir / "frames"
        # Thumbnail first: an entry that exists always has its thumbnail.
        _atomic_write(folder / f"{stem}.jpg", thumbnail)
        _atomic_write(folder / f"{stem}.json", json.dumps(entry).encode())

    def summary(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self.entries.values())
        streams: dict[str, dict[str, Any]] = {}
        for e in sorted(entries, key=lambda e: (e["stream_id"], e["timestamp_ms"])):
            s = streams.setdefault(e["stream_id"], {
                "frames": 0, "width": e["width"], "height": e["height"],
                "first_ts_ms": e["timestamp_ms"], "last_ts_ms": e["timestamp_ms"],
                "_bright": 0.0})
            s["frames"] += 1
            s["last_ts_ms"] = e["timestamp_ms"]
            s["_bright"] += float(np.mean(e["mean_bgr"]))
        for s in streams.values():
            s["mean_brightness"] = round(s.pop("_bright") / s["frames"], 2)
            s["duration_s"] = round((s["last_ts_ms"] - s["first_ts_ms"]) / 1000, 3)
        return {"frames": len(entries), "streams": streams, "redeliveries": self.redeliveries}

    def contact_sheet(self) -> np.ndarray | None:
        with self._lock:
            ids = sorted(self.thumbnails)
            if not ids:
                return None
            step = max(1, len(ids) // max(self.params.contact_sheet_max, 1))
            thumbs = [decode_image(self.thumbnails[i]) for i in ids[::step]]
        thumbs = thumbs[: self.params.contact_sheet_max]
        h = max(t.shape[0] for t in thumbs)
        w = max(t.shape[1] for t in thumbs)
        cols = min(self.params.contact_sheet_columns, len(thumbs))
        rows = -(-len(thumbs) // cols)
        sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
        for k, t in enumerate(thumbs):
            r, c = divmod(k, cols)
            sheet[r * h: r * h + t.shape[0], c * w: c * w + t.shape[1]] = t
        return sheet

    def close(self) -> None:
        if not self.out_dir:
            return
        (self.out_dir / "summary.json").write_text(json.dumps(self.summary(), indent=2))
        sheet = self.contact_sheet()
        if sheet is not None:
            cv2.imwrite(str(self.out_dir / "contact_sheet.png"), sheet)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
