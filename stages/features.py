"""Features stage: frames (or crops named by track records) -> :class:`Features` records.

It runs any model artifact (:func:`models.artifacts.load_artifact`: a trained, pruned or
otherwise compressed backbone) in batches of ``batch_size`` on ``device`` and emits one
feature vector (``forward_features``, float32) per frame, or per tracked box, with the
artifact's ``model_id``.

``artifact`` is a file path or the short name of a backbone shipped inside the package
(``zoo:<name>``, :mod:`models.zoo`; ``vistream artifacts list``). **By default** (no artifact,
or an empty one) the stage runs the shipped 1-bit ResNet-20 on the bit-packed CPU runtime,
``zoo:binary-resnet20-composite`` (:data:`models.zoo.DEFAULT_ARTIFACT`): trained, small
(under 100 kB) and fast. A randomly initialised backbone is used only when asked for
explicitly, ``random_init: true`` with ``arch`` and ``seed`` (model id
``<arch>-random-seed<N>``): its vectors are a smoke test of the plumbing, nothing more.

Pseudo-labels (off by default): with ``pseudo_label_threshold`` set, the artifact's classifier
head (the linear layer the shipped nets end in, over the same pooled features) scores every
vector; where the softmax probability of its best class is at least the threshold, the record
carries that class (``pseudo_class``, a name from ``class_names``, by default the manifest's
class names or ``"0"``..``"n-1"``) and probability (``pseudo_score``). The index stage turns it
into a label record with source ``pseudo`` for that row (docs/hashing.md).

What a vector is (``vector``): ``features``, the backbone's pooled features (default), or
``scores``, its classifier head's class scores (logits; the head as for pseudo-labels), a short
vector in which the classes the net was trained on stand out. With crops, ``track_pool: N``
makes each record's vector the mean of the last N vectors of the same track (this crop and the
N - 1 before it): one crop of a small, blurred object is noisy, a few in a row less so.

Crops: with ``crops: true`` the stage also takes ``tracks`` records. Frames are kept in a
bounded cache; each tracks record yields one Features record per box (x, y, w, h), cropped
from its frame, in box order, with ``label`` = the track id. A tracks record whose frame has
not arrived yet waits (bounded) for it. Without crops, tracks records are ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from vistream.models.zoo import DEFAULT_ARTIFACT, ZooError, is_zoo_name, resolve
from vistream.stages.records import Features, Frame, Message, Tracks
from vistream.stages.base import Stage, StageParams, register_stage


class FeaturesParams(StageParams):
    artifact: str | None = Field(None, description="model artifact: a file (vistream export) or a "
                                 f"shipped one, zoo:NAME (vistream artifacts list); empty = "
                                 f"{DEFAULT_ARTIFACT}")
    random_init: bool = Field(False, description="run `arch` randomly initialised with `seed` "
                              "instead of an artifact (plumbing tests only)")
    arch: str = Field("resnet20", description="registered backbone of random_init")
    seed: int = Field(0, description="seed of the random initialisation (random_init)")
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(64, ge=1, le=4096, description="images per forward pass")
    input_size: int | None = Field(None, ge=8, le=4096,
                                   description="override the artifact's square input size")
    crops: bool = Field(False, description="also take tracks records and embed each box")
    min_crop: int = Field(4, ge=1, description="boxes smaller than this (px) are padded up")
    cache_frames: int = Field(256, ge=1, description="frames kept for crops of later tracks")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (None: torch default)")
    pseudo_label_threshold: float | None = Field(
        None, gt=0, le=1, description="pseudo-labels: tag a vector with the classifier head's "
        "class when its softmax probability is at least this (null: off)")
    class_names: list[str] | None = Field(None, description="names of the head's classes, in "
                                          "order (default: the manifest's, else 0..n-1)")
    vector: Literal["features", "scores"] = Field(
        "features", description="what records carry: the pooled features, or the classifier "
        "head's class scores (logits)")
    track_pool: int = Field(1, ge=1, le=1000, description="crops: each vector is the mean of "
                            "the last N vectors of its track (1: the crop's own)")
    deploy: bool = Field(True, description="on the CPU, run float models deployed: BN folded into "
                         "the convs, channels-last memory (pruned widths then cost what their FLOPs "
                         "say); the bit-packed 1-bit runtime is always run as it is")
    explain: bool = Field(False, description="decoupled artifacts (runtime 'decoupled'): put each "
                          "vector's calculation path on its record (path_code: hex of the packed "
                          "0/1 gates, path_active: share of filters that ran)")

    @field_validator("artifact")
    @classmethod
    def _known_shipped(cls, v: str | None) -> str | None:
        if v and is_zoo_name(v):
            resolve(v)  # an unknown zoo:NAME is a config error (ZooError is a ValueError)
        return v

    @model_validator(mode="after")
    def _one_model(self) -> FeaturesParams:
        if self.random_init and self.artifact:
            raise ValueError("give either artifact or random_init: true, not both")
        # without random_init the stage runs an artifact: an arch or seed would be ignored
        stray = sorted({"arch", "seed"} & self.model_fields_set)
        if stray and not self.random_init:
            raise ValueError(f"{' and '.join(stray)} only apply with random_init: true (without "
                             f"it the stage runs artifact, default {DEFAULT_ARTIFACT})")
        return self

    def artifact_path(self) -> str:
        """The artifact file the stage loads (the shipped default when none is given)."""
        try:
            return str(resolve(self.artifact or DEFAULT_ARTIFACT))
        except ZooError as exc:
            raise RuntimeError(f"features stage: {exc}; or set random_init: true") from None


@register_stage("features")
class FeaturesStage(Stage):
    accepts = ("frame", "tracks")
    emits = ("features",)
    Params = FeaturesParams

    def setup(self) -> None:
        import torch

        p: FeaturesParams = self.params  # type: ignore[assignment]
        if p.threads:
            torch.set_num_threads(p.threads)
        if p.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("features stage: device 'cuda' requested but CUDA is not available")
        if not p.random_init:
            # deferred: loads torch; listing stage types and validating configs stay light
            from vistream.models.artifacts import load_artifact

            self.model = load_artifact(p.artifact_path(), device=p.device)
            self.spec = dict(self.model.input_spec)
            self.norm = dict(self.model.normalization)
            self.model_id = self.model.model_id
        else:
            # deferred: loads torch; listing stage types and validating configs stay light
            from vistream.models.backbones import create_model

            torch.manual_seed(p.seed)
            self.model = create_model(p.arch, num_classes=10).eval().to(p.device)
            self.spec = {"size": [32, 32], "color": "RGB"}
            self.norm = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
            self.model_id = f"{p.arch}-random-seed{p.seed}"
        if p.input_size:
            self.spec["size"] = [p.input_size, p.input_size]
        # deferred: loads torch; listing stage types and validating configs stay light
        from vistream.models.deploy import deployable, optimize_for_cpu

        self._nhwc = p.deploy and p.device == "cpu" and deployable(self.model)
        if self._nhwc:

            self.model = optimize_for_cpu(self.model, input_size=tuple(self.spec["size"]))
        if p.explain and not hasattr(self.model, "last_paths"):
            raise RuntimeError("features stage: explain: true needs a decoupled artifact (vistream "
                               "eval decouple --artifact); this one has no calculation paths")
        self._paths: list[np.ndarray] = []  # explain: paths of the vectors not yet on a record
        self._frames: OrderedDict[str, Frame] = OrderedDict()
        self._pending: OrderedDict[str, Tracks] = OrderedDict()
        self.head = None
        if p.pseudo_label_threshold is not None or p.vector == "scores":
            self.head, self.class_names = classifier_head(self.model, p.class_names)
        self._recent: OrderedDict[tuple[str, int], list[np.ndarray]] = OrderedDict()
        if p.vector == "scores":  # another vector space than the features: never mixed with them
            self.model_id = f"{self.model_id}/scores"

    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        # deferred: loads torch; listing stage types and validating configs stay light
        import torch

        from vistream.models.artifacts import preprocess

        p: FeaturesParams = self.params  # type: ignore[assignment]
        out = []
        with torch.no_grad():
            for i in range(0, len(images), p.batch_size):
                x = preprocess(images[i:i + p.batch_size], self.spec, self.norm).to(p.device)
                if self._nhwc:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(self.model.forward_features(x).float().cpu().numpy())
                if p.explain:
                    self._paths.extend(self.model.last_paths)
        dim = int(getattr(self.model, "num_features", 0))
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def _vectors(self, vecs: np.ndarray) -> np.ndarray:
        """What the records carry: the features, or the head's class scores."""
        if self.params.vector == "scores" and len(vecs):  # type: ignore[attr-defined]
            return (vecs.astype(np.float32) @ self.head[0].T + self.head[1]).astype(np.float32)
        return vecs

    def _pool(self, key: tuple[str, int], vec: np.ndarray) -> np.ndarray:
        """The mean of the last ``track_pool`` vectors of track ``key`` (this one included)."""
        n = self.params.track_pool  # type: ignore[attr-defined]
        if n <= 1:
            return vec
        recent = self._recent.setdefault(key, [])
        self._recent.move_to_end(key)
        recent.append(vec)
        del recent[:-n]
        while len(self._recent) > 4096:  # tracks long gone
            self._recent.popitem(last=False)
        return np.mean(recent, axis=0).astype(np.float32)

    def _pseudo(self, vecs: np.ndarray) -> list[tuple[str | None, float | None]]:
        """(class, probability) of the head per vector; (None, None) below the threshold."""
        thr = self.params.pseudo_label_threshold  # type: ignore[attr-defined]
        if thr is None or self.head is None or not len(vecs):
            return [(None, None)] * len(vecs)
        cls, prob = head_predict(self.head, vecs)
        return [(self.class_names[c], round(float(q), 5)) if q >= thr else (None, None)
                for c, q in zip(cls, prob)]

    def _features(self, base: Message, vec: np.ndarray, tag: tuple[str | None, float | None],
                  **kw) -> Features:
        return Features(frame_id=base.frame_id, stream_id=base.stream_id,
                        vector=vec.astype(np.float32), model_id=self.model_id,
                        pseudo_class=tag[0], pseudo_score=tag[1], **self._explanation(), **kw)

    def _explanation(self) -> dict:
        """explain: the path fields of the next record (records are made in the order of the
        vectors :meth:`_embed` returned, one per vector)."""
        if not self._paths:
            return {}
        # deferred: loads torch; listing stage types and validating configs stay light
        from vistream.models.decoupling.runtime import path_code

        bits = self._paths.pop(0)
        return {"path_code": path_code(bits), "path_active": round(float(bits.mean()), 5)}

    def _crop(self, img: np.ndarray, box) -> np.ndarray:
        h, w = img.shape[:2]
        m = self.params.min_crop  # type: ignore[attr-defined]
        x, y, bw, bh = (float(v) for v in box)
        cx, cy = x + bw / 2, y + bh / 2
        bw, bh = max(bw, m), max(bh, m)
        x0, y0 = int(max(0, round(cx - bw / 2))), int(max(0, round(cy - bh / 2)))
        x1, y1 = int(min(w, round(cx + bw / 2))), int(min(h, round(cy + bh / 2)))
        if x1 <= x0 or y1 <= y0:
            x0, y0, x1, y1 = 0, 0, min(w, m), min(h, m)
        return img[y0:y1, x0:x1]

    def process(self, batch: list[Message]) -> list[Message]:
        p: FeaturesParams = self.params  # type: ignore[assignment]
        frames = [m for m in batch if isinstance(m, Frame)]
        out: list[Message] = []
        if not p.crops:
            vecs = self._embed([f.image for f in frames])
            return [self._features(f, v, tag, timestamp_ms=f.timestamp_ms)
                    for f, v, tag in zip(frames, self._vectors(vecs), self._pseudo(vecs))]
        for f in frames:
            self._frames[f.frame_id] = f
            self._frames.move_to_end(f.frame_id)
            while len(self._frames) > p.cache_frames:
                self._frames.popitem(last=False)
        for m in batch:
            if isinstance(m, Tracks):
                self._pending[m.frame_id] = m
        while len(self._pending) > p.cache_frames:
            self._pending.popitem(last=False)
        jobs: list[tuple[Tracks, int, np.ndarray, int]] = []
        for fid in [k for k in self._pending if k in self._frames]:
            tr = self._pending.pop(fid)
            img = self._frames[fid].image
            ts = self._frames[fid].timestamp_ms
            for i, box in enumerate(np.asarray(tr.boxes).reshape(-1, 4)):
                jobs.append((tr, i, self._crop(img, box), ts))
        vecs = self._embed([j[2] for j in jobs])
        for (tr, i, _, ts), v, tag in zip(jobs, self._vectors(vecs), self._pseudo(vecs)):
            tid = int(tr.track_ids[i]) if i < len(tr.track_ids) else i
            v = self._pool((tr.stream_id, tid), v)
            out.append(self._features(tr, v, tag, label=tid, timestamp_ms=ts))
        return out


