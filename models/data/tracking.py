"""Seeded tracking sequences with attributes: the data of the small-object tracking benchmark
(its evaluation is :mod:`vistream.models.tracking.evaluate`; OTB folders a user has are read by
:mod:`vistream.models.data.otb`).

Generated sequences
-------------------
640x480 clips of 1-4 small targets (6-24 px, i.e. 0.01-0.19 % of the frame, far under the
1 % that defines a "small" target in arXiv 1910.10859) over the photographs bundled with
scikit-image, with exact per-frame ground truth. The scene machinery (camera path, background
canvas and view, object motion and anti-aliased compositing) is the one of
:mod:`vistream.models.data.scene`; this module adds what a tracking benchmark needs on top of it:

* **varied appearance** - shapes disc/square/blob and colour styles: ``vivid`` (saturated),
  ``pastel``, ``dark``, ``bright``, ``twotone`` (a core of a contrasting colour) and
  ``muted`` (the colour of the local background shifted by only 25-40 grey levels: a low
  contrast target);
* **camera shake** - 2-4 sudden, persistent re-aims of the camera by 30-120 px (as in
  :mod:`vistream.models.data.scene`, everything in view jumps together); some are *shake-and-return*
  pairs (the camera swings back 3-10 frames later). The frame of each jump is motion-blurred
  along the jump (the camera moved during the exposure). Sequences with jumps carry the
  ``shake`` attribute: these are the *drift* sequences of the issue;
* **partial occlusion** - a bar fixed in the scene (it moves with the camera, like a pole or
  a wire) placed across a target's path, perpendicular to its motion, narrower than the
  target (35-60 % of its extent), so the target passes behind it and is never hidden
  completely. The per-frame occluded share of each box is returned (``occlusion``);
* **blur** - defocus segments (Gaussian, sigma 1-2.5 px) of 10-40 frames;
* **illumination change** - a gain ramp to 0.5-0.7 or 1.3-1.5 over 10-40 frames with a small
  colour cast, optionally ramping back;
* **noise** - additive Gaussian noise, sigma 2-8 grey levels, applied last.

Ground truth is the drawn geometry, as in :mod:`vistream.models.data.scene`: ``boxes[t, i]`` is
``(x, y, w, h)`` in continuous pixel coordinates (pixel ``(r, c)`` covers
``[c, c+1) x [r, r+1)``); every pixel a target changes (before blur) lies inside the box
footprint ``[floor(x), ceil(x+w)) x [floor(y), ceil(y+h))``. Occlusion does not shrink the box
(OTB convention: the box is the object's extent). ``visible[t, i]`` is true when the box
overlaps the frame; only those frames are scored.

Attributes are per *track* (one target of one sequence), since some depend on the target:
``shake``, ``occlusion`` (occluded share >= 20 % in some frame), ``blur``, ``illumination``,
``noise`` (sigma >= 6), ``tiny`` (larger side <= 10 px), ``low_contrast`` (``muted`` style
or colour distance to the local background under 60) and ``multi`` (2+ targets, i.e.
look-alike distractors). Everything derives from the spec's seed; the same spec renders
byte-identical frames, and ``render(..., targets=False)`` renders the same clip (same noise,
bars, blur) without the targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from vistream.models.data.scene import (
    SHAPES,
    SceneSpec,
    SyntheticObject,
    background_canvas,
    boxes_visible,
    camera_path,
    composite,
    seeded_rng,
    simulate_track,
    view,
)

__all__ = [
    "ATTRIBUTES",
    "PHOTO_BACKGROUNDS",
    "STYLES",
    "TargetLook",
    "TrackingSequence",
    "TrackingSpec",
    "default_suite",
    "render",
    "suite_specs",
]

#: Per-track attributes, in table order.
ATTRIBUTES: tuple[str, ...] = ("shake", "occlusion", "blur", "illumination", "noise", "tiny",
                               "low_contrast", "multi")
#: Target colour styles.
STYLES: tuple[str, ...] = ("vivid", "pastel", "dark", "bright", "twotone", "muted")
#: Textured photos used as backgrounds by the default suite (bundled with scikit-image).
PHOTO_BACKGROUNDS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle",
                                      "grass", "gravel", "brick", "camera", "coins",
                                      "hubble_deep_field", "immunohistochemistry", "retina",
                                      "moon")

# Independent random streams (SeedSequence spawn keys) so that e.g. the number of targets does
# not change the noise or the camera path.
_S_CAMERA, _S_TARGETS, _S_EFFECTS, _S_NOISE, _S_OCCL = 11, 12, 13, 14, 15


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class TrackingSpec:
    """One benchmark sequence. Effects are switched on by the flags; their details (frames,
    magnitudes, directions) are drawn from ``seed``.

    Attributes:
        name: sequence name (used in tables).
        seed: seed of every random choice.
        n_frames, width, height: clip length and frame size.
        background: a :data:`vistream.models.data.scene.BACKGROUNDS` name or an image path.
        n_targets: 1-4 targets.
        target_size: inclusive (min, max) target extent in pixels.
        target_speed: (min, max) speed relative to the scene, px per frame.
        styles: colour styles to draw targets from (subset of :data:`STYLES`).
        pan_speed: slow camera pan, px per frame (direction drawn from the seed).
        shake: number of camera jumps (0 = none).
        shake_px: (min, max) jump length.
        occlusion: place an occluding bar on one target's path.
        blur: add a defocus segment.
        illumination: add a gain ramp.
        noise_sigma: additive Gaussian noise.
    """

    name: str = "seq"
    seed: int = 0
    n_frames: int = 120
    width: int = 640
    height: int = 480
    background: str = "astronaut"
    n_targets: int = 2
    target_size: tuple[int, int] = (6, 24)
    target_speed: tuple[float, float] = (0.5, 2.5)
    styles: tuple[str, ...] = STYLES
    pan_speed: float = 0.5
    shake: int = 0
    shake_px: tuple[float, float] = (30.0, 120.0)
    occlusion: bool = False
    blur: bool = False
    illumination: bool = False
    noise_sigma: float = 3.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "target_size", tuple(int(v) for v in self.target_size))
        set_(self, "target_speed", tuple(float(v) for v in self.target_speed))
        set_(self, "shake_px", tuple(float(v) for v in self.shake_px))
        set_(self, "styles", tuple(self.styles))
        if not 1 <= self.n_targets <= 4:
            raise ValueError(f"n_targets must be within 1..4, got {self.n_targets}")
        if not self.styles or any(s not in STYLES for s in self.styles):
            raise ValueError(f"styles must be a non-empty subset of {STYLES}, got {self.styles}")
        if self.shake < 0 or (self.shake and self.n_frames < 20):
            raise ValueError("shake needs shake >= 0 and at least 20 frames")
        if not 0 <= self.shake_px[0] <= self.shake_px[1]:
            raise ValueError(f"shake_px must be (min, max), got {self.shake_px}")
        # SceneSpec validates sizes, speeds, background and frame count.
        self.scene()

    def scene(self) -> SceneSpec:
        """The :class:`vistream.models.data.scene.SceneSpec` whose helpers draw this sequence."""
        return SceneSpec(
            width=self.width, height=self.height, n_frames=self.n_frames, n_objects=0,
            object_size=self.target_size, object_speed=self.target_speed, turn_prob=0.02,
            background=self.background, pan_speed=self.pan_speed,
            pan_angle=float(seeded_rng(self.seed, _S_CAMERA, 0).uniform(0, 360)),
            noise_sigma=self.noise_sigma, seed=self.seed,
        )


@dataclass(frozen=True)
class TargetLook:
    """Appearance of one target."""

    shape: str
    style: str
    color: tuple[int, int, int]  # BGR
    width: int
    height: int
    core_color: tuple[int, int, int] | None = None  # twotone: colour of the inner half


@dataclass
class TrackingSequence:
    """A sequence with ground truth for every target.

    Attributes:
        name: sequence name.
        frames: indexable frames (a list for generated clips, :class:`LazyFrames` for OTB).
        boxes: float64 (n_frames, n_targets, 4) x, y, w, h.
        visible: bool (n_frames, n_targets): frames that count in the metrics.
        attributes: per target, the set of attribute names (see :data:`ATTRIBUTES`).
        occlusion: float (n_frames, n_targets) occluded share of each box (0 for OTB).
        camera: float (n_frames, 2) camera origin (generated clips only).
        shake_frames: frames at which the camera jumped (generated clips only).
        looks: target appearances (generated clips only).
        spec: the generating spec (None for OTB).
    """

    name: str
    frames: Sequence[np.ndarray]
    boxes: np.ndarray
    visible: np.ndarray
    attributes: list[set[str]]
    occlusion: np.ndarray | None = None
    camera: np.ndarray | None = None
    shake_frames: tuple[int, ...] = ()
    looks: list[TargetLook] = field(default_factory=list)
    spec: TrackingSpec | None = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_targets(self) -> int:
        return self.boxes.shape[1]


# --------------------------------------------------------------------------- generation


def _shake_jumps(spec: TrackingSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Per-frame camera jumps (n_frames, 2) and the frames where a jump happens."""
    jumps = np.zeros((spec.n_frames, 2))
    frames: list[int] = []
    if spec.shake == 0:
        return jumps, frames
    n = spec.n_frames
    # Spread the events over [15, n-5): one slot each so they do not pile up.
    lo, hi = min(15, n // 4), n - 5
    edges = np.linspace(lo, hi, spec.shake + 1)
    for j in range(spec.shake):
        k = int(rng.integers(int(edges[j]), max(int(edges[j]) + 1, int(edges[j + 1]) - 2)))
        length = rng.uniform(*spec.shake_px)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        d = length * np.array([math.cos(angle), math.sin(angle)])
        jumps[k] += np.round(d)
        frames.append(k)
        if rng.random() < 0.4:  # shake-and-return: the camera swings back a few frames later
            back = k + int(rng.integers(3, 11))
            if back < min(n, int(edges[j + 1])):
                jumps[back] -= np.round(d * rng.uniform(0.8, 1.0))
                frames.append(back)
    return jumps, sorted(set(frames))


def _hsv_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    px = np.array([[[h, s, v]]], np.uint8)
    b, g, r = (int(c) for c in cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0])
    return b, g, r


