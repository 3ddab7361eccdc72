"""Seeded multi-target sequences with no initial boxes: the data of ``vistream eval mot``
(its evaluation is :mod:`vistream.models.tracking.mot`).

Choices made
------------
* **Scene and camera.** A photo bundled with scikit-image is resized into a canvas that covers
  every view of the clip; each frame is ``cv2.warpAffine`` of that canvas through the camera of
  the frame: image point = ``s R(theta) (scene point - c) + frame centre``, with a sub-pixel
  centre ``c``, a small rotation ``theta`` and a zoom ``s``. Two families:

  - ``smooth``: a slow pan (0.2-1.2 px/frame) plus a slow sway (5-20 px, period 60-200
    frames), rotation swinging up to 0.5-2 degrees and zoom within 2-6 %;
  - ``shake``: the same plus hand shake, an AR(1) jitter of the centre (innovation 1.5-4 px,
    coefficient 0.6) with rotation (0.15-0.4 degrees) and zoom (0.2-0.5 %) jitter, and 2-4
    sudden persistent re-aims of 15-60 px in random, non-integer directions.

* **Motion blur** is a line kernel along the motion during a half-frame exposure: the
  background is blurred along the camera's image-plane motion at the frame centre, each target
  along its own image-plane motion (camera and target together), when the streak is >= 1 px
  (capped at 25 px).
* **Targets**: 3-8 per sequence, discs, squares and soft blobs, 4-64 px (log-uniform, so most
  are small), saturated, dark, bright or pastel colours, 0.5-4 px/frame in the scene with a
  slowly wandering heading. A target *enters* either across a frame edge (heading inwards) or
  by appearing inside the view; 35 % are there from frame 0. It *leaves* by crossing out of
  the view, or (40 %) vanishes at the end of its life. Targets may cross each other.
* **Sensor noise**: Gaussian read noise (sigma 1.5-4) plus shot noise (variance = level / 8),
  then rounding to uint8.
* **Ground truth**: per frame and target the drawn box (zoom applied) clipped to the frame;
  the target counts as present when at least 40 % of its box lies inside the frame. Ids are
  1-based and unique within a sequence.

Everything derives from the spec's seed (independent streams for camera, targets and noise).
Validation and test splits draw their seeds from different streams, so tuning never sees a
test sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from vistream.models.data.scene import (
    SHAPES,
    SyntheticObject,
    blend_alpha,
    load_background,
    object_alpha,
    seeded_rng,
)
from vistream.models.data.tracking import PHOTO_BACKGROUNDS

__all__ = ["FAMILIES", "SPLITS", "MotSequence", "MotSpec", "line_kernel", "render", "suite",
           "suite_specs"]

#: Camera-motion families.
FAMILIES: tuple[str, ...] = ("shake", "smooth")
#: Splits: tuning happens on ``val`` only.
SPLITS: tuple[str, ...] = ("val", "test")
_S_CAM, _S_TARGET, _S_NOISE, _S_SUITE = 21, 22, 23, 24
_EXPOSURE = 0.5  # share of the frame interval the shutter is open
_MAX_STREAK = 25.0


@dataclass(frozen=True)
class MotSpec:
    """One multi-target sequence; every detail not given here is drawn from ``seed``."""

    name: str = "mot"
    seed: int = 0
    family: str = "smooth"
    n_frames: int = 150
    width: int = 640
    height: int = 480
    background: str = "astronaut"
    n_targets: int = 6
    target_size: tuple[float, float] = (4.0, 64.0)
    target_speed: tuple[float, float] = (0.5, 4.0)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if not 1 <= self.n_targets <= 8:
            raise ValueError(f"n_targets must be within 1..8, got {self.n_targets}")
        if self.n_frames < 10 or self.width < 64 or self.height < 64:
            raise ValueError("need at least 10 frames of at least 64x64")


@dataclass
class MotSequence:
    """Frames with ground truth: ``boxes`` (n_frames, n_targets, 4) x, y, w, h clipped to the
    frame, ``present`` (n_frames, n_targets), ``ids`` (n_targets,) 1-based, ``cameras``
    (n_frames, 2, 3) scene-to-image affine maps."""

    name: str
    family: str
    frames: list[np.ndarray]
    boxes: np.ndarray
    present: np.ndarray
    ids: np.ndarray
    cameras: np.ndarray
    spec: MotSpec | None = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def ground_truth(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and boxes of the targets present in frame ``t``."""
        keep = self.present[t]
        return self.ids[keep], self.boxes[t, keep]


