"""Seeded deblurring data with ground-truth captions, and a GoPro-layout folder loader.

Scenes: a random crop of one of scikit-image's bundled colour photos (no download) with
1-3 composited solid objects (circle, square, triangle; six colours; small or big). The scene
description gives the ground-truth caption, one phrase per object ordered left to right,
``<size> <colour> <shape> <vertical> <horizontal>``, joined by the relation of each object to
the next (``left_of`` / ``above`` / ``below``), e.g.
``small red circle top left left_of big blue square bottom right``.

Blur: camera-shake kernels from a random trajectory (a 2-D random walk with inertia and
occasional jerks, in the spirit of Boracchi & Foi's trajectory model), rasterised with bilinear
splatting into a ``k x k`` kernel that is non-negative and sums to one; the blurred image is
the (true) convolution of the sharp image with it (reflect borders) plus Gaussian noise.
Two levels: ``severe`` (17-23 px kernels, long paths, noise sigma 0.01-0.02) and ``mild``
(5-9 px, short paths, sigma 0.003-0.008).

Training scenes can be *augmented*: the photo crop is turned by a random element of the
dihedral group (flips, transposition) before objects are composited, and a grey photo gets a
random tint. Training draws its photos from ``TRAINING_POOLS``: ``bundled`` (the eight colour
photos of the held-out sets) or ``wide`` (those and eleven more of scikit-image's images,
textures such as brick, grass and gravel among them). Trained on the eight photos without
augmentation, the medium generator learned them by heart: it lost 0.76-1.32 dB on mirrored,
upside-down or transposed held-out scenes (docs/deblur.md, "Memorised photos"). Held-out
scenes are never augmented, so the evaluation sets are the same with or without it.

``UNSEEN_PHOTOS`` (scikit-learn's two bundled sample photos) never appear in training: the
``severe-unseen`` evaluation set measures what the generator does on photos it has not seen.

Images here are float32 RGB in [0, 1], HWC. Everything is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "cat",
          "hubble_deep_field")
#: scikit-learn's bundled sample photos; held out from training (``severe-unseen``)
UNSEEN_PHOTOS = ("china", "flower")
#: more of scikit-image's bundled images, mostly grey textures and scenes (brick, grass,
#: gravel...): with ``PHOTOS`` the *wide* training pool; grey ones get a random tint
EXTRA_PHOTOS = ("brick", "grass", "gravel", "camera", "coins", "moon", "text", "page", "clock", "cell",
                "colorwheel")
TRAINING_POOLS: dict[str, tuple[str, ...]] = {"bundled": PHOTOS, "wide": PHOTOS + EXTRA_PHOTOS}
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1), "white": (0.97, 0.97, 0.97), "black": (0.04, 0.04, 0.04),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
VPOS = ("top", "middle", "bottom")
HPOS = ("left", "centre", "right")
RELATIONS = ("left_of", "above", "below")
SPECIALS = ("<pad>", "<bos>", "<eos>")
VOCAB: tuple[str, ...] = SPECIALS + SIZES + tuple(COLOURS) + SHAPES + VPOS + HPOS + RELATIONS
WORD2ID = {w: i for i, w in enumerate(VOCAB)}
PAD, BOS, EOS = 0, 1, 2
PHRASE_LEN = 5          # tokens of one object phrase
MAX_OBJECTS = 3
MAX_LEN = MAX_OBJECTS * (PHRASE_LEN + 1)  # phrases, relations and <eos>

LEVELS = {
    # kernel size range, trajectory steps, path length scale (px), noise sigma range
    "severe": {"ksize": (17, 23), "length": (0.55, 0.95), "noise": (0.01, 0.02)},
    "mild": {"ksize": (5, 9), "length": (0.4, 0.8), "noise": (0.003, 0.008)},
}


#: Evaluation sets: name -> (blur level, photos). No training pool holds ``UNSEEN_PHOTOS``.
EVAL_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "severe": ("severe", PHOTOS),
    "mild": ("mild", PHOTOS),
    "severe-unseen": ("severe", UNSEEN_PHOTOS),
}


@cache
def photo(name: str) -> np.ndarray:
    """A bundled photo (scikit-image's, or scikit-learn's ``UNSEEN_PHOTOS``) as float32 RGB in
    [0, 1] (grey photos made RGB)."""
    if name in UNSEEN_PHOTOS:
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return (img[..., :3].astype(np.float32) / 255.0)


@cache
def _is_grey(name: str) -> bool:
    img = photo(name)
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


# --------------------------------------------------------------------------- kernels


def motion_kernel(rng: np.random.Generator, level: str = "severe", ksize: int | None = None) -> np.ndarray:
    """A random camera-shake kernel: non-negative, sums to 1, odd size ``ksize``.

    The camera path is a random walk whose velocity keeps most of its direction (inertia),
    gets Gaussian perturbations and, with small probability, a jerk; the path is scaled to a
    random fraction of the kernel size and splatted bilinearly.
    """
    spec = LEVELS[level]
    if ksize is None:
        lo, hi = spec["ksize"]
        ksize = int(rng.integers(lo // 2, hi // 2 + 1)) * 2 + 1
    steps = 64
    angle = rng.uniform(0, 2 * np.pi)
    v = np.array([np.cos(angle), np.sin(angle)])
    pos = np.zeros((steps, 2))
    p = np.zeros(2)
    for t in range(steps):
        v = 0.85 * v + 0.35 * rng.normal(size=2)
        if rng.random() < 0.05:  # a jerk of the hand
            v += rng.normal(size=2) * 1.5
        p = p + v
        pos[t] = p
    pos -= pos.mean(0)
    extent = np.abs(pos).max() + 1e-6
    length = rng.uniform(*spec["length"])
    pos *= (ksize - 1) / 2 * length / extent
    c = (ksize - 1) / 2
    k = np.zeros((ksize, ksize), np.float64)
    for x, y in pos + c:
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                          (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = min(max(x0 + dx, 0), ksize - 1), min(max(y0 + dy, 0), ksize - 1)
            k[yi, xi] += w
    k = np.clip(k, 0, None)
    return (k / k.sum()).astype(np.float32)


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """True 2-D convolution (not correlation) of an HWC float image, reflected borders."""
    import cv2

    return cv2.filter2D(image, -1, kernel[::-1, ::-1].copy(), borderType=cv2.BORDER_REFLECT)


def blur_image(image: np.ndarray, rng: np.random.Generator, level: str = "severe",
               kernel: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(blurred, kernel, noise sigma): convolve with a motion kernel and add Gaussian noise."""
    k = motion_kernel(rng, level) if kernel is None else kernel
    sigma = float(rng.uniform(*LEVELS[level]["noise"]))
    b = convolve(image, k) + rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.clip(b, 0, 1).astype(np.float32), k, sigma


