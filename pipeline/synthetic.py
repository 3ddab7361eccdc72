"""Seeded synthetic sample videos with exact ground truth.

The generator produces short clips of a few *small* coloured objects moving over
a real photograph while the camera slowly pans and, optionally, jumps. It serves
two purposes: ``make demo`` needs a video without downloading anything, and the
small-object tracking benchmark needs clips whose boxes are known exactly.

Design choices
--------------
Backgrounds
    The photographs bundled inside scikit-image (``skimage.data``) are used, so
    nothing is fetched over the network. Only images that ship in the wheel are
    listed in :data:`BACKGROUNDS` (``astronaut``, ``coffee``, ``chelsea``,
    ``rocket``, ...); ``"flat"`` is a uniform grey field and any existing image
    file path is accepted too. Greyscale photos are replicated to three channels
    and everything is converted to OpenCV's BGR order.

Camera
    The camera origin (top-left corner of the view inside the background canvas)
    moves ``pan_speed`` px per frame in direction ``pan_angle``. Shake events are
    sudden, *persistent* re-aims of the camera, as when a handheld or
    mast-mounted camera is knocked: at each frame ``k`` in ``shake_frames`` the
    origin jumps by ``shake_px`` pixels (direction ``shake_angle`` or a seeded
    random one) and the pan continues from there. The photo is resized, keeping
    its aspect ratio, just enough to cover the whole camera path, then
    centre-cropped, so the view never leaves the picture. Integer origins are
    plain crops (exact pixel shifts); fractional origins use bilinear sampling.
    The per-frame origin is returned as :attr:`SyntheticVideo.camera`, i.e. the
    ground-truth global motion.

Objects
    Discs, squares and soft-edged elliptical blobs, ``object_size`` px across
    (8..20 px by default: well under 1 % of a 640x360 frame), in saturated random
    colours. Each moves at a constant speed with occasional smooth turns (the
    heading rotates gradually over 8..20 frames) and bounces off the frame
    borders. Motion is defined relative to the panning view, so the slow pan does
    not sweep objects away, but a shake jump moves the objects together with the
    background; an object pushed (partly) outside the frame by a jump heads back
    in. Each object has its own random stream, so the first ``k`` objects are the
    same whatever ``n_objects`` is, and the background, shake and noise streams
    do not depend on the objects at all (rendering with ``n_objects=0`` gives the
    object-free background of the same clip).

Drawing and ground truth
    Objects are composited with anti-aliased coverage computed by this module
    (exact area coverage for squares, 4x4 supersampling for discs and blobs)
    rather than by ``cv2.circle``, so the ground truth is the drawn geometry:
    box ``(x, y, w, h)`` is in continuous pixel coordinates where pixel
    ``(row, col)`` covers ``[col, col+1) x [row, row+1)``. Every pixel an object
    touches lies inside ``[floor(x), ceil(x+w)) x [floor(y), ceil(y+h))`` and the
    drawn extent reaches within one pixel of each box edge. Boxes are float and
    may extend past the frame; ``visible`` is true when the box overlaps the
    frame. Later objects are drawn over earlier ones (occlusion is possible).
    Gaussian noise (``noise_sigma``) is added last.

Determinism
    Everything derives from ``seed`` through :class:`numpy.random.SeedSequence`;
    the same spec always yields byte-identical frames.

Run ``python -m pipeline.synthetic --help`` for a small command-line front end.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "BACKGROUNDS",
    "SHAPES",
    "SceneSpec",
    "SyntheticObject",
    "SyntheticVideo",
    "generate",
    "load_background",
    "main",
    "object_alpha",
    "read_ground_truth",
    "write_ground_truth",
    "write_image_folder",
    "write_video",
]

logger = logging.getLogger("vistream.synthetic")

#: Object shapes the generator can draw.
SHAPES: tuple[str, ...] = ("disc", "square", "blob")

_SUPERSAMPLE = 4
_FLAT_GREY = 128

# Random streams (SeedSequence spawn keys); separate so that e.g. the number of
# objects does not change the noise or the shake directions.
_STREAM_OBJECTS = 1
_STREAM_SHAKE = 2
_STREAM_NOISE = 3


# --------------------------------------------------------------------------- backgrounds


def _to_bgr_uint8(image: np.ndarray, rgb: bool) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if rgb:
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def _skimage_loader(func_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        img = getattr(data, func_name)()
        if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
            img = img[0]
        return _to_bgr_uint8(img, rgb=True)

    return load


def _flat() -> np.ndarray:
    return np.full((360, 640, 3), _FLAT_GREY, np.uint8)


# Only images shipped inside the scikit-image wheel (no pooch download needed).
_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage_loader("astronaut"),
    "brick": _skimage_loader("brick"),
    "camera": _skimage_loader("camera"),
    "chelsea": _skimage_loader("chelsea"),
    "coffee": _skimage_loader("coffee"),
    "coins": _skimage_loader("coins"),
    "colorwheel": _skimage_loader("colorwheel"),
    "grass": _skimage_loader("grass"),
    "gravel": _skimage_loader("gravel"),
    "hubble_deep_field": _skimage_loader("hubble_deep_field"),
    "immunohistochemistry": _skimage_loader("immunohistochemistry"),
    "moon": _skimage_loader("moon"),
    "motorcycle": _skimage_loader("stereo_motorcycle"),
    "retina": _skimage_loader("retina"),
    "rocket": _skimage_loader("rocket"),
    "flat": _flat,
}

#: Names accepted by :attr:`SceneSpec.background` (besides an image file path).
BACKGROUNDS: tuple[str, ...] = tuple(sorted(_LOADERS))


@lru_cache(maxsize=8)
def _cached_background(name: str) -> np.ndarray:
    if name in _LOADERS:
        img = _LOADERS[name]()
    else:
        path = Path(name).expanduser()
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"background image {str(path)!r} could not be read")
    img.setflags(write=False)
    return img


def load_background(name: str) -> np.ndarray:
    """Return background ``name`` (see :data:`BACKGROUNDS`, or an image path) as BGR uint8.

    The result is a fresh, writable copy.
    """
    _check_background(name)
    return _cached_background(name).copy()


def _check_background(name: str) -> None:
    if name in _LOADERS:
        return
    if Path(name).expanduser().is_file():
        return
    raise ValueError(
        f"unknown background {name!r}: use one of {', '.join(BACKGROUNDS)} or an image file path"
    )


# --------------------------------------------------------------------------- spec / result


@dataclass(frozen=True)
class SceneSpec:
    """Parameters of a synthetic clip. All sizes in pixels, speeds in pixels per frame.

    Attributes:
        width, height: frame size.
        n_frames: number of frames (>= 1).
        fps: nominal frame rate written into videos.
        n_objects: number of moving objects (0 renders the background only).
        object_size: inclusive (min, max) object extent; discs and squares use one
            size, blobs draw width and height independently.
        object_speed: (min, max) object speed relative to the panning view.
        turn_prob: per-frame probability of starting a smooth turn.
        shapes: shapes to choose from (subset of :data:`SHAPES`).
        background: a name from :data:`BACKGROUNDS` or an image file path.
        pan_speed: camera pan speed; 0 for a static camera.
        pan_angle: pan direction in degrees (0 = camera moves right, so the scene
            drifts left; 90 = camera moves down).
        shake_frames: frame indices (1..n_frames-1) at which the view jumps.
        shake_px: length of each jump.
        shake_angle: jump direction in degrees, or None for a seeded random
            direction per event.
        noise_sigma: standard deviation of additive Gaussian noise (grey levels).
        seed: seed of every random choice.
    """

    width: int = 640
    height: int = 360
    n_frames: int = 120
    fps: float = 25.0
    n_objects: int = 3
    object_size: tuple[int, int] = (8, 20)
    object_speed: tuple[float, float] = (0.5, 3.0)
    turn_prob: float = 0.02
    shapes: tuple[str, ...] = SHAPES
    background: str = "astronaut"
    pan_speed: float = 0.5
    pan_angle: float = 0.0
    shake_frames: tuple[int, ...] = ()
    shake_px: float = 50.0
    shake_angle: float | None = None
    noise_sigma: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so specs stay hashable and comparable.
        set_ = object.__setattr__
        set_(self, "object_size", tuple(int(v) for v in self.object_size))
        set_(self, "object_speed", tuple(float(v) for v in self.object_speed))
        set_(self, "shapes", tuple(self.shapes))
        set_(self, "shake_frames", tuple(sorted({int(k) for k in self.shake_frames})))

        if self.width < 16 or self.height < 16:
            raise ValueError(f"frame size must be at least 16x16, got {self.width}x{self.height}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.n_objects < 0:
            raise ValueError(f"n_objects must be >= 0, got {self.n_objects}")
        if len(self.object_size) != 2:
            raise ValueError(f"object_size must be (min, max), got {self.object_size}")
        lo, hi = self.object_size
        if not 1 <= lo <= hi <= min(self.width, self.height) // 2:
            raise ValueError(
                f"object_size {self.object_size} must satisfy 1 <= min <= max <= "
                f"{min(self.width, self.height) // 2} (half the shorter frame side)"
            )
        if len(self.object_speed) != 2 or not 0 <= self.object_speed[0] <= self.object_speed[1]:
            raise ValueError(f"object_speed must be (min, max) with 0 <= min <= max, "
                             f"got {self.object_speed}")
        if not 0 <= self.turn_prob <= 1:
            raise ValueError(f"turn_prob must be within [0, 1], got {self.turn_prob}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        bad = [k for k in self.shake_frames if not 1 <= k < self.n_frames]
        if bad:
            raise ValueError(
                f"shake_frames {bad} out of range: a jump happens between frame k-1 and k, "
                f"so k must be within 1..{self.n_frames - 1}"
            )
        if self.shake_px < 0 or self.pan_speed < 0:
            raise ValueError("shake_px and pan_speed must be >= 0")
        if self.noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        _check_background(self.background)

    def to_dict(self) -> dict:
        """JSON-friendly dictionary of the spec."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d