# --------------------------------------------------------------------------- camera


def _camera_params(spec: MotSpec) -> np.ndarray:
    """(n, 4): centre x, y (relative to frame 0), angle (radians), zoom."""
    rng = seeded_rng(spec.seed, _S_CAM)
    n = spec.n_frames
    t = np.arange(n, dtype=np.float64)
    a = rng.uniform(0, 2 * math.pi)
    pan = rng.uniform(0.2, 1.2) * np.array([math.cos(a), math.sin(a)])
    sway_amp, sway_period = rng.uniform(5, 20), rng.uniform(60, 200)
    b = rng.uniform(0, 2 * math.pi)
    sway = sway_amp * np.sin(2 * math.pi * t / sway_period)[:, None] * [math.cos(b), math.sin(b)]
    centre = t[:, None] * pan + sway
    rot = math.radians(rng.uniform(0.5, 2.0)) * np.sin(2 * math.pi * t / rng.uniform(80, 250)
                                                      + rng.uniform(0, 6.3))
    zoom = 1 + rng.uniform(0.02, 0.06) * np.sin(2 * math.pi * t / rng.uniform(80, 250)
                                               + rng.uniform(0, 6.3))
    if spec.family == "shake":
        sig = rng.uniform(1.5, 4.0)
        jit = np.zeros((n, 2))
        for k in range(1, n):
            jit[k] = 0.6 * jit[k - 1] + rng.normal(0, sig, 2)
        jumps = np.zeros((n, 2))
        for k in rng.choice(np.arange(5, n - 2), size=min(int(rng.integers(2, 5)), n - 7),
                            replace=False):
            d = rng.uniform(15, 60)
            ang = rng.uniform(0, 2 * math.pi)
            jumps[k] = d * math.cos(ang), d * math.sin(ang)
        centre = centre + jit + np.cumsum(jumps, axis=0)
        rot = rot + np.radians(rng.uniform(0.15, 0.4)) * rng.standard_normal(n)
        zoom = zoom * (1 + rng.uniform(0.002, 0.005) * rng.standard_normal(n))
    return np.column_stack([centre, rot, zoom])


