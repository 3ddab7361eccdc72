"""The aggregation signature's colour statistics (see :mod:`models.tracking.aggregation`).

Pixel colours are quantised to an 8x8x8 BGR cube (``BINS`` levels a channel); a target's
signature is a pair of such histograms (saliency-weighted foreground, local-background ring),
smoothed with :func:`smooth3`; their per-bin likelihood ratio is a lookup table that
:func:`backproject` maps over any window or the whole frame.
"""

from __future__ import annotations

import cv2
import numpy as np

BINS = 8
SHIFT = 5  # 256 / 8 = 32 = 1 << 5
RANGES = [0, 256, 0, 256, 0, 256]
LUMA = np.array([0.114, 0.587, 0.299], np.float32)  # BGR


def smooth3(h: np.ndarray) -> np.ndarray:
    """[1, 2, 1]/4 smoothing along each axis of a 3-D histogram, edges replicated (one pad,
    then three separable passes on slices: no BLAS, no per-axis copies)."""
    p = np.pad(h, 1, mode="edge")
    p = 0.25 * (p[:-2] + p[2:]) + 0.5 * p[1:-1]
    p = 0.25 * (p[:, :-2] + p[:, 2:]) + 0.5 * p[:, 1:-1]
    return 0.25 * (p[:, :, :-2] + p[:, :, 2:]) + 0.5 * p[:, :, 1:-1]


def lut_as_mat(lut: np.ndarray):
    """The 8x8x8 likelihood table as a 3-D cv2.Mat: a plain (8, 8, 8) ndarray would reach
    OpenCV as an 8x8 image with 8 channels, and calcBackProject would read it wrongly."""
    mat = getattr(cv2, "Mat", None)
    if mat is None:
        return None
    try:
        return mat(lut, wrap_channels=False)
    except TypeError:
        return None


def backproject(image: np.ndarray, lut: np.ndarray, lut_mat) -> np.ndarray:
    """uint8 map of ``lut`` (0..255) looked up at each pixel's colour bin."""
    if lut_mat is not None:
        return cv2.calcBackProject([image], [0, 1, 2], lut_mat, RANGES, 1.0)
    q = image.astype(np.int32) >> SHIFT
    return lut[q[..., 0], q[..., 1], q[..., 2]].astype(np.uint8)


def bin_index(pixels: np.ndarray) -> np.ndarray:
    p = pixels.reshape(-1, 3).astype(np.int32) >> SHIFT
    return (p[:, 0] * BINS + p[:, 1]) * BINS + p[:, 2]