@dataclass(frozen=True)
class SyntheticObject:
    """Appearance of one object; its position per frame lives in ``SyntheticVideo.boxes``."""

    id: int
    shape: str
    color: tuple[int, int, int]  # B, G, R
    width: int
    height: int


@dataclass
class SyntheticVideo:
    """A generated clip and its ground truth.

    Attributes:
        frames: ``n_frames`` BGR uint8 images of shape (height, width, 3).
        boxes: float64 array (n_frames, n_objects, 4) of x, y, w, h in pixel
            coordinates (pixel (r, c) covers [c, c+1) x [r, r+1)); may extend
            beyond the frame.
        visible: bool array (n_frames, n_objects), true where the box overlaps the frame.
        spec: the :class:`SceneSpec` that produced the clip.
        objects: per-object appearance (shape, BGR colour, size).
        camera: float64 array (n_frames, 2), camera origin x, y relative to frame 0;
            the background at frame t is the frame-0 background shifted by
            ``-camera[t]``.
    """

    frames: list[np.ndarray]
    boxes: np.ndarray
    visible: np.ndarray
    spec: SceneSpec
    objects: list[SyntheticObject] = field(default_factory=list)
    camera: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.spec.width, self.spec.height

    @property
    def fps(self) -> float:
        return self.spec.fps


