"""A seeded clip of small *classed* objects: digit sprites over a photo, under a shaking camera
(the data of ``vistream demo``).

Every object is one of scikit-learn's 8x8 digits of the *held-out test split* of
:mod:`vistream.models.data.images` (the split no backbone trained on ``digits_composite()`` has
seen), so each object has a ground-truth class (the digit), a ground-truth box and a track.

Choices made
------------
* **Camera, scene, motion, blur and noise** are those of :mod:`vistream.models.data.mot`'s
  ``shake`` family, reused, not re-implemented: a bundled photo warped through a panning,
  swaying, rotating and zooming camera with hand shake (AR(1) jitter) and sudden re-aims; line
  motion blur along the image-plane motion during a half-frame exposure (background and each
  object); Gaussian read noise plus shot noise. Object trajectories, sizes (log-uniform
  ``size`` px, so most are small), colours, entries and exits come from the same target
  simulation; only the drawn shape differs: the object's digit, upsampled bilinearly to its
  size and placed with sub-pixel accuracy.
* **Classes**: ``n_classes`` digits drawn from the seed, ``per_class`` objects each, every
  object a different source digit.
* **Ground truth**: per frame and object the box of the digit's ink (its strokes, not the
  empty margin of the 8x8 cell), zoom applied, clipped to the frame; present when at least 40 %
  of it lies inside (as in ``mot``). Ids are 1-based.
* **Sharp frames**: :meth:`ClassedSequence.sharp` renders frame ``t`` with a zero exposure and
  no sensor noise (the same camera pose and object positions): the reference a deblurred frame
  is scored against.

Everything derives from the spec's seed.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from vistream.models.data.images import _digits_raw, split_indices
from vistream.models.data.mot import (
    _EXPOSURE,
    MotSpec,
    _apply,
    _camera_params,
    _canvas,
    _invert,
    _simulate,
    _Target,
    line_kernel,
)
from vistream.models.data.scene import blend_alpha, seeded_rng

__all__ = ["ClassedSequence", "ClassedSpec", "render_classed"]

_S_CLASSES, _S_NOISE = 31, 32
_INK = 0.1  # alpha above which a sprite pixel is ink (ground-truth box)


@dataclass(frozen=True)
class ClassedSpec:
    """One clip; every detail not given here is drawn from ``seed``."""

    seed: int = 0
    n_frames: int = 150
    width: int = 640
    height: int = 480
    background: str = "astronaut"
    n_classes: int = 4
    per_class: int = 3
    size: tuple[float, float] = (6.0, 40.0)
    speed: tuple[float, float] = (0.5, 3.0)

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= 10:
            raise ValueError(f"n_classes must be within 1..10, got {self.n_classes}")
        if not 1 <= self.per_class <= 20:
            raise ValueError(f"per_class must be within 1..20, got {self.per_class}")
        if self.n_frames < 24 or self.width < 64 or self.height < 64:
            # (mot's target lives last at least 20 frames)
            raise ValueError("need at least 24 frames of at least 64x64")

    def mot_spec(self) -> MotSpec:
        """The ``mot`` spec whose camera, scene and target motion this clip reuses."""
        return MotSpec(name=f"classed-{self.seed}", seed=self.seed, family="shake",
                       n_frames=self.n_frames, width=self.width, height=self.height,
                       background=self.background, n_targets=1, target_size=self.size,
                       target_speed=self.speed)


@dataclass
class ClassedSequence:
    """Frames with ground truth: ``boxes`` (n_frames, n_objects, 4) x, y, w, h of the ink,
    clipped to the frame; ``present`` (n_frames, n_objects); ``ids`` (n_objects,) 1-based;
    ``classes`` (n_objects,) the digit of each object; ``sprites`` the 8x8 digit images."""

    spec: ClassedSpec
    frames: list[np.ndarray]
    boxes: np.ndarray
    present: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    sprites: np.ndarray
    _canvas: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    _maps: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    _targets: list[_Target] = field(repr=False, default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def fps(self) -> float:
        return 25.0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.spec.width, self.spec.height

    def ground_truth(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and boxes of the objects present in frame ``t``."""
        keep = self.present[t]
        return self.ids[keep], self.boxes[t, keep]

    def sharp(self, t: int) -> np.ndarray:
        """Frame ``t`` without motion blur and sensor noise (BGR uint8)."""
        return _render_frame(self, t, blur=False)