def _make_look(spec: TrackingSpec, rng: np.random.Generator) -> TargetLook:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    lo, hi = spec.target_size
    w = int(rng.integers(lo, hi + 1))
    h = int(rng.integers(lo, hi + 1)) if shape == "blob" else w
    style = spec.styles[int(rng.integers(len(spec.styles)))]
    hue = float(rng.integers(0, 180))
    core = None
    if style == "vivid":
        color = _hsv_bgr(hue, rng.integers(200, 256), rng.integers(200, 256))
    elif style == "pastel":
        color = _hsv_bgr(hue, rng.integers(60, 140), rng.integers(200, 256))
    elif style == "dark":
        color = _hsv_bgr(hue, rng.integers(0, 256), rng.integers(15, 60))
    elif style == "bright":
        color = _hsv_bgr(hue, rng.integers(0, 40), rng.integers(235, 256))
    elif style == "twotone":
        color = _hsv_bgr(hue, rng.integers(180, 256), rng.integers(180, 256))
        core = _hsv_bgr((hue + 90) % 180, rng.integers(150, 256), rng.integers(40, 256))
    else:  # muted: set from the local background once the start position is known
        color = (128, 128, 128)
    return TargetLook(shape, style, color, w, h, core)


def _local_mean(frame: np.ndarray, box: np.ndarray, pad: float = 2.0) -> np.ndarray:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    r = pad * max(w, h)
    H, W = frame.shape[:2]
    x0, x1 = int(max(0, cx - r)), int(min(W, cx + r))
    y0, y1 = int(max(0, cy - r)), int(min(H, cy + r))
    return frame[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def _muted(look: TargetLook, local: np.ndarray, rng: np.random.Generator) -> TargetLook:
    """A colour 25-40 grey levels away from the local background (sign per channel)."""
    delta = rng.uniform(25, 40)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    # Push towards the side with room, so clipping does not eat the contrast.
    direction = np.where(local + direction * delta > 250, -np.abs(direction), direction)
    direction = np.where(local + direction * delta < 5, np.abs(direction), direction)
    color = np.clip(local + direction * delta, 0, 255)
    return replace(look, color=tuple(int(c) for c in np.rint(color)))


def _occluder(spec: TrackingSpec, boxes: np.ndarray, camera: np.ndarray,
              visible: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple] | None:
    """A bar in scene coordinates across one target's path: returns (bar_scene_xyxy, colour)."""
    n, k = boxes.shape[:2]
    i = int(rng.integers(k))
    # Middle frame of the pass: somewhere in the second and third quarters, target visible.
    candidates = [t for t in range(n // 4, 3 * n // 4) if visible[t, i]]
    if not candidates:
        return None
    t = int(rng.choice(candidates))
    x, y, w, h = boxes[t, i]
    cx, cy = x + w / 2, y + h / 2
    t2 = min(t + 3, n - 1)
    t1 = max(t - 3, 0)
    # Motion relative to the scene (camera jumps move the image, not the target).
    vel = (boxes[t2, i, :2] + camera[t2]) - (boxes[t1, i, :2] + camera[t1])
    frac = rng.uniform(0.35, 0.6)
    length = rng.uniform(4.0, 8.0) * max(w, h)
    sx, sy = cx + camera[t, 0], cy + camera[t, 1]  # scene coordinates
    if abs(vel[0]) >= abs(vel[1]):  # moving sideways: a vertical bar
        bw, bh = frac * w, length
    else:
        bw, bh = length, frac * h
    bar = np.array([sx - bw / 2, sy - bh / 2, sx + bw / 2, sy + bh / 2])
    grey = float(rng.uniform(20, 235))
    color = tuple(float(np.clip(grey + rng.uniform(-20, 20), 0, 255)) for _ in range(3))
    return bar, color


def _rect_coverage(x0: float, y0: float, x1: float, y1: float, r0: int, c0: int,
                   shape: tuple[int, int]) -> np.ndarray:
    """Exact area coverage of [x0,x1)x[y0,y1) on pixels rows r0.., cols c0.. (float32)."""
    rows = np.arange(r0, r0 + shape[0], dtype=np.float64)
    cols = np.arange(c0, c0 + shape[1], dtype=np.float64)
    ax = np.clip(np.minimum(cols + 1, x1) - np.maximum(cols, x0), 0, 1)
    ay = np.clip(np.minimum(rows + 1, y1) - np.maximum(rows, y0), 0, 1)
    return (ay[:, None] * ax[None, :]).astype(np.float32)


def _draw_bar(frame: np.ndarray, bar: np.ndarray, color: tuple) -> None:
    x0, y0, x1, y1 = bar
    H, W = frame.shape[:2]
    c0, r0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    c1, r1 = min(W, math.ceil(x1)), min(H, math.ceil(y1))
    if c0 >= c1 or r0 >= r1:
        return
    a = _rect_coverage(x0, y0, x1, y1, r0, c0, (r1 - r0, c1 - c0))[:, :, None]
    patch = frame[r0:r1, c0:c1]
    frame[r0:r1, c0:c1] = patch * (1 - a) + np.asarray(color, np.float32) * a


def _box_bar_overlap(box: np.ndarray, bar: np.ndarray) -> float:
    x, y, w, h = box
    ix = max(0.0, min(x + w, bar[2]) - max(x, bar[0]))
    iy = max(0.0, min(y + h, bar[3]) - max(y, bar[1]))
    return float(ix * iy / max(w * h, 1e-9))


def _gain_profile(spec: TrackingSpec, rng: np.random.Generator) -> np.ndarray:
    """Per-frame BGR gain (n_frames, 3)."""
    n = spec.n_frames
    gain = np.ones((n, 3))
    if not spec.illumination:
        return gain
    t0 = int(rng.integers(n // 6, max(n // 6 + 1, n // 2)))
    dur = int(rng.integers(10, 41))
    target = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.3, 1.5)
    cast = 1.0 + rng.uniform(-0.05, 0.05, 3)
    level = np.ones(n)
    ramp = np.clip((np.arange(n) - t0) / dur, 0, 1)
    level = 1 + (target - 1) * ramp
    if rng.random() < 0.5:  # ramp back
        t1 = t0 + dur + int(rng.integers(10, 30))
        back = np.clip((np.arange(n) - t1) / dur, 0, 1)
        level = level + (1 - target) * back
    castp = 1 + (cast - 1)[None, :] * ramp[:, None]
    return level[:, None] * castp


def _blur_profile(spec: TrackingSpec, rng: np.random.Generator) -> np.ndarray:
    """Per-frame Gaussian defocus sigma (0 = sharp)."""
    sigma = np.zeros(spec.n_frames)
    if spec.blur:
        n = spec.n_frames
        t0 = int(rng.integers(n // 8, max(n // 8 + 1, 2 * n // 3)))
        dur = int(rng.integers(10, 41))
        sigma[t0:t0 + dur] = rng.uniform(1.0, 2.5)
    return sigma


def _motion_kernel(d: np.ndarray) -> np.ndarray:
    """Line kernel along a camera jump: the part of the jump seen during the exposure."""
    length = float(np.clip(np.hypot(*d) / 6.0, 3.0, 15.0))
    size = int(math.ceil(length)) | 1
    k = np.zeros((size, size), np.float32)
    c = size // 2
    ux, uy = d / (np.hypot(*d) + 1e-9)
    for s in np.linspace(-length / 2, length / 2, 4 * size):
        k[int(round(c + s * uy)) % size, int(round(c + s * ux)) % size] += 1
    return k / k.sum()


def render(spec: TrackingSpec, targets: bool = True) -> TrackingSequence:
    """Render the sequence of ``spec``. ``targets=False`` renders the same clip (camera,
    bars, blur, illumination, noise) without the targets; its ground truth is unchanged."""
    scene = spec.scene()
    cam_rng = seeded_rng(spec.seed, _S_CAMERA, 1)
    jumps, shake_frames = _shake_jumps(spec, cam_rng)
    camera = camera_path(scene, jumps)
    canvas, offset = background_canvas(scene, camera)
    first_view = view(canvas, camera[0] + offset, spec.width, spec.height)

    n, k = spec.n_frames, spec.n_targets
    looks: list[TargetLook] = []
    boxes = np.zeros((n, k, 4))
    for i in range(k):
        rng = seeded_rng(spec.seed, _S_TARGETS, i)
        look = _make_look(spec, rng)
        obj = SyntheticObject(id=i, shape=look.shape, color=look.color,
                                  width=look.width, height=look.height)
        boxes[:, i] = simulate_track(obj, scene, jumps, rng)
        if look.style == "muted":
            look = _muted(look, _local_mean(first_view, boxes[0, i]), rng)
        looks.append(look)
    visible = boxes_visible(boxes, spec.width, spec.height)

    eff_rng = seeded_rng(spec.seed, _S_EFFECTS)
    gain = _gain_profile(spec, eff_rng)
    defocus = _blur_profile(spec, eff_rng)
    occluder = (_occluder(spec, boxes, camera, visible, seeded_rng(spec.seed, _S_OCCL))
                if spec.occlusion else None)
    occl = np.zeros((n, k))

    noise_rng = seeded_rng(spec.seed, _S_NOISE)
    frames: list[np.ndarray] = []
    for t in range(n):
        frame = view(canvas, camera[t] + offset, spec.width, spec.height).astype(np.float32)
        if targets:
            for i, look in enumerate(looks):
                if visible[t, i]:
                    _draw_target(frame, look, boxes[t, i])
        if occluder is not None:
            bar, bar_color = occluder
            bar_img = bar - np.array([camera[t, 0], camera[t, 1]] * 2)
            _draw_bar(frame, bar_img, bar_color)
            occl[t] = [_box_bar_overlap(boxes[t, i], bar_img) for i in range(k)]
        if t in shake_frames:
            frame = cv2.filter2D(frame, -1, _motion_kernel(jumps[t]), borderType=cv2.BORDER_REFLECT)
        if defocus[t] > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), float(defocus[t]))
        if spec.illumination:
            frame = cv2.multiply(frame, tuple(float(g) for g in gain[t]) + (0.0,))
        if spec.noise_sigma > 0:
            noise = noise_rng.standard_normal(frame.shape, dtype=np.float32)
            frame = cv2.scaleAdd(noise, float(spec.noise_sigma), frame)
        # round half to even and saturate to 0..255 (negative values are clipped first:
        # convertScaleAbs would mirror them)
        frames.append(cv2.convertScaleAbs(cv2.max(frame, 0.0)))

    attributes = _attributes(spec, looks, boxes, first_view, occl, shake_frames)
    return TrackingSequence(
        name=spec.name, frames=frames, boxes=boxes, visible=visible, attributes=attributes,
        occlusion=occl, camera=camera, shake_frames=tuple(shake_frames), looks=looks, spec=spec)


def _draw_target(frame: np.ndarray, look: TargetLook, box: np.ndarray) -> None:
    obj = SyntheticObject(id=0, shape=look.shape, color=look.color,
                              width=look.width, height=look.height)
    composite(frame, obj, box)
    if look.core_color is not None:
        x, y, w, h = box
        core = np.array([x + w / 4, y + h / 4, w / 2, h / 2])
        composite(frame, replace(obj, color=look.core_color), core)


def _attributes(spec: TrackingSpec, looks: list[TargetLook], boxes: np.ndarray,
                first_view: np.ndarray, occl: np.ndarray, shake_frames: list[int]
                ) -> list[set[str]]:
    out = []
    for i, look in enumerate(looks):
        a: set[str] = set()
        if shake_frames:
            a.add("shake")
        if occl[:, i].max(initial=0) >= 0.2:
            a.add("occlusion")
        if spec.blur:
            a.add("blur")
        if spec.illumination:
            a.add("illumination")
        if spec.noise_sigma >= 6:
            a.add("noise")
        if max(look.width, look.height) <= 10:
            a.add("tiny")
        local = _local_mean(first_view, boxes[0, i])
        if look.style == "muted" or np.linalg.norm(np.asarray(look.color, float) - local) < 60:
            a.add("low_contrast")
        if len(looks) > 1:
            a.add("multi")
        out.append(a)
    return out


# --------------------------------------------------------------------------- suites


def suite_specs(n_sequences: int = 12, n_frames: int = 120, seed: int = 2019,
                max_targets: int = 4) -> list[TrackingSpec]:
    """The benchmark suite: every other sequence has camera shake (the drift subset); blur,
    illumination change, occlusion and strong noise are switched on at random (p = 0.4, 0.4,
    0.5, 0.3); 1..max_targets targets; backgrounds cycle through :data:`PHOTO_BACKGROUNDS`."""
    specs = []
    for j in range(n_sequences):
        rng = seeded_rng(seed, 100, j)
        specs.append(TrackingSpec(
            name=f"s{j:02d}",
            seed=int(rng.integers(2**31)),
            n_frames=n_frames,
            background=PHOTO_BACKGROUNDS[(j + seed) % len(PHOTO_BACKGROUNDS)],
            n_targets=int(rng.integers(1, max_targets + 1)),
            pan_speed=float(rng.uniform(0.0, 1.0)),
            shake=int(rng.integers(2, 5)) if j % 2 == 0 else 0,
            blur=bool(rng.random() < 0.4),
            illumination=bool(rng.random() < 0.4),
            occlusion=bool(rng.random() < 0.5),
            noise_sigma=float(rng.uniform(6, 8) if rng.random() < 0.3 else rng.uniform(2, 5)),
        ))
    return specs


def default_suite(n_sequences: int = 12, n_frames: int = 120, seed: int = 2019,
                  max_targets: int = 4) -> Iterator[TrackingSequence]:
    """Render :func:`suite_specs` one sequence at a time (a clip is ~110 MB)."""
    for spec in suite_specs(n_sequences, n_frames, seed, max_targets):
        yield render(spec)