def _affine(cx: float, cy: float, theta: float, s: float, w: int, h: int) -> np.ndarray:
    c, si = math.cos(theta) * s, math.sin(theta) * s
    lin = np.array([[c, -si], [si, c]])
    return np.hstack([lin, (np.array([w / 2, h / 2]) - lin @ [cx, cy])[:, None]])


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:, :2].T + m[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def _canvas(spec: MotSpec, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The background canvas and the scene-to-image maps of every frame (canvas pixels are
    scene coordinates)."""
    w, h = spec.width, spec.height
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64)
    maps = [_affine(*p, w, h) for p in params]
    pts = np.concatenate([_apply(_invert(m), corners) for m in maps])
    lo = pts.min(axis=0) - 4
    need = np.ceil(pts.max(axis=0) + 4 - lo).astype(int)
    photo = load_background(spec.background)
    ph, pw = photo.shape[:2]
    scale = max(need[0] / pw, need[1] / ph)
    size = (max(int(need[0]), math.ceil(pw * scale)), max(int(need[1]), math.ceil(ph * scale)))
    img = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    x0, y0 = (size[0] - need[0]) // 2, (size[1] - need[1]) // 2
    canvas = np.ascontiguousarray(img[y0:y0 + need[1], x0:x0 + need[0]])
    shifted = np.stack([_affine(p[0] - lo[0], p[1] - lo[1], p[2], p[3], w, h) for p in params])
    return canvas, shifted


def line_kernel(dx: float, dy: float) -> np.ndarray | None:
    """A normalised line kernel of the streak (dx, dy) px (bilinear splats along it); None when
    the streak is under 1 px."""
    length = math.hypot(dx, dy)
    if length < 1.0:
        return None
    if length > _MAX_STREAK:
        dx, dy, length = dx * _MAX_STREAK / length, dy * _MAX_STREAK / length, _MAX_STREAK
    half = int(math.ceil(length / 2)) + 1
    k = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    for s in np.linspace(-0.5, 0.5, int(4 * math.ceil(length)) + 1):
        x, y = half + s * dx, half + s * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    return k / k.sum()


# --------------------------------------------------------------------------- targets


@dataclass
class _Target:
    obj: SyntheticObject
    scene_xy: np.ndarray  # (n, 2) centre in scene coordinates, NaN when absent
    birth: int
    death: int


def _look(i: int, spec: MotSpec, rng: np.random.Generator) -> SyntheticObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    lo, hi = (math.log(v) for v in spec.target_size)
    w = int(round(math.exp(rng.uniform(lo, hi))))
    h = int(round(w * rng.uniform(0.6, 1.6))) if shape == "blob" else w
    h = int(np.clip(h, spec.target_size[0], spec.target_size[1]))
    style = int(rng.integers(4))
    hue = int(rng.integers(0, 180))
    sat, val = [(rng.integers(200, 256), rng.integers(200, 256)),  # vivid
                (rng.integers(0, 256), rng.integers(10, 50)),  # dark
                (rng.integers(0, 40), rng.integers(235, 256)),  # bright
                (rng.integers(60, 140), rng.integers(200, 256))][style]  # pastel
    px = np.array([[[hue, sat, val]]], np.uint8)
    b, g, r = (int(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])
    return SyntheticObject(id=i, shape=shape, color=(b, g, r), width=w, height=h)


def _simulate(i: int, spec: MotSpec, maps: np.ndarray) -> _Target:
    rng = seeded_rng(spec.seed, _S_TARGET, i)
    n, w, h = spec.n_frames, spec.width, spec.height
    obj = _look(i, spec, rng)
    birth = 0 if rng.random() < 0.35 else int(rng.integers(1, max(2, int(0.6 * n))))
    death = n if rng.random() < 0.6 else min(n, birth + int(rng.integers(max(20, n // 4), n)))
    speed = rng.uniform(*spec.target_speed)
    if birth == 0 or rng.random() < 0.4:  # appears inside the view
        start = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        heading = rng.uniform(0, 2 * math.pi)
    else:  # enters across an edge, heading inwards
        edge = int(rng.integers(4))
        r = max(obj.width, obj.height) / 2 + 1
        u = rng.uniform(0.1, 0.9)
        start = [(u * w, -r), (w + r, u * h), (u * w, h + r), (-r, u * h)][edge]
        inward = [math.pi / 2, math.pi, -math.pi / 2, 0.0][edge]
        heading = inward + rng.uniform(-0.9, 0.9)
    pos = _apply(_invert(maps[birth]), np.asarray(start, np.float64))
    xy = np.full((n, 2), np.nan)
    for t in range(birth, death):
        if t > birth:
            heading += rng.normal(0, 0.04)
            pos = pos + speed * np.array([math.cos(heading), math.sin(heading)])
        xy[t] = pos
    return _Target(obj, xy, birth, death)


def _draw(frame: np.ndarray, obj: SyntheticObject, box: np.ndarray, streak: np.ndarray) -> None:
    alpha, r0, c0 = object_alpha(obj, box)
    k = line_kernel(*(streak * _EXPOSURE))
    if k is not None:
        p = k.shape[0] // 2
        alpha = cv2.filter2D(cv2.copyMakeBorder(alpha, p, p, p, p, cv2.BORDER_CONSTANT, value=0),
                             -1, k, borderType=cv2.BORDER_CONSTANT)
        r0, c0 = r0 - p, c0 - p
    blend_alpha(frame, alpha, r0, c0, obj.color)


# --------------------------------------------------------------------------- rendering


def render(spec: MotSpec) -> MotSequence:
    """Render ``spec``: frames (BGR uint8) and ground truth."""
    n, w, h = spec.n_frames, spec.width, spec.height
    params = _camera_params(spec)
    canvas, maps = _canvas(spec, params)
    targets = [_simulate(i, spec, maps) for i in range(spec.n_targets)]
    k = len(targets)
    boxes = np.zeros((n, k, 4))
    present = np.zeros((n, k), bool)
    full = np.full((n, k, 4), np.nan)
    for t in range(n):
        zoom = float(np.hypot(*maps[t, :, 0]))
        for i, tg in enumerate(targets):
            if np.isnan(tg.scene_xy[t, 0]):
                continue
            cx, cy = _apply(maps[t], tg.scene_xy[t])
            bw, bh = tg.obj.width * zoom, tg.obj.height * zoom
            full[t, i] = cx - bw / 2, cy - bh / 2, bw, bh
            x0, y0 = max(cx - bw / 2, 0.0), max(cy - bh / 2, 0.0)
            x1, y1 = min(cx + bw / 2, float(w)), min(cy + bh / 2, float(h))
            if x1 - x0 >= 1 and y1 - y0 >= 1 and (x1 - x0) * (y1 - y0) >= 0.4 * bw * bh:
                boxes[t, i] = x0, y0, x1 - x0, y1 - y0
                present[t, i] = True
    noise_rng = seeded_rng(spec.seed, _S_NOISE)
    read_sigma = float(noise_rng.uniform(1.5, 4.0))
    centre = np.array([w / 2, h / 2])
    frames: list[np.ndarray] = []
    for t in range(n):
        img = cv2.warpAffine(canvas, maps[t], (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        if t > 0:  # the camera's streak at the frame centre
            prev = _apply(maps[t - 1], _apply(_invert(maps[t]), centre))
            kern = line_kernel(*((centre - prev) * _EXPOSURE))
            if kern is not None:
                img = cv2.filter2D(img, -1, kern, borderType=cv2.BORDER_REFLECT)
        for i, tg in enumerate(targets):
            if np.isnan(full[t, i, 0]):
                continue
            streak = np.zeros(2)
            if t > 0 and not np.isnan(tg.scene_xy[t - 1, 0]):
                streak = (_apply(maps[t], tg.scene_xy[t])
                          - _apply(maps[t - 1], tg.scene_xy[t - 1]))
            _draw(img, tg.obj, full[t, i], streak)
        sigma = cv2.sqrt(cv2.max(img, 0.0) * np.float32(1 / 8) + np.float32(read_sigma ** 2))
        img += noise_rng.standard_normal(img.shape, dtype=np.float32) * sigma
        frames.append(cv2.convertScaleAbs(cv2.max(img, 0.0)))
    return MotSequence(spec.name, spec.family, frames, boxes, present,
                       np.arange(1, k + 1, dtype=np.int64), maps, spec)


def suite_specs(split: str = "test", per_family: int = 4, n_frames: int = 150,
                seed: int = 2019) -> list[MotSpec]:
    """``per_family`` sequences of each family for one split; backgrounds cycle through the
    bundled photos; 3-8 targets each."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    specs = []
    for f, family in enumerate(FAMILIES):
        for j in range(per_family):
            rng = seeded_rng(seed, _S_SUITE, SPLITS.index(split), f, j)
            specs.append(MotSpec(
                name=f"{split}-{family}-{j:02d}", seed=int(rng.integers(2**31)), family=family,
                n_frames=n_frames,
                background=PHOTO_BACKGROUNDS[int(rng.integers(len(PHOTO_BACKGROUNDS)))],
                n_targets=int(rng.integers(3, 9))))
    return specs


def suite(split: str = "test", per_family: int = 4, n_frames: int = 150,
          seed: int = 2019) -> Iterator[MotSequence]:
    """Render :func:`suite_specs` one sequence at a time (a 150-frame clip is ~140 MB)."""
    for spec in suite_specs(split, per_family, n_frames, seed):
        yield render(spec)