# --------------------------------------------------------------------------- scenes


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float

    def phrase(self, w: int, h: int) -> list[str]:
        v = VPOS[min(int(3 * self.cy / h), 2)]
        hz = HPOS[min(int(3 * self.cx / w), 2)]
        return [self.size, self.colour, self.shape, v, hz]


@dataclass
class Sample:
    sharp: np.ndarray
    blurred: np.ndarray
    kernel: np.ndarray
    sigma: float
    caption: list[str]
    level: str
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def tokens(self) -> np.ndarray:
        return encode_caption(self.caption)


def relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left_of"  # objects are sorted left to right, so dx >= 0
    return "above" if dy > 0 else "below"


def caption_of(objects: list[SceneObject], w: int, h: int) -> list[str]:
    objs = sorted(objects, key=lambda o: o.cx)
    words: list[str] = []
    for i, o in enumerate(objs):
        if i:
            words.append(relation(objs[i - 1], o))
        words += o.phrase(w, h)
    return words


def encode_caption(words: list[str]) -> np.ndarray:
    """Token ids: the words, then <eos>, padded with <pad> to MAX_LEN."""
    ids = [WORD2ID[w] for w in words][: MAX_LEN - 1] + [EOS]
    return np.array(ids + [PAD] * (MAX_LEN - len(ids)), np.int64)