def classifier_head(model, names: list[str] | None = None) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                     list[str]]:
    """The linear classifier a backbone ends in, over its ``forward_features`` vector, as
    numpy (weight (n_classes, dim), bias (n_classes,)), and its class names. RuntimeError when
    the model has none (pseudo-labels then cannot be asked for)."""
    dim = int(getattr(model, "num_features", 0))
    head = None
    for owner in (model, getattr(model, "net", None)):
        for attr in ("fc", "head", "classifier"):
            m = getattr(owner, attr, None) if owner is not None else None
            w = getattr(m, "weight", None)
            if w is not None and getattr(w, "ndim", 0) == 2 and int(w.shape[1]) == dim:
                b = getattr(m, "bias", None)
                W = w.detach().float().cpu().numpy()
                head = (W, np.zeros(len(W), np.float32) if b is None
                        else b.detach().float().cpu().numpy())
                break
        if head is not None:
            break
    if head is None:
        raise RuntimeError("features stage: pseudo_label_threshold needs an artifact with a "
                           f"classifier head over its {dim} features; this one has none")
    n = len(head[0])
    manifest = getattr(model, "manifest", None) or {}
    names = names or manifest.get("classes") or [str(i) for i in range(n)]
    if len(names) != n:
        raise RuntimeError(f"features stage: class_names has {len(names)} names, the head "
                           f"{n} classes")
    return head, [str(c) for c in names]


def head_predict(head: tuple[np.ndarray, np.ndarray], vecs: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Best class and its softmax probability per row of ``vecs``."""
    z = vecs.astype(np.float32) @ head[0].T + head[1]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    c = p.argmax(axis=1)
    return c, p[np.arange(len(p)), c]