# --------------------------------------------------------------------------- generation


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _snap(values: np.ndarray) -> np.ndarray:
    """Snap values within 1e-9 of an integer (cos(90 deg) is not exactly 0)."""
    r = np.rint(values)
    return np.where(np.abs(values - r) < 1e-9, r, values)


def _camera_jumps(spec: SceneSpec) -> np.ndarray:
    jumps = np.zeros((spec.n_frames, 2))
    rng = _rng(spec.seed, _STREAM_SHAKE)
    for k in spec.shake_frames:
        if spec.shake_angle is None:
            angle = rng.uniform(0.0, 2.0 * math.pi)
        else:
            angle = math.radians(spec.shake_angle)
        jumps[k] = spec.shake_px * math.cos(angle), spec.shake_px * math.sin(angle)
    return _snap(jumps)


def _camera_path(spec: SceneSpec, jumps: np.ndarray) -> np.ndarray:
    a = math.radians(spec.pan_angle)
    pan = np.array([math.cos(a), math.sin(a)]) * spec.pan_speed
    t = np.arange(spec.n_frames, dtype=np.float64)[:, None]
    return _snap(t * pan + np.cumsum(jumps, axis=0))


def _background_canvas(spec: SceneSpec, camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resize/crop the photo to cover every view; return canvas and offset of camera (0, 0)."""
    lo = np.floor(camera.min(axis=0))
    hi = np.ceil(camera.max(axis=0))
    need_w = spec.width + int(hi[0] - lo[0]) + 2  # +2: room for bilinear neighbours
    need_h = spec.height + int(hi[1] - lo[1]) + 2
    photo = _cached_background(spec.background)
    ph, pw = photo.shape[:2]
    scale = max(need_w / pw, need_h / ph)
    new_w = max(need_w, math.ceil(pw * scale))
    new_h = max(need_h, math.ceil(ph * scale))
    if (new_w, new_h) != (pw, ph):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        photo = cv2.resize(photo, (new_w, new_h), interpolation=interp)
    x0 = (new_w - need_w) // 2
    y0 = (new_h - need_h) // 2
    canvas = np.ascontiguousarray(photo[y0 : y0 + need_h, x0 : x0 + need_w])
    return canvas, -lo


def _view(canvas: np.ndarray, origin: np.ndarray, width: int, height: int) -> np.ndarray:
    ox, oy = float(origin[0]), float(origin[1])
    if ox.is_integer() and oy.is_integer():
        x, y = int(ox), int(oy)
        return canvas[y : y + height, x : x + width]
    m = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]])
    return cv2.warpAffine(
        canvas, m, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT,
    )


def _make_object(index: int, spec: SceneSpec, rng: np.random.Generator) -> SyntheticObject:
    shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
    lo, hi = spec.object_size
    w = int(rng.integers(lo, hi + 1))
    h = int(rng.integers(lo, hi + 1)) if shape == "blob" else w
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(200, 256), rng.integers(200, 256)]]], np.uint8
    )
    b, g, r = (int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return SyntheticObject(id=index, shape=shape, color=(b, g, r), width=w, height=h)


def _simulate_track(
    obj: SyntheticObject, spec: SceneSpec, jumps: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Boxes (n_frames, 4) of one object, in image coordinates."""
    half = np.array([obj.width / 2.0, obj.height / 2.0])
    lo = half
    hi = np.array([spec.width, spec.height]) - half
    pos = rng.uniform(lo, hi)
    speed = rng.uniform(*spec.object_speed)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    turn_rate, turn_left = 0.0, 0
    out = np.empty((spec.n_frames, 4))
    for t in range(spec.n_frames):
        if t > 0:
            pos = pos - jumps[t]  # a camera jump shifts everything in view
            if turn_left == 0 and rng.random() < spec.turn_prob:
                total = math.radians(rng.uniform(30.0, 120.0)) * (1 if rng.random() < 0.5 else -1)
                turn_left = int(rng.integers(8, 21))
                turn_rate = total / turn_left
            if turn_left > 0:
                heading += turn_rate
                turn_left -= 1
            vel = speed * np.array([math.cos(heading), math.sin(heading)])
            new = pos + vel
            for axis in (0, 1):
                below = new[axis] < lo[axis] and vel[axis] < 0
                above = new[axis] > hi[axis] and vel[axis] > 0
                if not (below or above):
                    continue
                border = lo[axis] if below else hi[axis]
                if lo[axis] <= pos[axis] <= hi[axis]:  # crossed the border this frame: mirror
                    new[axis] = min(max(2.0 * border - new[axis], lo[axis]), hi[axis])
                heading = (math.pi - heading) if axis == 0 else -heading
            pos = new
            heading %= 2.0 * math.pi
        out[t] = pos[0] - half[0], pos[1] - half[1], obj.width, obj.height
    return out


def object_alpha(obj: SyntheticObject, box: Sequence[float]) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage of ``obj`` drawn at ``box`` = (x, y, w, h).

    Returns ``(alpha, row0, col0)``: a float32 array covering the box's pixel
    footprint ``[floor(y), ceil(y+h)) x [floor(x), ceil(x+w))`` (not clipped to any
    frame) and the footprint's top-left pixel. Squares get exact area coverage,
    discs and blobs 4x4 supersampling; blobs have a soft edge (full opacity in
    the inner half of the ellipse, fading linearly to zero at its boundary).
    """
    x, y, w, h = (float(v) for v in box)
    c0, r0 = math.floor(x), math.floor(y)
    c1, r1 = math.ceil(x + w), math.ceil(y + h)
    cols = np.arange(c0, c1, dtype=np.float64)
    rows = np.arange(r0, r1, dtype=np.float64)
    if obj.shape == "square":
        ax = np.clip(np.minimum(cols + 1, x + w) - np.maximum(cols, x), 0.0, 1.0)
        ay = np.clip(np.minimum(rows + 1, y + h) - np.maximum(rows, y), 0.0, 1.0)
        return (ay[:, None] * ax[None, :]).astype(np.float32), r0, c0
    s = _SUPERSAMPLE
    offs = (np.arange(s) + 0.5) / s
    xs = (cols[:, None] + offs[None, :]).ravel()
    ys = (rows[:, None] + offs[None, :]).ravel()
    dx = (xs - (x + w / 2.0)) / (w / 2.0)
    dy = (ys - (y + h / 2.0)) / (h / 2.0)
    rho = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    if obj.shape == "blob":
        value = np.clip(2.0 * (1.0 - rho), 0.0, 1.0)
    else:
        value = (rho <= 1.0).astype(np.float64)
    alpha = value.reshape(len(rows), s, len(cols), s).mean(axis=(1, 3))
    return alpha.astype(np.float32), r0, c0


def _composite(frame: np.ndarray, obj: SyntheticObject, box: np.ndarray) -> None:
    alpha, r0, c0 = object_alpha(obj, box)
    fh, fw = frame.shape[:2]
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + alpha.shape[0], fh), min(c0 + alpha.shape[1], fw)
    if rr0 >= rr1 or cc0 >= cc1:
        return
    a = alpha[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0, None]
    patch = frame[rr0:rr1, cc0:cc1]
    color = np.asarray(obj.color, np.float32)
    frame[rr0:rr1, cc0:cc1] = patch * (1.0 - a) + color * a


def _boxes_visible(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    x, y, w, h = (boxes[..., i] for i in range(4))
    return (x < width) & (x + w > 0) & (y < height) & (y + h > 0)


def generate(spec: SceneSpec) -> SyntheticVideo:
    """Render the clip described by ``spec`` (deterministic in ``spec``)."""
    n, k = spec.n_frames, spec.n_objects
    jumps = _camera_jumps(spec)
    camera = _camera_path(spec, jumps)
    canvas, offset = _background_canvas(spec, camera)

    objects: list[SyntheticObject] = []
    boxes = np.zeros((n, k, 4), np.float64)
    for i in range(k):
        rng = _rng(spec.seed, _STREAM_OBJECTS, i)
        obj = _make_object(i, spec, rng)
        objects.append(obj)
        boxes[:, i] = _simulate_track(obj, spec, jumps, rng)
    visible = _boxes_visible(boxes, spec.width, spec.height)

    noise_rng = _rng(spec.seed, _STREAM_NOISE)
    frames: list[np.ndarray] = []
    for t in range(n):
        frame = _view(canvas, camera[t] + offset, spec.width, spec.height).astype(np.float32)
        for i, obj in enumerate(objects):
            if visible[t, i]:
                _composite(frame, obj, boxes[t, i])
        if spec.noise_sigma > 0:
            noise = noise_rng.standard_normal(frame.shape, dtype=np.float32)
            frame += noise * np.float32(spec.noise_sigma)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return SyntheticVideo(
        frames=frames, boxes=boxes, visible=visible, spec=spec, objects=objects, camera=camera
    )


# --------------------------------------------------------------------------- writers


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def _try_write(video: SyntheticVideo, target: Path, fourcc: str) -> str | None:
    """Write with one codec; return None on success or the reason it failed."""
    writer = cv2.VideoWriter(
        str(target), cv2.VideoWriter_fourcc(*fourcc), float(video.fps), video.size
    )
    try:
        if not writer.isOpened():
            target.unlink(missing_ok=True)
            return "cv2.VideoWriter could not be opened"
        for frame in video.frames:
            writer.write(frame)
    finally:
        writer.release()
    count = _count_frames(target)
    if count != video.n_frames:
        target.unlink(missing_ok=True)
        return f"read back {count} of {video.n_frames} frames"
    return None


def write_video(video: SyntheticVideo, path: str | Path) -> Path:
    """Write ``video`` with cv2.VideoWriter and return the path actually written.

    ``.mp4``/``.m4v``/``.mov`` try the 'mp4v' codec first and fall back to MJPG in
    an ``.avi`` next to it (same stem) when that writer cannot be opened or the
    result does not read back; ``.avi`` uses MJPG directly. The file is verified
    by reading it back and counting frames. Raises OSError when nothing worked.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".avi":
        attempts = [("MJPG", path)]
    elif suffix in (".mp4", ".m4v", ".mov"):
        attempts = [("mp4v", path), ("MJPG", path.with_suffix(".avi"))]
    else:
        raise ValueError(f"unsupported video extension {path.suffix!r} for {str(path)!r}: "
                         "use .mp4 or .avi")
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for fourcc, target in attempts:
        why = _try_write(video, target, fourcc)
        if why is None:
            if target != path:
                logger.warning("could not write %s with %s (%s); wrote MJPG %s instead",
                               path, attempts[0][0], problems[-1], target)
            return target
        problems.append(f"{fourcc} -> {target.name}: {why}")
    raise OSError(f"could not write video {str(path)!r}: " + "; ".join(problems))


def write_ground_truth(video: SyntheticVideo, path: str | Path) -> Path:
    """Write boxes and visibility to ``.json`` (with spec, objects, camera) or ``.csv``.

    CSV columns: ``frame,object_id,x,y,w,h,visible`` with one row per frame and
    object (invisible ones included, visible = 0/1).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        doc = {
            "format": "vistream-synthetic-gt/1",
            "box_format": "xywh",
            "width": video.spec.width,
            "height": video.spec.height,
            "fps": video.spec.fps,
            "n_frames": video.n_frames,
            "spec": video.spec.to_dict(),
            "objects": [
                {"id": o.id, "shape": o.shape, "color_bgr": list(o.color),
                 "width": o.width, "height": o.height}
                for o in video.objects
            ],
            "camera": None if video.camera is None else video.camera.tolist(),
            "boxes": video.boxes.tolist(),
            "visible": video.visible.tolist(),
        }
        path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["frame", "object_id", "x", "y", "w", "h", "visible"])
            for t in range(video.boxes.shape[0]):
                for i in range(video.boxes.shape[1]):
                    x, y, w, h = (repr(float(v)) for v in video.boxes[t, i])
                    out.writerow([t, i, x, y, w, h, int(video.visible[t, i])])
    else:
        raise ValueError(f"unsupported ground-truth extension {path.suffix!r}: use .json or .csv")
    return path


def read_ground_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(boxes, visible)`` back from a file written by :func:`write_ground_truth`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        n = doc["n_frames"]
        k = len(doc["objects"])
        boxes = np.asarray(doc["boxes"], np.float64).reshape(n, k, 4)
        visible = np.asarray(doc["visible"], bool).reshape(n, k)
        return boxes, visible
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        n = 1 + max((int(r["frame"]) for r in rows), default=-1)
        k = 1 + max((int(r["object_id"]) for r in rows), default=-1)
        boxes = np.zeros((n, k, 4), np.float64)
        visible = np.zeros((n, k), bool)
        for r in rows:
            t, i = int(r["frame"]), int(r["object_id"])
            boxes[t, i] = [float(r[c]) for c in ("x", "y", "w", "h")]
            visible[t, i] = r["visible"] == "1"
        return boxes, visible
    raise ValueError(f"unsupported ground-truth extension {path.suffix!r}: use .json or .csv")


def write_image_folder(
    video: SyntheticVideo,
    folder: str | Path,
    *,
    ext: str = ".png",
    prefix: str = "frame_",
    digits: int = 6,
) -> list[Path]:
    """Write each frame as ``<prefix><index zero-padded to digits><ext>`` in ``folder``.

    ``ext`` is ``.png`` (lossless) or ``.jpg``/``.jpeg`` (quality 95). Returns the paths.
    """
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"unsupported image extension {ext!r}: use .png or .jpg")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() != ".png" else []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(video.frames):
        p = folder / f"{prefix}{t:0{digits}d}{ext}"
        if not cv2.imwrite(str(p), frame, params):
            raise OSError(f"could not write image {str(p)!r}")
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line front end: write a sample video, ground truth and optionally frames."""
    d = SceneSpec()
    p = argparse.ArgumentParser(
        prog="python -m pipeline.synthetic",
        description="Generate a seeded synthetic video with small moving objects and ground truth.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--name", default="synthetic", help="file stem (default: synthetic)")
    p.add_argument("--background", default=d.background,
                   help=f"one of {', '.join(BACKGROUNDS)} or an image path")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--frames", type=int, default=d.n_frames)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--objects", type=int, default=d.n_objects)
    p.add_argument("--size", type=int, nargs=2, default=d.object_size, metavar=("MIN", "MAX"))
    p.add_argument("--pan-speed", type=float, default=d.pan_speed)
    p.add_argument("--pan-angle", type=float, default=d.pan_angle)
    p.add_argument("--shake", default="", help="comma-separated frame indices of camera jumps")
    p.add_argument("--shake-px", type=float, default=d.shake_px)
    p.add_argument("--noise", type=float, default=d.noise_sigma)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--format", choices=("mp4", "avi"), default="mp4")
    p.add_argument("--images", action="store_true", help="also write a folder of PNG frames")
    args = p.parse_args(argv)

    try:
        spec = SceneSpec(
            width=args.width, height=args.height, n_frames=args.frames, fps=args.fps,
            n_objects=args.objects, object_size=tuple(args.size), background=args.background,
            pan_speed=args.pan_speed, pan_angle=args.pan_angle,
            shake_frames=tuple(int(s) for s in args.shake.split(",") if s.strip()),
            shake_px=args.shake_px, noise_sigma=args.noise, seed=args.seed,
        )
    except ValueError as exc:
        p.error(str(exc))
    video = generate(spec)
    video_path = write_video(video, args.out / f"{args.name}.{args.format}")
    gt_path = write_ground_truth(video, args.out / f"{args.name}_gt.json")
    print(f"video:        {video_path}")
    print(f"ground truth: {gt_path}")
    if args.images:
        paths = write_image_folder(video, args.out / f"{args.name}_frames")
        print(f"frames:       {paths[0].parent} ({len(paths)} files)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