def _sprite_alpha(sprite: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The 8x8 ``sprite`` stretched onto ``box`` (x, y, w, h, sub-pixel): coverage and its
    top-left pixel (row, column), not clipped to any frame."""
    x, y, w, h = (float(v) for v in box)
    c0, r0 = math.floor(x) - 1, math.floor(y) - 1
    c1, r1 = math.ceil(x + w) + 1, math.ceil(y + h) + 1
    sx, sy = w / sprite.shape[1], h / sprite.shape[0]
    # pixel centres: sprite cell (i + 0.5) lands on frame x + (i + 0.5) * sx
    m = np.array([[sx, 0.0, x - c0 + 0.5 * sx - 0.5], [0.0, sy, y - r0 + 0.5 * sy - 0.5]])
    alpha = cv2.warpAffine(sprite, m, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.clip(alpha, 0, 1), r0, c0


def _ink_box(sprite: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the ink in sprite cells (0..8)."""
    rows = np.flatnonzero(sprite.max(axis=1) > _INK)
    cols = np.flatnonzero(sprite.max(axis=0) > _INK)
    if not len(rows):
        return 0.0, 0.0, float(sprite.shape[1]), float(sprite.shape[0])
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _pick_digits(spec: ClassedSpec) -> tuple[np.ndarray, np.ndarray]:
    """Classes and source images (test split) of the objects, object by object."""
    images, labels = _digits_raw()
    test = split_indices(labels)["test"]
    rng = seeded_rng(spec.seed, _S_CLASSES)
    classes = np.sort(rng.choice(10, size=spec.n_classes, replace=False))
    cls, sprites = [], []
    for c in classes:
        pool = test[labels[test] == c]
        for i in rng.choice(pool, size=min(spec.per_class, len(pool)), replace=False):
            cls.append(int(c))
            sprites.append(images[i])
    order = rng.permutation(len(cls))  # classes interleaved over the object slots
    return np.asarray(cls, np.int64)[order], np.stack(sprites).astype(np.float32)[order]


def _object_box(seq: ClassedSequence, t: int, i: int) -> np.ndarray | None:
    """The whole sprite's box (x, y, w, h) of object ``i`` in frame ``t``; None when absent."""
    tg = seq._targets[i]
    if np.isnan(tg.scene_xy[t, 0]):
        return None
    zoom = float(np.hypot(*seq._maps[t, :, 0]))
    cx, cy = _apply(seq._maps[t], tg.scene_xy[t])
    side = max(tg.obj.width, tg.obj.height) * zoom
    return np.array([cx - side / 2, cy - side / 2, side, side])


def _render_frame(seq: ClassedSequence, t: int, blur: bool = True) -> np.ndarray:
    spec, maps = seq.spec, seq._maps
    w, h = spec.width, spec.height
    img = cv2.warpAffine(seq._canvas, maps[t], (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    centre = np.array([w / 2, h / 2])
    if blur and t > 0:  # the camera's streak at the frame centre
        prev = _apply(maps[t - 1], _apply(_invert(maps[t]), centre))
        kern = line_kernel(*((centre - prev) * _EXPOSURE))
        if kern is not None:
            img = cv2.filter2D(img, -1, kern, borderType=cv2.BORDER_REFLECT)
    for i, tg in enumerate(seq._targets):
        box = _object_box(seq, t, i)
        if box is None:
            continue
        alpha, r0, c0 = _sprite_alpha(seq.sprites[i], box)
        if blur and t > 0 and not np.isnan(tg.scene_xy[t - 1, 0]):
            streak = _apply(maps[t], tg.scene_xy[t]) - _apply(maps[t - 1], tg.scene_xy[t - 1])
            k = line_kernel(*(streak * _EXPOSURE))
            if k is not None:
                p = k.shape[0] // 2
                alpha = cv2.filter2D(cv2.copyMakeBorder(alpha, p, p, p, p, cv2.BORDER_CONSTANT,
                                                        value=0), -1, k,
                                     borderType=cv2.BORDER_CONSTANT)
                r0, c0 = r0 - p, c0 - p
        blend_alpha(img, alpha, r0, c0, tg.obj.color)
    if blur:
        rng = seeded_rng(spec.seed, _S_NOISE, t)
        read_sigma = float(seeded_rng(spec.seed, _S_NOISE).uniform(1.5, 4.0))
        sigma = cv2.sqrt(cv2.max(img, 0.0) * np.float32(1 / 8) + np.float32(read_sigma ** 2))
        img += rng.standard_normal(img.shape, dtype=np.float32) * sigma
    return cv2.convertScaleAbs(cv2.max(img, 0.0))


def render_classed(spec: ClassedSpec, progress: bool = False) -> ClassedSequence:
    """Render ``spec``: frames (BGR uint8, blurred and noisy as filmed) and ground truth;
    ``progress`` shows a progress bar."""
    mspec = spec.mot_spec()
    canvas, maps = _canvas(mspec, _camera_params(mspec))
    classes, sprites = _pick_digits(spec)
    k = len(classes)
    targets = [_simulate(i, mspec, maps) for i in range(k)]
    seq = ClassedSequence(spec, [], np.zeros((spec.n_frames, k, 4)),
                          np.zeros((spec.n_frames, k), bool), np.arange(1, k + 1, dtype=np.int64),
                          classes, sprites, canvas, maps, targets)
    inks = [_ink_box(s) for s in sprites]
    w, h = spec.width, spec.height
    for t in range(spec.n_frames):
        for i in range(k):
            box = _object_box(seq, t, i)
            if box is None:
                continue
            cell = box[2] / sprites[i].shape[1]
            ix0, iy0, ix1, iy1 = inks[i]
            bx, by = box[0] + ix0 * cell, box[1] + iy0 * cell
            bw, bh = (ix1 - ix0) * cell, (iy1 - iy0) * cell
            x0, y0 = max(bx, 0.0), max(by, 0.0)
            x1, y1 = min(bx + bw, float(w)), min(by + bh, float(h))
            if x1 - x0 >= 1 and y1 - y0 >= 1 and (x1 - x0) * (y1 - y0) >= 0.4 * bw * bh:
                seq.boxes[t, i] = x0, y0, x1 - x0, y1 - y0
                seq.present[t, i] = True
    # every frame has its own noise stream, so frames render independently; OpenCV and numpy
    # release the GIL in the heavy parts, so threads share the work
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        jobs = pool.map(lambda t: _render_frame(seq, t), range(spec.n_frames))
        seq.frames.extend(tqdm(jobs, total=spec.n_frames, unit="frame", desc="render clip",
                               disable=not progress, leave=False))
    return seq