def decode_caption(ids) -> list[str]:
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i >= len(SPECIALS):
            out.append(VOCAB[i])
    return out


def _draw(img: np.ndarray, o: SceneObject) -> None:
    import cv2

    col = COLOURS[o.colour]
    s = 8  # sub-pixel precision bits for anti-aliased edges
    c = (int(o.cx * (1 << s)), int(o.cy * (1 << s)))
    r = int(o.r * (1 << s))
    if o.shape == "circle":
        cv2.circle(img, c, r, col, -1, cv2.LINE_AA, s)
    elif o.shape == "square":
        a = int(o.r * 0.85 * (1 << s))
        pts = np.array([[c[0] - a, c[1] - a], [c[0] + a, c[1] - a], [c[0] + a, c[1] + a],
                        [c[0] - a, c[1] + a]], np.int32)
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA, s)
    else:
        pts = np.array([[c[0], c[1] - r], [c[0] + int(r * 0.95), c[1] + int(r * 0.8)],
                        [c[0] - int(r * 0.95), c[1] + int(r * 0.8)]], np.int32)
        cv2.fillPoly(img, [pts], col, cv2.LINE_AA, s)


def make_scene(rng: np.random.Generator, width: int = 96, height: int = 96,
               photos: tuple[str, ...] = PHOTOS,
               augment: bool = False) -> tuple[np.ndarray, list[SceneObject]]:
    """A sharp scene (float32 RGB) and its objects; ``augment`` turns the photo crop by a
    random flip / transposition first (drawn from ``rng`` only when asked, so unaugmented
    scenes do not change)."""
    import cv2

    name = photos[int(rng.integers(len(photos)))]
    src = photo(name)
    H, W = src.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch = int(min(H, W * height / width) * scale)
    cw = int(ch * width / height)
    y0, x0 = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if augment:
        if _is_grey(name):
            gain = rng.uniform(0.4, 1.0, 3).astype(np.float32)  # a grey photo: tint it
            crop = crop * gain + rng.uniform(0, 1 - gain).astype(np.float32)
        turn = int(rng.integers(8))
        crop = crop[::-1] if turn & 1 else crop
        crop = crop[:, ::-1] if turn & 2 else crop
        crop = crop.transpose(1, 0, 2) if turn & 4 and ch == cw else crop  # square crops only
    img = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img, np.float32)
    objs: list[SceneObject] = []
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    m = min(width, height)
    for _ in range(40):
        if len(objs) == n:
            break
        size = SIZES[int(rng.integers(2))]
        r = m * (rng.uniform(0.08, 0.11) if size == "small" else rng.uniform(0.15, 0.2))
        cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
        if any(np.hypot(cx - o.cx, cy - o.cy) < r + o.r + 2 for o in objs):
            continue
        objs.append(SceneObject(SHAPES[int(rng.integers(3))], tuple(COLOURS)[int(rng.integers(6))],
                                size, cx, cy, r))
    for o in objs:
        _draw(img, o)
    return np.clip(img, 0, 1), objs


def make_sample(seed: int, level: str = "severe", width: int = 96, height: int = 96,
                photos: tuple[str, ...] = PHOTOS, augment: bool = False) -> Sample:
    rng = np.random.default_rng(seed)
    sharp, objs = make_scene(rng, width, height, photos, augment)
    blurred, k, sigma = blur_image(sharp, rng, level)
    return Sample(sharp, blurred, k, sigma, caption_of(objs, width, height), level, objs)


#: Seeds of the held-out evaluation sets never overlap training seeds (training uses
#: seeds below EVAL_SEED_BASE).
EVAL_SEED_BASE = 10_000_000


