"""Online-hashing evaluation: data, protocol and metrics behind ``vistream eval hashing``.

Protocol (that of the MIHash online-hashing framework used by SDOH's authors):

* A labelled stream arrives in chunks (``chunk`` points, 2,000 by default). After every chunk
  each method takes one update (``partial_fit``), then the *whole* database is re-encoded
  with the current hash functions and the queries are searched against it.
* Queries are class-balanced (100 per class by default), the database is everything else and
  is also the training stream (in stream order).
* Metrics, from Hamming ranking of the whole database: mAP, mAP@1000, and precision within
  Hamming radius 2. ``mAP`` after each chunk is kept as the learning curve.

Metric definitions (:func:`retrieval_metrics`):

* Ranking: by Hamming distance, ties broken by database index (a stable sort), so the figures
  are deterministic. (Tie handling matters with short codes: many items share a distance.)
* Relevance: same label; for multi-label data (2-D ``y``), at least one label in common.
* AP of a query = mean, over its relevant database items, of the precision at each one's rank.
  A query with no relevant item in the database scores 0.
* AP@k: the same over the top ``k`` only, divided by the number of relevant items *within*
  the top k (the usual definition in the hashing literature); 0 if there are none.
* Precision within radius r: relevant / retrieved among items at distance <= r; a query whose
  Hamming ball is empty scores 0 (and so counts against the method).

Data (:func:`load_data`):

* ``digits-pixels``: scikit-learn's 1,797 8x8 digits as 64 pixel values (0..16).
  1,000 *original* digits (100 per class, seeded) are the queries. The stream is built only
  from the remaining 797 originals: each appears once, and seeded augmentations of them
  (rotation +-12 deg, scale 0.9..1.1, shift +-1 px, Gaussian noise sd 0.5, bilinear
  resampling) fill it up to ``stream_size`` (20,000) points; the stream is then shuffled.
  No augmentation of a query digit ever enters the database.
* ``digits-cnn``: the same split, as 128-d penultimate-layer features of a small CNN trained
  (torch, CPU, seeded) on the stream only - database originals and their augmentations, never
  a query digit.
* ``PATH.npz`` with ``X`` (n, d) and ``y`` (n,) or (n, c): at most ``query_share`` (10%) of
  the items become queries, class-balanced, at most ``queries_per_class`` per class (and all
  but one item of a class); for multi-label ``y``, at most 10 x ``queries_per_class`` random
  queries. (1,797 HOG digits: 17 per class = 170 queries, database 1,627; it was 1,000 vs 797
  before the cap.) The output line states the split sizes.
* Hyper-parameters: :data:`EVAL_PARAMS` (and :func:`sdoh_eval_lr`), chosen with
  ``split="val"``; the grids and their figures are in ``docs/hashing.md``.
* ``split="val"``: for tuning. The test queries are set aside untouched; validation queries
  (``queries_per_class // 5`` originals per class) are drawn from the database originals, and
  the stream is built from the rest, exactly as above.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# baselines and sdoh define (and so register) the methods make_model looks up by name
from vistream.models.hashing import baselines, sdoh  # noqa: F401
from vistream.models.hashing.base import HashModel, hamming_distances

# Hyper-parameters the evaluation uses, chosen on the validation split (``split="val"``, never
# the test queries); see docs/hashing.md. Anything not listed keeps the class default. SDOH's
# learning rate depends on the code length (:func:`sdoh_eval_lr`) unless --sdoh-lr is given.
EVAL_PARAMS: dict[str, dict[str, float]] = {
    "sdoh": {"sigma": 0.5, "threshold": 1e-4},
    "okh": {"alpha": 0.5, "C": 1.0},
    "adapthash": {"stepsize": 0.1},
    "hcoh": {"lr": 2.0},
}
def sdoh_eval_lr(n_bits: int) -> float:
    """SDOH's learning rate in the evaluation: 128 up to 32 bits, 32 above (validation grid)."""
    return 128.0 if n_bits <= 32 else 32.0


