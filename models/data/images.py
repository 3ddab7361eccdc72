"""Datasets for backbone training, pruning and 1-bit work — all offline, all seeded.

* ``digits32()``: scikit-learn's 8x8 digits (1797 images, shipped with the package),
  upsampled to 32x32 RGB. Easy: ResNets reach ~98-99%, which hides differences between
  compression methods.
* ``digits_composite()``: the *harder shared split*. Every digit is scaled (16-28 px), rotated
  (+-25 deg), coloured and alpha-composited at a random place on a 32x32 crop of one of
  scikit-image's bundled photos (random crop scale), then brightness/contrast jitter and
  Gaussian noise are added. Backgrounds come from disjoint photo sets per split (train /
  val / test never share a photo). Two composites per source digit (3594 images).
  Generated once with a fixed seed and cached under ``~/.cache/vistream``.
* ``image_folder(root)``: a user's ImageFolder tree (``root/<class>/<image>``).
* ``cifar10_batches(root)``: CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``).

The split is fixed: it depends on ``SPLIT_SEED`` only, never on a training seed, so every
method and every training seed sees the same train/validation/test images. Both digit sets
use the *same* source-digit split (a test digit never appears, even re-composited, in train).

Arrays are float32 NCHW in [0, 1], RGB; normalisation (per-channel mean/std of the training
split) is part of the :class:`DataBundle` and goes into exported artifacts.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_SEED = 0
COMPOSITE_SEED = 1234
COMPOSITE_VERSION = 2
FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test
_PHOTOS_BY_SPLIT = {
    "train": ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
              "brick", "grass"),
    "val": ("chelsea", "camera", "gravel"),
    "test": ("retina", "coins", "moon"),
}


@dataclass
class Split:
    x: np.ndarray  # (n, 3, H, W) float32 in [0, 1], RGB
    y: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None, seed: int = 0) -> Split:
        """A seeded class-mixed subset of ``n`` samples (all when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return Split(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.train.x.shape[2:])  # type: ignore[return-value]

    @property
    def input_spec(self) -> dict:
        h, w = self.input_size
        return {"size": [h, w], "channels": 3, "color": "RGB", "layout": "NCHW",
                "dtype": "float32", "range": [0.0, 1.0], "dataset": self.name}

    @property
    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def cache_dir() -> Path:
    d = Path(os.environ.get("VISTREAM_CACHE", Path.home() / ".cache" / "vistream"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED,
                  fractions: tuple[float, float, float] = FRACTIONS) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices (per class, in the given fractions)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_tr = int(round(fractions[0] * len(idx)))
        n_va = int(round(fractions[1] * len(idx)))
        out["train"] += idx[:n_tr].tolist()
        out["val"] += idx[n_tr:n_tr + n_va].tolist()
        out["test"] += idx[n_tr + n_va:].tolist()
    return {k: np.sort(np.asarray(v, np.int64)) for k, v in out.items()}


def _bundle(name: str, splits: dict[str, Split], classes: list[str]) -> DataBundle:
    tr = splits["train"].x
    mean = tuple(float(v) for v in tr.mean(axis=(0, 2, 3)))
    std = tuple(float(max(v, 1e-3)) for v in tr.std(axis=(0, 2, 3)))
    return DataBundle(name, splits["train"], splits["val"], splits["test"], len(classes),
                      classes, mean, std)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digits32(size: int = 32) -> DataBundle:
    """Plain digits: 8x8 -> size x size (bilinear), grey replicated to RGB; fixed split."""
    import cv2

    imgs, y = _digits_raw()
    up = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in imgs])
    x = np.repeat(np.clip(up, 0, 1)[:, None], 3, axis=1).astype(np.float32)
    idx = split_indices(y)
    return _bundle("digits", {k: Split(x[v], y[v]) for k, v in idx.items()},
                   [str(i) for i in range(10)])


def _photos(names: tuple[str, ...]) -> list[np.ndarray]:
    import skimage.data

    out = []
    for n in names:
        im = getattr(skimage.data, n)()
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(im[:, :, :3]).astype(np.float32) / 255.0)
    return out


