"""Tracking sequences from folders in the OTB layout a user may have.

:func:`load_otb` reads ``<seq>/img/*.jpg`` and
``<seq>/groundtruth_rect.txt`` (one ``x,y,w,h`` per line; commas, tabs or spaces; OTB's
multi-target sequences ship ``groundtruth_rect.1.txt``, ``.2.txt``: one target each). Boxes
with a non-positive side or NaN mark frames without a visible target. When there are more
images than boxes, the first ``len(boxes)`` images are used (OTB's few sequences with a start
offset need their offset from the OTB config, which is not in the folder). Frames load
lazily, so long sequences do not fill the memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vistream.models.data.tracking import TrackingSequence

__all__ = ["LazyFrames", "load_otb"]

log = logging.getLogger("vistream.tracking.benchmark")


class LazyFrames(Sequence[np.ndarray]):
    """Image files read on access (BGR uint8)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return LazyFrames(self.paths[i])
        img = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"could not read image {str(self.paths[i])!r}")
        return img


def _natural_key(p: Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def _read_boxes(path: Path) -> np.ndarray:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        vals = [v for v in re.split(r"[,\s;]+", line) if v]
        if len(vals) < 4:
            raise ValueError(f"{path}: line {line!r} has fewer than 4 numbers")
        rows.append([float(v) if v.lower() != "nan" else math.nan for v in vals[:4]])
    if not rows:
        raise ValueError(f"{path}: no boxes")
    return np.asarray(rows, np.float64)


def _otb_sequence(folder: Path) -> TrackingSequence:
    img_dir = folder / "img"
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    paths = sorted((p for p in img_dir.iterdir() if p.suffix.lower() in exts), key=_natural_key)
    if not paths:
        raise ValueError(f"{img_dir}: no images")
    gt_files = sorted(folder.glob("groundtruth_rect*.txt"), key=_natural_key)
    if not gt_files:
        raise ValueError(f"{folder}: no groundtruth_rect.txt")
    per_target = [_read_boxes(p) for p in gt_files]
    n = min(len(paths), *(len(b) for b in per_target))
    if any(len(b) != len(paths) for b in per_target):
        log.warning("%s: %d images but %s boxes; using the first %d frames", folder.name,
                    len(paths), "/".join(str(len(b)) for b in per_target), n)
    boxes = np.stack([b[:n] for b in per_target], axis=1)
    visible = np.isfinite(boxes).all(axis=2) & (boxes[..., 2] > 0) & (boxes[..., 3] > 0)
    k = boxes.shape[1]
    attrs = []
    for i in range(k):
        a = set()
        if np.nanmax(np.maximum(boxes[:, i, 2], boxes[:, i, 3]), initial=0) <= 10:
            a.add("tiny")
        if k > 1:
            a.add("multi")
        attrs.append(a)
    return TrackingSequence(name=folder.name, frames=LazyFrames(paths[:n]), boxes=boxes,
                            visible=visible, attributes=attrs)


def load_otb(root: str | Path) -> list[TrackingSequence]:
    """OTB-format sequences under ``root``: ``root`` itself when it holds ``img/`` and
    ``groundtruth_rect.txt``, otherwise each sub-folder that does (sorted by name)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"OTB folder {str(root)!r} does not exist")

    def is_seq(p: Path) -> bool:
        return (p / "img").is_dir() and any(p.glob("groundtruth_rect*.txt"))

    if is_seq(root):
        return [_otb_sequence(root)]
    seqs = [_otb_sequence(p) for p in sorted(root.iterdir(), key=_natural_key)
            if p.is_dir() and is_seq(p)]
    if not seqs:
        raise ValueError(f"{str(root)!r} holds no OTB sequence (<seq>/img/ and "
                         "<seq>/groundtruth_rect.txt)")
    return seqs
