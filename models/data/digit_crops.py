"""Tracker crops of small digits: the training domain of the shipped 1-bit backbone.

``digits_composite()`` places a 16-28 px digit inside a 32 x 32 photo patch. What the
features stage embeds in a stream is different: the crop of a *tracked box* around a small
object (6-40 px) filmed by a moving camera, stretched to the backbone's 32 x 32 input, so the
digit fills the image, with motion blur, sensor noise and a box that is often a little off
(shifted, too large, or a fragment of the object). :func:`digit_crops` renders that domain from
the digits of each split, so a backbone can be trained where it is used.

Each image, from one 8 x 8 source digit (the split's own digits: training images never come
from the validation or test digits, and the test split's digits are those ``vistream demo``
films):

* a patch of one of the split's photos (``images._PHOTOS_BY_SPLIT``), random scale;
* the digit stretched (bilinear, sub-pixel) to a side drawn log-uniformly in ``size`` px, in
  a colour drawn like the multi-object clips' targets (vivid, dark, bright or pastel);
* with probability 0.7 a line motion blur of 1-8 px in a random direction, then Gaussian
  read noise (sigma 1.5-4 on 0-255) plus shot noise, as the seeded clips film;
* the box: the digit's ink box, each edge moved by a Gaussian of 12 % of the side; with
  probability 0.25 a fragment (one half to three quarters of the box along one axis);
* cropped as the features stage crops (boxes under 4 px padded up) and resized to ``size``
  (INTER_AREA), RGB in [0, 1], channels first.

Deterministic for a seed (numpy's PCG64); cached like the composite split.
"""

from __future__ import annotations

import math

import numpy as np

from vistream.models.data.images import (
    _PHOTOS_BY_SPLIT,
    DataBundle,
    Split,
    _bundle,
    _digits_raw,
    _photos,
    cached_splits,
    split_indices,
)
from vistream.models.data.mot import line_kernel

__all__ = ["CROPS_SEED", "CROPS_VERSION", "digit_crops", "render_crop"]

CROPS_SEED = 2323
CROPS_VERSION = 1
_INK = 0.1


def _colour(rng: np.random.Generator) -> np.ndarray:
    import cv2

    style = int(rng.integers(4))
    hue = int(rng.integers(0, 180))
    sat, val = [(rng.integers(200, 256), rng.integers(200, 256)),
                (rng.integers(0, 256), rng.integers(10, 50)),
                (rng.integers(0, 40), rng.integers(235, 256)),
                (rng.integers(60, 140), rng.integers(200, 256))][style]
    px = np.array([[[hue, sat, val]]], np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _streak(rng: np.random.Generator) -> np.ndarray:
    length = float(rng.uniform(1.0, 8.0))
    angle = float(rng.uniform(0, math.pi))
    return line_kernel(length * math.cos(angle), length * math.sin(angle))


def _ink(digit: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(digit.max(axis=1) > _INK)
    cols = np.flatnonzero(digit.max(axis=0) > _INK)
    if not len(rows):
        return 0, 0, digit.shape[1], digit.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def render_crop(digit: np.ndarray, photo: np.ndarray, rng: np.random.Generator, size: int = 32,
                side: tuple[float, float] = (6.0, 40.0)) -> np.ndarray:
    """One tracker crop of ``digit`` (8 x 8 in [0, 1]) over ``photo`` (RGB float in [0, 1]):
    (3, size, size) float32 RGB in [0, 1]. See the module docstring."""
    import cv2

    s = math.exp(rng.uniform(math.log(side[0]), math.log(side[1])))
    L = int(math.ceil(2 * s)) + 16  # the patch of the scene around the object
    h, w = photo.shape[:2]
    src = int(np.clip(L * rng.uniform(0.5, 3.0), 8, min(h, w)))
    y0, x0 = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
    img = cv2.resize(photo[y0:y0 + src, x0:x0 + src], (L, L),
                     interpolation=cv2.INTER_AREA if src > L else cv2.INTER_LINEAR) * 255.0
    ox, oy = (L - s) / 2 + rng.uniform(-2, 2), (L - s) / 2 + rng.uniform(-2, 2)
    cell = s / 8.0
    m = np.array([[cell, 0.0, ox + 0.5 * cell - 0.5], [0.0, cell, oy + 0.5 * cell - 0.5]])
    alpha = np.clip(cv2.warpAffine(digit, m, (L, L), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0), 0, 1)
    if rng.random() < 0.7:
        alpha = cv2.filter2D(alpha, -1, _streak(rng), borderType=cv2.BORDER_CONSTANT)
    img = img * (1 - alpha[:, :, None]) + _colour(rng)[None, None, :] * alpha[:, :, None]
    read = float(rng.uniform(1.5, 4.0))
    img = img + rng.standard_normal(img.shape).astype(np.float32) * np.sqrt(
        np.maximum(img, 0) / 8 + read ** 2)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # the box: the ink, edges jittered, sometimes a fragment
    ix0, iy0, ix1, iy1 = _ink(digit)
    bx0, by0 = ox + ix0 * cell, oy + iy0 * cell
    bx1, by1 = ox + ix1 * cell, oy + iy1 * cell
    j = 0.12 * s
    bx0, by0, bx1, by1 = (v + rng.normal(0, j) for v in (bx0, by0, bx1, by1))
    if rng.random() < 0.25:
        keep = rng.uniform(0.5, 0.75)
        if rng.random() < 0.5:
            cut = (bx1 - bx0) * (1 - keep)
            bx0, bx1 = (bx0 + cut, bx1) if rng.random() < 0.5 else (bx0, bx1 - cut)
        else:
            cut = (by1 - by0) * (1 - keep)
            by0, by1 = (by0 + cut, by1) if rng.random() < 0.5 else (by0, by1 - cut)
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    bw, bh = max(bx1 - bx0, 4.0), max(by1 - by0, 4.0)
    c0, r0 = int(max(0, round(cx - bw / 2))), int(max(0, round(cy - bh / 2)))
    c1, r1 = int(min(L, round(cx + bw / 2))), int(min(L, round(cy + bh / 2)))
    if c1 <= c0 or r1 <= r0:
        c0, r0, c1, r1 = 0, 0, L, L
    crop = cv2.resize(img[r0:r1, c0:c1], (size, size), interpolation=cv2.INTER_AREA)
    return (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)


def _generate(copies: int, size: int, seed: int) -> dict[str, Split]:
    imgs, y = _digits_raw()
    idx = split_indices(y)
    rng = np.random.default_rng(seed)
    out = {}
    for split, ids in idx.items():
        photos = _photos(_PHOTOS_BY_SPLIT[split])
        n = copies if split == "train" else 2
        xs, ys = [], []
        for _ in range(n):
            for i in ids:
                xs.append(render_crop(imgs[i], photos[int(rng.integers(len(photos)))], rng, size))
                ys.append(y[i])
        out[split] = Split(np.stack(xs), np.asarray(ys, np.int64))
    return out


def digit_crops(copies: int = 2, size: int = 32, cache: bool = True) -> DataBundle:
    """Tracker crops of the digits (``copies`` per training digit, 2 per validation and test
    digit; the splits of ``images.split_indices``). Deterministic; cached."""
    key = f"digit_crops_v{CROPS_VERSION}_c{copies}_s{size}_seed{CROPS_SEED}.npz"
    splits = cached_splits(key, lambda: _generate(copies, size, CROPS_SEED), cache)
    return _bundle("digit-crops", splits, [str(i) for i in range(10)])