def _composite_one(digit: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator,
                   size: int) -> np.ndarray:
    import cv2

    # background: a random crop (random scale) of a random photo, resized to size x size
    ph = photos[rng.integers(len(photos))]
    h, w = ph.shape[:2]
    side = int(rng.integers(size, max(size + 1, min(h, w) // 2)))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    bg = cv2.resize(ph[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
    # digit: scale, rotate, place
    s = int(rng.integers(16, 29))
    d = cv2.resize(digit, (s, s), interpolation=cv2.INTER_LINEAR)
    m = cv2.getRotationMatrix2D((s / 2, s / 2), float(rng.uniform(-25, 25)), 1.0)
    d = cv2.warpAffine(d, m, (s, s), flags=cv2.INTER_LINEAR, borderValue=0)
    alpha = np.zeros((size, size), np.float32)
    oy, ox = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    alpha[oy:oy + s, ox:ox + s] = np.clip(d, 0, 1)
    alpha *= float(rng.uniform(0.8, 1.0))
    # colour: random, pushed away from the local background mean so the digit stays visible
    bg_mean = bg.mean(axis=(0, 1))
    col = rng.uniform(0, 1, 3).astype(np.float32)
    if np.abs(col - bg_mean).mean() < 0.4:
        col = np.clip(1.0 - bg_mean + rng.normal(0, 0.1, 3), 0, 1).astype(np.float32)
    img = bg * (1 - alpha[:, :, None]) + col[None, None, :] * alpha[:, :, None]
    # photometric jitter and noise
    img = (img - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    img = img + rng.normal(0, rng.uniform(0.0, 0.05), img.shape)
    return np.clip(img, 0, 1).astype(np.float32).transpose(2, 0, 1)


def generate_composite(copies: int = 2, size: int = 32, seed: int = COMPOSITE_SEED
                       ) -> dict[str, Split]:
    """Generate the harder split (no cache): ``copies`` composites of every source digit."""
    imgs, y = _digits_raw()
    idx = split_indices(y)
    rng = np.random.default_rng(seed)
    out = {}
    for split, ids in idx.items():
        photos = _photos(_PHOTOS_BY_SPLIT[split])
        xs, ys = [], []
        for _ in range(copies):
            for i in ids:
                xs.append(_composite_one(imgs[i], photos, rng, size))
                ys.append(y[i])
        out[split] = Split(np.stack(xs), np.asarray(ys, np.int64))
    return out


def cached_splits(key: str, make: Callable[[], dict[str, Split]], cache: bool = True) -> dict[str, Split]:
    """The train/val/test splits stored as ``cache_dir()/key`` (an .npz), made by ``make`` when the
    file is missing or unreadable (then written atomically, when ``cache``)."""
    path = cache_dir() / key
    if cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: Split(z[f"{k}_x"], z[f"{k}_y"]) for k in ("train", "val", "test")}
        except Exception:  # a broken cache file is regenerated
            pass
    splits = make()
    if cache:
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # one per process: no race
        np.savez_compressed(tmp, **{f"{k}_{a}": getattr(s, a) for k, s in splits.items()
                                    for a in ("x", "y")})
        os.replace(tmp, path)
    return splits


def digits_composite(copies: int = 2, size: int = 32, cache: bool = True) -> DataBundle:
    """The shared harder split (public: the 1-bit work reuses it). Deterministic; cached."""
    key = f"digits_composite_v{COMPOSITE_VERSION}_c{copies}_s{size}_seed{COMPOSITE_SEED}.npz"
    splits = cached_splits(key, lambda: generate_composite(copies, size), cache)
    return _bundle("digits-composite", splits, [str(i) for i in range(10)])


def image_folder(root: str | Path, size: int = 32, seed: int = SPLIT_SEED) -> DataBundle:
    """A user's ImageFolder tree ``root/<class>/<image>``, resized to size x size, split
    60/20/20 per class with a fixed seed (or uses ``root/train``, ``root/val``, ``root/test``
    sub-trees when they exist)."""
    import cv2

    root = Path(root)
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}

    def read_tree(d: Path, classes: list[str]) -> Split:
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((d / c).rglob("*")) if (d / c).is_dir() else []:
                if f.suffix.lower() not in exts:
                    continue
                im = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if im is None:
                    continue
                im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
                xs.append(im[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
                ys.append(ci)
        if not xs:
            return Split(np.zeros((0, 3, size, size), np.float32), np.zeros(0, np.int64))
        return Split(np.stack(xs), np.asarray(ys, np.int64))

    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        tr = read_tree(root / "train", classes)
        te = read_tree(root / "test", classes)
        va = read_tree(root / "val", classes) if (root / "val").is_dir() else None
        if va is None:
            idx = split_indices(tr.y, seed, (0.8, 0.2, 0.0))
            tr, va = Split(tr.x[idx["train"]], tr.y[idx["train"]]), \
                Split(tr.x[idx["val"]], tr.y[idx["val"]])
        return _bundle(f"imagefolder:{root}", {"train": tr, "val": va, "test": te}, classes)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    allx = read_tree(root, classes)
    if len(allx) == 0:
        raise ValueError(f"no readable images under {root}")
    idx = split_indices(allx.y, seed)
    return _bundle(f"imagefolder:{root}", {k: Split(allx.x[v], allx.y[v]) for k, v in idx.items()},
                   classes)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch. The official files are pickles; they are read with a
    restricted unpickler that only builds dicts, lists, bytes, str and numpy arrays."""
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):  # noqa: D401
            if (module, name) in allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {path}")

    with open(path, "rb") as f:
        d = Restricted(f, encoding="bytes").load()
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    x = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, np.asarray(labels, np.int64)


def cifar10_batches(root: str | Path, val_size: int = 5000) -> DataBundle:
    """CIFAR-10 python batches in ``root`` (``data_batch_1..5``, ``test_batch``); the last
    ``val_size`` training images (seeded, stratified) become the validation split."""
    root = Path(root)
    files = sorted(root.glob("data_batch_*"))
    if not files or not (root / "test_batch").exists():
        raise FileNotFoundError(f"{root} has no CIFAR-10 python batches (data_batch_*, test_batch)")
    parts = [_read_cifar_batch(f) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    frac = val_size / len(y)
    idx = split_indices(y, SPLIT_SEED, (1 - frac, frac, 0.0))
    xt, yt = _read_cifar_batch(root / "test_batch")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    return _bundle("cifar10", {"train": Split(x[idx["train"]], y[idx["train"]]),
                               "val": Split(x[idx["val"]], y[idx["val"]]),
                               "test": Split(xt, yt)}, classes)


def load_dataset(name: str) -> DataBundle:
    """``digits``, ``digits-composite`` (alias ``hard``), ``imagefolder:PATH``, ``cifar10:PATH``."""
    if name == "digits":
        return digits32()
    if name in ("digits-composite", "hard", "composite"):
        return digits_composite()
    if name.startswith("imagefolder:"):
        return image_folder(name.split(":", 1)[1])
    if name.startswith("cifar10:"):
        return cifar10_batches(name.split(":", 1)[1])
    raise ValueError(f"unknown dataset {name!r}: use digits, digits-composite, "
                     "imagefolder:PATH or cifar10:PATH")


def batches(split: Split, batch_size: int, mean, std, shuffle: bool = False,
            augment: bool = False, seed: int = 0, max_batches: int | None = None
            ) -> Iterator[tuple[object, object]]:
    """Yield normalised torch batches (x, y). Augmentation: random translation by up to
    2 px (zero-padded crop) — no flips (digits are not mirror symmetric)."""
    import torch

    n = len(split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if augment:
            h, w = x.shape[2:]
            padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
            dy, dx = rng.integers(0, 5, len(idx)), rng.integers(0, 5, len(idx))
            x = np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(idx))])
        xt = (torch.from_numpy(np.ascontiguousarray(x)) - m) / s
        yield xt, torch.from_numpy(split.y[idx])


def fingerprint(bundle: DataBundle) -> str:
    """Short hash of a dataset's arrays (goes into manifests and eval JSON)."""
    h = hashlib.sha256()
    for s in (bundle.train, bundle.val, bundle.test):
        h.update(np.ascontiguousarray(s.x[: min(len(s), 64)]).tobytes())
        h.update(s.y.tobytes())
    return h.hexdigest()[:12]
