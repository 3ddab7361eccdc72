"""The scene of the seeded synthetic clips: backgrounds, camera path, moving objects and their
anti-aliased drawing, with exact ground truth.

The sample videos (:mod:`vistream.models.data.video`) and the tracking sequences
(:mod:`vistream.models.data.tracking`) are both drawn with the public functions here.

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
    The per-frame origin is returned as :attr:`~vistream.models.data.video.SyntheticVideo.camera`, i.e. the
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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "BACKGROUNDS",
    "SHAPES",
    "STREAM_NOISE",
    "STREAM_OBJECTS",
    "STREAM_SHAKE",
    "SceneSpec",
    "SyntheticObject",
    "background_canvas",
    "boxes_visible",
    "camera_jumps",
    "camera_path",
    "check_background",
    "composite",
    "load_background",
    "make_object",
    "object_alpha",
    "seeded_rng",
    "simulate_track",
    "view",
]

#: Object shapes the generator can draw.
SHAPES: tuple[str, ...] = ("disc", "square", "blob")

_SUPERSAMPLE = 4
_FLAT_GREY = 128

# Random streams (SeedSequence spawn keys); separate so that e.g. the number of
# objects does not change the noise or the shake directions.
STREAM_OBJECTS = 1
STREAM_SHAKE = 2
STREAM_NOISE = 3


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
    check_background(name)
    return _cached_background(name).copy()


def check_background(name: str) -> None:
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
        check_background(self.background)

    def to_dict(self) -> dict:
        """JSON-friendly dictionary of the spec."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d


@dataclass(frozen=True)
class SyntheticObject:
    """Appearance of one object; its position per frame lives in the clip's ``boxes``."""

    id: int
    shape: str
    color: tuple[int, int, int]  # B, G, R
    width: int
    height: int



# --------------------------------------------------------------------------- generation


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream: ``seed`` with the spawn key ``key``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _snap(values: np.ndarray) -> np.ndarray:
    """Snap values within 1e-9 of an integer (cos(90 deg) is not exactly 0)."""
    r = np.rint(values)
    return np.where(np.abs(values - r) < 1e-9, r, values)


def camera_jumps(spec: SceneSpec) -> np.ndarray:
    """Per-frame camera jumps (n_frames, 2) of the spec's shake events (zero elsewhere)."""
    jumps = np.zeros((spec.n_frames, 2))
    rng = seeded_rng(spec.seed, STREAM_SHAKE)
    for k in spec.shake_frames:
        if spec.shake_angle is None:
            angle = rng.uniform(0.0, 2.0 * math.pi)
        else:
            angle = math.radians(spec.shake_angle)
        jumps[k] = spec.shake_px * math.cos(angle), spec.shake_px * math.sin(angle)
    return _snap(jumps)


def camera_path(spec: SceneSpec, jumps: np.ndarray) -> np.ndarray:
    """Camera origin per frame (n_frames, 2): the pan plus the accumulated jumps."""
    a = math.radians(spec.pan_angle)
    pan = np.array([math.cos(a), math.sin(a)]) * spec.pan_speed
    t = np.arange(spec.n_frames, dtype=np.float64)[:, None]
    return _snap(t * pan + np.cumsum(jumps, axis=0))


def background_canvas(spec: SceneSpec, camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def view(canvas: np.ndarray, origin: np.ndarray, width: int, height: int) -> np.ndarray:
    """The ``width`` x ``height`` view of ``canvas`` at ``origin`` (a crop at integer
    origins, bilinear sampling otherwise)."""
    ox, oy = float(origin[0]), float(origin[1])
    if ox.is_integer() and oy.is_integer():
        x, y = int(ox), int(oy)
        return canvas[y : y + height, x : x + width]
    m = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy]])
    return cv2.warpAffine(
        canvas, m, (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT,
    )


def make_object(index: int, spec: SceneSpec, rng: np.random.Generator) -> SyntheticObject:
    """A seeded object appearance: shape, size within the spec's range, saturated colour."""
    shape = spec.shapes[int(rng.integers(len(spec.shapes)))]
    lo, hi = spec.object_size
    w = int(rng.integers(lo, hi + 1))
    h = int(rng.integers(lo, hi + 1)) if shape == "blob" else w
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(200, 256), rng.integers(200, 256)]]], np.uint8
    )
    b, g, r = (int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return SyntheticObject(id=index, shape=shape, color=(b, g, r), width=w, height=h)


def simulate_track(
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


def composite(frame: np.ndarray, obj: SyntheticObject, box: np.ndarray) -> None:
    """Blend ``obj`` drawn at ``box`` into the float ``frame`` in place (clipped to the frame)."""
    alpha, r0, c0 = object_alpha(obj, box)
    blend_alpha(frame, alpha, r0, c0, obj.color)


def blend_alpha(frame: np.ndarray, alpha: np.ndarray, r0: int, c0: int,
                color: tuple[int, int, int]) -> None:
    """Blend ``color`` through the coverage ``alpha`` (top-left at row ``r0``, column ``c0``,
    possibly outside) into the float ``frame`` in place, clipped to the frame."""
    fh, fw = frame.shape[:2]
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + alpha.shape[0], fh), min(c0 + alpha.shape[1], fw)
    if rr0 >= rr1 or cc0 >= cc1:
        return
    a = alpha[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0, None]
    patch = frame[rr0:rr1, cc0:cc1]
    frame[rr0:rr1, cc0:cc1] = patch * (1.0 - a) + np.asarray(color, np.float32) * a


def boxes_visible(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """True where an (x, y, w, h) box overlaps the ``width`` x ``height`` frame."""
    x, y, w, h = (boxes[..., i] for i in range(4))
    return (x < width) & (x + w > 0) & (y < height) & (y + h > 0)


