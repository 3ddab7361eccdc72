"""Blob geometry for :mod:`vistream.models.tracking.discovery`: merging near blobs,
blanking what a reference frame did not see, and the object's extent around a detection by
colour (:func:`refine_box`). Split from ``discovery.py`` to keep modules short; the detector
module re-exports :func:`refine_box`."""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["refine_box"]


def _merge_near(blobs: np.ndarray, gap: float = 0.5, max_size: float = math.inf) -> np.ndarray:
    """Merge blobs whose boxes are closer than ``gap`` times the larger one's size (and
    whose union stays within ``max_size``): the leading and trailing edges of one slow,
    uniform object, or two strokes of a faint one, come out as two blobs."""
    b = [list(r) for r in blobs]
    merged = True
    while merged and len(b) > 1:
        merged = False
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                xi, yi, wi, hi, si = b[i]
                xj, yj, wj, hj, sj = b[j]
                gap_x = max(xi, xj) - min(xi + wi, xj + wj)
                gap_y = max(yi, yj) - min(yi + hi, yj + hj)
                x0, y0 = min(xi, xj), min(yi, yj)
                x1, y1 = max(xi + wi, xj + wj), max(yi + hi, yj + hj)
                if (max(gap_x, gap_y) <= gap * max(wi, hi, wj, hj)
                        and max(x1 - x0, y1 - y0) <= max_size):
                    b[i] = [x0, y0, x1 - x0, y1 - y0, max(si, sj)]
                    del b[j]
                    merged = True
                    break
            if merged:
                break
    return np.asarray(b, np.float32).reshape(-1, 5)


def _blank_unseen(d: np.ndarray, a: np.ndarray) -> None:
    """Zero the bands of ``d`` (the current frame's grid) that the reference frame, mapped
    by ``a`` (2x3, reference -> current), does not cover, with a 2 px margin. Exact for
    translations; for the small rotations of a camera the bands are the mapped edges'
    innermost extent (conservative)."""
    h, w = d.shape[:2]
    c = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ np.asarray(
        a, np.float64).T  # TL, TR, BL, BR
    left = int(math.ceil(max(c[0, 0], c[2, 0]))) + 2
    right = int(math.floor(min(c[1, 0], c[3, 0]))) - 2
    top = int(math.ceil(max(c[0, 1], c[1, 1]))) + 2
    bottom = int(math.floor(min(c[2, 1], c[3, 1]))) - 2
    if left > 0:
        d[:, :min(left, w)] = 0
    if right < w:
        d[:, max(right, 0):] = 0
    if top > 0:
        d[:min(top, h)] = 0
    if bottom < h:
        d[max(bottom, 0):] = 0


def refine_box(frame: np.ndarray, box, max_size: float = 64.0, grow: float = 1.0
               ) -> tuple[float, float, float, float]:
    """The extent of the object a detection box sits on, by colour: a moving uniform object
    differs from the earlier frames mostly along its leading edge, so the difference blob of
    a large or slow object is a crescent of it. The object's colour is the median of the
    box's pixels that differ most from the surrounding ring's mean colour; the object is the
    connected region, around the box, of pixels closer to that colour than to the ring's
    (window: the box grown by ``grow`` times its size a side, and enough for an object of
    ``max_size``). The
    box is returned unchanged when the region is implausible (larger than ``max_size``, or
    not covering the box's centre) or the colours do not separate."""
    x, y, w, h = (float(v) for v in box)
    H, W = frame.shape[:2]
    # room for an object up to max_size around a crescent of it
    m = max(4.0, grow * max(w, h), 0.75 * max_size - 0.5 * max(w, h))
    x0, y0 = max(0, int(x - m)), max(0, int(y - m))
    x1, y1 = min(W, int(math.ceil(x + w + m))), min(H, int(math.ceil(y + h + m)))
    if x1 - x0 < 3 or y1 - y0 < 3 or frame.ndim != 3:
        return (x, y, w, h)
    win = frame[y0:y1, x0:x1].astype(np.float32)
    bx0, by0 = int(x) - x0, int(y) - y0
    bx1, by1 = int(math.ceil(x + w)) - x0, int(math.ceil(y + h)) - y0
    inner = win[max(0, by0):by1, max(0, bx0):bx1].reshape(-1, 3)
    ring = np.concatenate([win[0], win[-1], win[:, 0], win[:, -1]])
    if len(inner) < 2:
        return (x, y, w, h)
    bg = np.median(ring, axis=0)
    sal = np.linalg.norm(inner - bg, axis=1)
    fg = np.median(inner[sal >= np.median(sal)], axis=0)
    sep = float(np.linalg.norm(fg - bg))
    if sep < 20.0:  # not separable by colour: keep the difference box
        return (x, y, w, h)
    d_fg = np.linalg.norm(win - fg, axis=2)
    d_bg = np.linalg.norm(win - bg, axis=2)
    mask = ((d_fg < d_bg) & (d_fg < 0.6 * sep)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    cx, cy = int(x + w / 2) - x0, int(y + h / 2) - y0
    if not (0 <= cy < labels.shape[0] and 0 <= cx < labels.shape[1]):
        return (x, y, w, h)
    # the component under the box's centre, else the largest inside the box
    lab = labels[cy, cx]
    if lab == 0:
        sub = labels[max(0, by0):by1, max(0, bx0):bx1]
        counts = np.bincount(sub.ravel(), minlength=n)
        counts[0] = 0
        lab = int(np.argmax(counts)) if counts.max() > 0 else 0
    if lab == 0:
        return (x, y, w, h)
    rx, ry, rw, rh, _ = stats[lab]
    touches = rx == 0 or ry == 0 or rx + rw == x1 - x0 or ry + rh == y1 - y0
    if max(rw, rh) > max_size or (touches and (x0 > 0 and y0 > 0 and x1 < W and y1 < H)):
        return (x, y, w, h)  # runs into the background: not an object of its own
    return (float(x0 + rx), float(y0 + ry), float(rw), float(rh))