# .npz data: at most this share of the items become queries (and at most queries_per_class of
# a class), so a small file keeps most of its items in the database
QUERY_SHARE = 0.1

DEFAULT_METHODS = ("sdoh", "lsh", "itq", "okh", "adapthash", "hcoh")


# =========================================================================== metrics
def relevance(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Bool (n_q, n_db): same label, or (2-D labels) at least one shared label."""
    q_labels, db_labels = np.asarray(q_labels), np.asarray(db_labels)
    if q_labels.ndim == 1:
        return q_labels[:, None] == db_labels[None, :]
    return (q_labels.astype(np.float32) @ db_labels.astype(np.float32).T) > 0


def retrieval_metrics(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                      db_labels: np.ndarray, topk: int = 1000, radius: int = 2,
                      batch: int = 100) -> dict[str, float]:
    """mAP (whole ranking), mAP@topk and precision within Hamming ``radius`` (see the module
    docstring for the exact definitions)."""
    n_q, n_db = q_codes.shape[0], db_codes.shape[0]
    k = min(topk, n_db)
    ranks = np.arange(1, n_db + 1, dtype=np.float64)
    ap, apk, prec_r = np.zeros(n_q), np.zeros(n_q), np.zeros(n_q)
    for s in range(0, n_q, batch):
        e = min(s + batch, n_q)
        dist = hamming_distances(q_codes[s:e], db_codes)
        # small unsigned keys: numpy's stable sort is then a radix sort
        key = dist.astype(np.uint8) if dist.max(initial=0) < 256 else dist.astype(np.uint16)
        order = np.argsort(key, axis=1, kind="stable")  # ties: lower database index first
        rel = relevance(q_labels[s:e], db_labels)
        rel_sorted = np.take_along_axis(rel, order, axis=1)
        hits = np.cumsum(rel_sorted, axis=1)
        prec_at_hit = np.where(rel_sorted, hits / ranks, 0.0)
        n_rel = hits[:, -1]
        ap[s:e] = np.divide(prec_at_hit.sum(1), n_rel, out=np.zeros(e - s), where=n_rel > 0)
        n_rel_k = hits[:, k - 1]
        apk[s:e] = np.divide(prec_at_hit[:, :k].sum(1), n_rel_k, out=np.zeros(e - s),
                             where=n_rel_k > 0)
        ball = dist <= radius
        n_ball = ball.sum(1)
        prec_r[s:e] = np.divide((ball & rel).sum(1), n_ball, out=np.zeros(e - s),
                                where=n_ball > 0)
    return {"mAP": float(ap.mean()), f"mAP@{topk}": float(apk.mean()),
            f"prec@r{radius}": float(prec_r.mean())}


# =========================================================================== data
@dataclass
class HashingData:
    name: str
    X_query: np.ndarray
    y_query: np.ndarray
    X_db: np.ndarray  # the database, which is also the training stream, in stream order
    y_db: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def augment_digits(images: np.ndarray, rng: np.random.Generator, max_rot: float = 12.0,
                   scale: tuple[float, float] = (0.9, 1.1), max_shift: float = 1.0,
                   noise: float = 0.5) -> np.ndarray:
    """Random small affine warps (bilinear, zero outside) plus Gaussian noise, clipped to
    [0, 16], of a batch of 8x8 digits (values 0..16). Vectorised."""
    n, h, w = images.shape
    ang = np.deg2rad(rng.uniform(-max_rot, max_rot, n))
    sc = rng.uniform(*scale, n)
    sh = rng.uniform(-max_shift, max_shift, (n, 2))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rr, cc = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    # output pixel -> source pixel: inverse of (rotate and scale about the centre, then shift)
    y0 = rr[None] - cy - sh[:, 0, None, None]
    x0 = cc[None] - cx - sh[:, 1, None, None]
    cos, sin = (np.cos(ang) / sc)[:, None, None], (np.sin(ang) / sc)[:, None, None]
    ys = cos * y0 + sin * x0 + cy
    xs = -sin * y0 + cos * x0 + cx
    y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y_lo, xs - x_lo
    out = np.zeros((n, h, w))
    idx = np.arange(n)[:, None, None]
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y_lo + dy, x_lo + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            vals = images[idx, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out += np.where(inside, vals, 0.0) * wy * wx
    out += rng.normal(0.0, noise, out.shape)
    return np.clip(out, 0.0, 16.0).astype(np.float32)


def class_balanced_split(y: np.ndarray, per_class: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (queries, rest): ``per_class`` random items of each class (all but one at most)."""
    q = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = min(per_class, len(idx) - 1)
        q.append(rng.permutation(idx)[:take])
    q_idx = np.sort(np.concatenate(q))
    rest = np.setdiff1d(np.arange(len(y)), q_idx)
    return q_idx, rest


def build_stream(images: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals once each plus augmentations (round-robin over the originals) up to ``size``,
    shuffled. Returns images, labels and the index of each item's original."""
    n = len(images)
    src = np.concatenate([np.arange(n), np.resize(np.arange(n), max(0, size - n))])
    aug = augment_digits(images[src[n:]], rng) if size > n else np.zeros((0, 8, 8), np.float32)
    imgs = np.concatenate([images.astype(np.float32), aug])
    perm = rng.permutation(len(src))
    return imgs[perm], labels[src][perm], src[perm]


def train_digits_cnn(images: np.ndarray, labels: np.ndarray, seed: int, epochs: int = 4,
                     threads: int = 2, progress: bool = True):
    """A small CNN (3x3 convs of 16 and 32 channels, max-pool, 128-unit hidden layer) trained
    with Adam (lr 2e-3, batch 256) on 8x8 digits;
    returns a function mapping images to the 128-d penultimate features."""
    import torch
    from torch import nn
    from tqdm import tqdm

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 128), nn.ReLU(),
        nn.Linear(128, int(labels.max()) + 1),
    )
    X = torch.from_numpy(images.astype(np.float32)[:, None] / 16.0)
    Y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    bs = 256
    steps = epochs * math.ceil(len(X) / bs)
    bar = tqdm(total=steps, desc="digits CNN", disable=not progress, leave=False)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), bs):
            i = perm[s:s + bs]
            loss = nn.functional.cross_entropy(net(X[i]), Y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    net.eval()
    body = net[:-1]  # up to the penultimate ReLU

    def features(imgs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(imgs.astype(np.float32)[:, None] / 16.0)
            return torch.cat([body(t[s:s + 4096]) for s in range(0, len(t), 4096)]).numpy()

    torch.set_num_threads(prev_threads)
    return features


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (1797, 8, 8) float32 images (0..16) and int64 labels.

    Reads the CSV that ships inside scikit-learn directly (the same file, in the same order,
    as ``sklearn.datasets.load_digits``), which avoids importing ``sklearn.datasets`` (slow);
    falls back to that loader if the file is not where expected.
    """
    import importlib.util
    import os

    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None or spec.origin is None else os.path.join(
        os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
    if path and os.path.isfile(path):
        data = np.loadtxt(path, delimiter=",", dtype=np.float32)
        images, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    else:  # pragma: no cover - depends on the installed scikit-learn layout
        from sklearn.datasets import load_digits

        d = load_digits()
        images, labels = d.images.astype(np.float32), d.target.astype(np.int64)
    return images, labels


def _digits(kind: str, seed: int, queries_per_class: int, stream_size: int, split: str,
            cnn_epochs: int, progress: bool) -> HashingData:
    images, labels = load_digits_arrays()
    rng = np.random.default_rng(seed)
    q_idx, db_idx = class_balanced_split(labels, queries_per_class, rng)
    if split == "val":  # test queries set aside; validation queries from the database
        vq, vdb = class_balanced_split(labels[db_idx], max(1, queries_per_class // 5), rng)
        q_idx, db_idx = db_idx[vq], db_idx[vdb]
    elif split != "test":
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    s_imgs, s_labels, s_src = build_stream(images[db_idx], labels[db_idx], stream_size, rng)
    info = {"queries": len(q_idx), "database": len(s_labels), "database_originals": len(db_idx),
            "query_ids": q_idx.tolist(), "database_original_ids": db_idx.tolist(),
            "split": split, "queries_are": "original digits; neither they nor any augmentation "
                                           "of them is in the database"}
    if kind == "pixels":
        Xq, Xdb = images[q_idx].reshape(len(q_idx), -1), s_imgs.reshape(len(s_imgs), -1)
    else:
        feats = train_digits_cnn(s_imgs, s_labels, seed, epochs=cnn_epochs, progress=progress)
        Xq, Xdb = feats(images[q_idx]), feats(s_imgs)
        info["cnn"] = {"epochs": cnn_epochs, "trained_on": "database stream only",
                       "feature_dim": int(Xq.shape[1])}
    return HashingData(f"digits-{kind}", Xq.astype(np.float32), labels[q_idx],
                       Xdb.astype(np.float32), s_labels, info)


def _npz(path: Path, seed: int, queries_per_class: int, split: str,
         query_share: float = QUERY_SHARE) -> HashingData:
    with np.load(path, allow_pickle=False) as z:
        if "X" not in z or "y" not in z:
            raise ValueError(f"{path}: expected arrays 'X' (n, d) and 'y' (n,) or (n, c)")
        X, y = z["X"].astype(np.float32), z["y"]
    if X.ndim != 2 or len(y) != len(X):
        raise ValueError(f"{path}: X must be (n, d) and y must have n rows")
    if not 0 < query_share < 1:
        raise ValueError(f"query share must be in (0, 1), got {query_share}")
    rng = np.random.default_rng(seed)
    n_classes = y.shape[1] if y.ndim == 2 else len(np.unique(y))

    def split_once(idx: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray, int]:
        # at most query_share of these items become queries, at most per_class of a class
        cap = int(query_share * len(idx))
        if y.ndim == 1:
            per_class = max(1, min(per_class, cap // max(n_classes, 1)))
            q, r = class_balanced_split(y[idx], per_class, rng)
        else:
            q = np.sort(rng.permutation(len(idx))[:max(1, min(10 * per_class, cap,
                                                              len(idx) // 2))])
            r = np.setdiff1d(np.arange(len(idx)), q)
        return idx[q], idx[r], per_class

    q_idx, db_idx, per_class = split_once(np.arange(len(X)), queries_per_class)
    info: dict[str, Any] = {"items": len(X), "query_share_cap": query_share,
                            "test_queries": len(q_idx)}
    if split == "val":  # test queries set aside; validation queries from the database
        q_idx, db_idx, per_class = split_once(db_idx, max(1, per_class // 5))
    elif split != "test":
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    db_idx = rng.permutation(db_idx)
    info.update({"queries": len(q_idx), "database": len(db_idx), "split": split,
                 "queries_per_class": per_class if y.ndim == 1 else None, "path": str(path)})
    return HashingData(path.stem, X[q_idx], y[q_idx], X[db_idx], y[db_idx], info)


def load_data(spec: str, seed: int = 0, queries_per_class: int = 100, stream_size: int = 20000,
              split: str = "test", cnn_epochs: int = 4, progress: bool = True,
              query_share: float = QUERY_SHARE) -> HashingData:
    """``digits-pixels``, ``digits-cnn`` or the path of an ``.npz`` (see the module docstring)."""
    if spec in ("digits-pixels", "digits-cnn"):
        return _digits(spec.split("-")[1], seed, queries_per_class, stream_size, split,
                       cnn_epochs, progress)
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return _npz(path, seed, queries_per_class, split, query_share)
    raise ValueError(f"unknown data {spec!r}: use digits-pixels, digits-cnn or a PATH.npz")


# =========================================================================== protocol
def make_model(method: str, n_bits: int, seed: int, chunk: int,
               sdoh_params: dict[str, Any] | None = None, n_classes: int = 0,
               overrides: dict[str, dict[str, Any]] | None = None) -> HashModel:
    """A method with the evaluation's hyper-parameters (HCOH sizes its codebook by
    ``n_classes``)."""
    if method not in HashModel.registry:
        known = ", ".join(HashModel.registry.list())
        raise ValueError(f"unknown hashing method {method!r} (known: {known})")
    cls = HashModel.registry.get(method)
    params = dict(EVAL_PARAMS.get(method, {}))
    if method == "sdoh":
        params["lr"] = sdoh_eval_lr(n_bits)
        params.update(sdoh_params or {})
        params["chunk_size"] = chunk
    if method == "hcoh":
        params["n_classes"] = n_classes
    params.update((overrides or {}).get(method, {}))
    try:
        return cls(n_bits=n_bits, seed=seed, **params)
    except TypeError as e:  # an unknown --set parameter
        raise ValueError(f"{method}: {e}") from None


def run_online(model: HashModel, data: HashingData, chunk: int, topk: int = 1000,
               progress: bool = True, desc: str = "") -> dict[str, Any]:
    """Feed the stream chunk by chunk; after each update re-encode the database and score."""
    from tqdm import tqdm

    n = len(data.y_db)
    starts = list(range(0, n, chunk))
    curve, train_s, encode_s = [], 0.0, 0.0
    for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        model.partial_fit(data.X_db[s:s + chunk], data.y_db[s:s + chunk])
        t1 = time.perf_counter()
        db_codes = model.encode(data.X_db)
        q_codes = model.encode(data.X_query)
        t2 = time.perf_counter()
        train_s += t1 - t0
        encode_s += t2 - t1
        m = retrieval_metrics(q_codes, db_codes, data.y_query, data.y_db, topk=topk)
        curve.append({"seen": min(s + chunk, n), "version": model.version, **m})
    out: dict[str, Any] = {"final": {k: v for k, v in curve[-1].items()
                                     if k not in ("seen", "version")},
                           "curve": curve, "train_seconds": round(train_s, 2),
                           "encode_seconds": round(encode_s, 2)}
    if hasattr(model, "last_costs"):
        out["sdoh_last_chunk_iterations"] = max(0, len(model.last_costs) - 1)
    return out


def plot_curves(results: dict[str, dict[str, dict[str, Any]]], data_name: str, path: Path) -> Path:
    """mAP after each chunk, one panel per code length, one line per method (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = sorted({int(b) for per in results.values() for b in per})
    fig, axes = plt.subplots(1, len(bits), figsize=(4.2 * len(bits), 3.6), squeeze=False)
    for ax, b in zip(axes[0], bits):
        for method, per in results.items():
            r = per.get(str(b))
            if r is None:
                continue
            xs = [p["seen"] for p in r["curve"]]
            ax.plot(xs, [p["mAP"] for p in r["curve"]], marker="o", ms=3, label=method)
        ax.set_title(f"{data_name}, {b} bits")
        ax.set_xlabel("stream points seen")
        ax.set_ylabel("mAP")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(all_results: dict[str, Any], topk: int = 1000) -> str:
    """Markdown: one row per data set and method, mAP / mAP@k / prec@r2 per code length."""
    lines = []
    for data_name, block in all_results.items():
        per_method = block["methods"]
        bits = sorted({int(b) for per in per_method.values() for b in per})
        head = "| data | method | " + " | ".join(f"{b} bits: mAP / mAP@{topk} / P@r2"
                                                  for b in bits) + " |"
        lines += [head, "|" + "---|" * (2 + len(bits))]
        for method, per in per_method.items():
            cells = []
            for b in bits:
                f = per.get(str(b), {}).get("final")
                cells.append("-" if f is None else
                             f"{f['mAP']:.3f} / {f[f'mAP@{topk}']:.3f} / {f['prec@r2']:.3f}")
            lines.append(f"| {data_name} | {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def split_sizes(info: dict[str, Any], n_query: int, n_db: int) -> str:
    """The split in words: queries (share of the items, per class), database, set-aside tests."""
    if "items" not in info:   # digits: original queries vs an augmented stream
        return (f"{n_query} queries, database/stream {n_db} "
                f"(from {info.get('database_originals', n_db)} originals)")
    txt = f"{n_query} queries ({n_query / info['items']:.1%} of {info['items']} items"
    if info.get("queries_per_class"):
        txt += f", {info['queries_per_class']} per class"
    txt += f"), database/stream {n_db}"
    if info.get("split") == "val":
        txt += f", {info['test_queries']} test queries set aside"
    return txt


def run_evaluation(data_specs: list[str], bits: list[int], methods: list[str], chunk: int = 2000,
                   seed: int = 0, out: Path = Path("out/hashing"), quick: bool = False,
                   split: str = "test", queries_per_class: int = 100, stream_size: int = 20000,
                   topk: int = 1000, sdoh_params: dict[str, Any] | None = None,
                   cnn_epochs: int = 4, progress: bool = True,
                   echo: Callable[[str], None] = print,
                   query_share: float = QUERY_SHARE,
                   overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole evaluation; writes ``results.json``, ``table.md`` and one
    ``map_curve_<data>.png`` per data set under ``out``."""
    for b in bits:
        if b <= 0 or b % 8:
            raise ValueError(f"bit lengths must be positive multiples of 8, got {b}")
    if chunk < 2:
        raise ValueError("chunk must be at least 2")
    sdoh_params = dict(sdoh_params or {})
    if quick:
        queries_per_class, stream_size = min(queries_per_class, 10), min(stream_size, 1500)
        chunk, cnn_epochs = min(chunk, 500), min(cnn_epochs, 1)
        sdoh_params.setdefault("max_iter", 30)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for spec in data_specs:
        t0 = time.perf_counter()
        data = load_data(spec, seed, queries_per_class, stream_size, split, cnn_epochs, progress,
                         query_share)
        data_s = time.perf_counter() - t0
        echo(f"{data.name}: {split_sizes(data.info, len(data.y_query), len(data.y_db))}, "
             f"{data.X_db.shape[1]} dims ({split} split, prepared in {data_s:.1f} s)")
        labels = np.concatenate([data.y_query, data.y_db])
        n_classes = labels.shape[1] if labels.ndim == 2 else len(np.unique(labels))
        per_method: dict[str, dict[str, Any]] = {}
        for method in methods:
            per_method[method] = {}
            for b in bits:
                model = make_model(method, b, seed, chunk, sdoh_params, n_classes, overrides)
                r = run_online(model, data, chunk, topk, progress, f"{data.name} {method} {b}b")
                r["hparams"] = model.hparams()
                per_method[method][str(b)] = r
                f = r["final"]
                echo(f"  {method:>9} {b:>3} bits: mAP {f['mAP']:.4f}  mAP@{topk} "
                     f"{f[f'mAP@{topk}']:.4f}  P@r2 {f['prec@r2']:.4f}  "
                     f"(train {r['train_seconds']:.1f} s)")
        png = plot_curves(per_method, data.name, out / f"map_curve_{data.name}.png")
        results[data.name] = {"data": data.info, "methods": per_method, "curve_png": png.name}
    config = {"data": data_specs, "bits": bits, "methods": methods, "chunk": chunk, "seed": seed,
              "quick": quick, "split": split, "queries_per_class": queries_per_class,
              "query_share": query_share,
              "stream_size": stream_size, "topk": topk, "cnn_epochs": cnn_epochs,
              "method_params": {**EVAL_PARAMS, "sdoh": {
                  **EVAL_PARAMS["sdoh"], "lr": {str(b): sdoh_eval_lr(b) for b in bits},
                  **sdoh_params}},
              "overrides": overrides or {}}
    doc = {"config": config, "results": results}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    table = format_table(results, topk)
    (out / "table.md").write_text(table)
    return doc