def eval_set(name: str, n: int, width: int = 96, height: int = 96, offset: int = 0) -> list[Sample]:
    """``n`` held-out scenes of the evaluation set ``name`` (a key of ``EVAL_SETS``)."""
    if name not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; choose from {', '.join(EVAL_SETS)}")
    level, photos = EVAL_SETS[name]
    base = EVAL_SEED_BASE + 1_000_000 * list(EVAL_SETS).index(name) + offset
    return [make_sample(base + i, level, width, height, photos) for i in range(n)]


#: The captioner's attention grid is GRID x GRID cells over the whole image.
GRID = 12


def object_maps(objects: list[SceneObject], width: int, height: int, grid: int = GRID) -> np.ndarray:
    """(MAX_OBJECTS, grid*grid) float32: for each object in caption order (left to right), the
    attention-grid cells it covers (cell centres within ``r`` plus half a cell of its centre, at
    least the cell holding the centre), each row summing to 1; rows of absent objects are zero.
    The grounding target of the object nodes' spatial attention (``s3e.grounding_loss``)."""
    out = np.zeros((MAX_OBJECTS, grid * grid), np.float32)
    cw, ch = width / grid, height / grid
    cx = (np.arange(grid) + 0.5) * cw
    cy = (np.arange(grid) + 0.5) * ch
    for j, o in enumerate(sorted(objects, key=lambda o: o.cx)[:MAX_OBJECTS]):
        d = np.hypot(cx[None, :] - o.cx, cy[:, None] - o.cy)
        cells = d <= o.r + 0.5 * max(cw, ch)
        cells[min(int(o.cy / ch), grid - 1), min(int(o.cx / cw), grid - 1)] = True
        out[j] = cells.ravel() / cells.sum()
    return out


def training_batch(rng: np.random.Generator, batch: int, size: int = 96,
                   severe_fraction: float = 0.7, augment: bool = False,
                   photos: tuple[str, ...] = PHOTOS) -> dict[str, np.ndarray]:
    """A batch of training samples, NCHW float32 plus token ids and the objects' grid cells."""
    samples = []
    for _ in range(batch):
        seed = int(rng.integers(0, EVAL_SEED_BASE))
        level = "severe" if rng.random() < severe_fraction else "mild"
        samples.append(make_sample(seed, level, size, size, photos, augment))
    return {
        "sharp": np.stack([s.sharp.transpose(2, 0, 1) for s in samples]),
        "blurred": np.stack([s.blurred.transpose(2, 0, 1) for s in samples]),
        "tokens": np.stack([s.tokens for s in samples]),
        "object_maps": np.stack([object_maps(s.objects, size, size) for s in samples]),
    }


# --------------------------------------------------------------------------- GoPro folders

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def gopro_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(blurred, sharp) file pairs of a GoPro-layout folder.

    Any folder named ``blur`` (GoPro also has ``blur_gamma``; that one is ignored) with a
    sibling ``sharp`` folder contributes the files present in both, matched by name; so
    ``root/blur`` + ``root/sharp`` and ``root/<sequence>/blur`` + ``.../sharp`` both work.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    pairs = []
    for bdir in sorted(p for p in root.rglob("blur") if p.is_dir()):
        sdir = bdir.parent / "sharp"
        if not sdir.is_dir():
            continue
        sharp = {p.name: p for p in sdir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        for b in sorted(bdir.iterdir()):
            if b.name in sharp:
                pairs.append((b, sharp[b.name]))
    if not pairs:
        raise FileNotFoundError(f"no blur/ + sharp/ image pairs under {root}")
    return pairs


def load_pair(blur_path: Path, sharp_path: Path,
              max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float32 RGB in [0, 1], optionally downscaled to fit ``max_side``."""
    import cv2

    out = []
    for p in (blur_path, sharp_path):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {p}")
        if max_side and max(img.shape[:2]) > max_side:
            s = max_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                             interpolation=cv2.INTER_AREA)
        out.append(img[..., ::-1].astype(np.float32) / 255.0)
    if out[0].shape != out[1].shape:
        raise ValueError(f"{blur_path} and {sharp_path} differ in size")
    return out[0], out[1]
