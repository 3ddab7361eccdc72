"""Deblur stage: a blur detector gates S3E-Deblur; blurred frames are deblurred and captioned.

For every frame:

* **Gate** - the frame is resized to fit the processing size (``width`` x ``height``,
  320x240 by default; ``full_size: true`` keeps the original) and converted to grey. Its
  score is a *gradient-energy ratio*: mean squared Sobel gradient after a Gaussian of
  sigma 1, divided by the same after a Gaussian of sigma 2. Blur removes the fine scale, so
  the ratio falls towards 1; unlike the plain variance of the Laplacian it neither mistakes
  sensor noise for sharpness (sigma 1 already suppresses most of it) nor calls a smooth but
  sharp scene blurred (it is a ratio, not an absolute energy). At or above ``threshold``
  (default 1.7) the frame is sharp: it is returned as is - the same record bytes,
  byte-identical - and counted in ``passed``. The threshold was chosen on 60 seeded 320x240
  scenes (:mod:`vistream.models.data.blur`): sharp 1st/5th percentile 1.63/1.77, severely blurred
  95th/99th percentile 1.82/1.97, mildly blurred median 1.75 (mild blur straddles it, and
  the mild frames above it are the ones that need deblurring least); the demo video's
  frames score 1.88-1.93. A frame with almost no gradient at all (a blank wall) passes.
* **Deblur** - blurred frames go through the generator in batches of ``batch_size`` at the
  processing size; the correction (deblurred - input at that size) is upsampled and added to
  the original frame, so a large frame keeps its resolution and its own detail. The result is
  re-encoded in the frame's content type (JPEG at ``quality``) under the same frame id,
  stream, sequence number and timestamp, and a :class:`Caption` record with the caption that
  guided the deblurring (its words, space separated) is emitted for the frame.

Weights: ``weights`` names a file from ``vistream train deblur --export``; by default the
large model shipped in ``models/deblur/weights/s3e-large.safetensors`` is used (the faster
medium and small ones are ``s3e-medium`` / ``s3e-small.safetensors`` beside it), and if that is
missing a seeded untrained model (a smoke test of the plumbing only: it returns the input).
Undecodable frames raise in ``process`` and the runner dead-letters them one by one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from vistream.models.deblur import SHIPPED_WEIGHTS
from vistream.stages.records import Caption, Frame, Message, encode_image
from vistream.stages.base import Stage, StageParams, register_stage

DEFAULT_WEIGHTS = SHIPPED_WEIGHTS["s3e"]
DEFAULT_THRESHOLD = 1.7


class DeblurParams(StageParams):
    weights: str | None = Field(None, description="weights file from `vistream train deblur --export`; "
                                                  "empty = the shipped large model")
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0,
                             description="gradient-energy-ratio gate: frames scoring below are deblurred")
    width: int = Field(320, ge=16, le=8192, description="processing width (frames are fitted into it)")
    height: int = Field(240, ge=16, le=8192, description="processing height")
    full_size: bool = Field(False, description="process frames at their own size (slow on a CPU)")
    batch_size: int = Field(8, ge=1, le=256, description="frames per generator pass")
    semantic: bool = Field(True, description="caption-guided (S3E); false = the unguided generator")
    mirror_ensemble: bool = Field(False, description="also deblur each frame mirrored and average the "
                                  "two results: about +0.2 dB on the severe set at twice the cost")
    captions_for_sharp: bool = Field(False, description="also caption frames that pass the gate")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of re-encoded frames")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (None: torch default)")
    seed: int = Field(0, description="seed of the untrained fallback model")


def blur_score(gray: np.ndarray) -> float:
    """Gradient-energy ratio (sigma 1 over sigma 2) of a grey 0-255 image; ~1 = blurred.
    Returns +inf for an image with (almost) no gradient, which has nothing to deblur."""
    import cv2

    g = gray.astype(np.float32)

    def energy(sigma: float) -> float:
        b = cv2.GaussianBlur(g, (0, 0), sigma)
        gx = cv2.Sobel(b, cv2.CV_32F, 1, 0)
        gy = cv2.Sobel(b, cv2.CV_32F, 0, 1)
        return float((gx * gx + gy * gy).mean())

    coarse = energy(2.0)
    return float("inf") if coarse < 1e-3 else energy(1.0) / coarse


def fit_size(w: int, h: int, max_w: int, max_h: int) -> tuple[int, int]:
    s = min(1.0, max_w / w, max_h / h)
    return max(1, round(w * s)), max(1, round(h * s))


@register_stage("deblur")
class DeblurStage(Stage):
    accepts = ("frame",)
    emits = ("frame", "caption")
    Params = DeblurParams

    def setup(self) -> None:
        import torch

        p: DeblurParams = self.params  # type: ignore[assignment]
        if p.threads:
            torch.set_num_threads(p.threads)
        # deferred: s3e loads torch; listing stage types and validating configs stay light
        from vistream.models.deblur.s3e import S3EConfig, S3EDeblur, load_weights

        path = Path(p.weights) if p.weights else DEFAULT_WEIGHTS
        if p.weights and not path.exists():
            raise FileNotFoundError(f"deblur stage: weights file {path} not found")
        if path.exists():
            self.model, manifest = load_weights(path)
            self.model_id = str(manifest.get("model_id", path.stem))
            if not manifest["config"].get("semantic", True):
                p = p.model_copy(update={"semantic": False})  # weights of the ablation
                self.params = p
        else:
            torch.manual_seed(p.seed)
            self.model = S3EDeblur(S3EConfig()).eval()
            self.model_id = f"s3e-untrained-seed{p.seed}"
        self.model.cfg.semantic = p.semantic
        self.passed = 0
        self.deblurred = 0
        self.last_scores: list[float] = []

    def _ensure(self) -> None:
        if not hasattr(self, "model"):
            self.setup()

    def stats(self) -> dict:
        return {"passed": self.passed, "deblurred": self.deblurred, "model": self.model_id,
                "threshold": self.params.threshold}  # type: ignore[attr-defined]

    def _small(self, img: np.ndarray) -> np.ndarray:
        import cv2

        p: DeblurParams = self.params  # type: ignore[assignment]
        if p.full_size:
            return img
        h, w = img.shape[:2]
        tw, th = fit_size(w, h, p.width, p.height)
        return img if (tw, th) == (w, h) else cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)

    def process(self, batch: list[Message]) -> list[Message]:
        import cv2

        self._ensure()
        p: DeblurParams = self.params  # type: ignore[assignment]
        out: list[Message] = []
        # (position in out, frame, frame at processing size, is it blurred)
        todo: list[tuple[int, Frame, np.ndarray, bool]] = []
        for m in batch:
            if not isinstance(m, Frame):
                raise TypeError(f"expected a frame, got {m.kind}")
            small = self._small(m.image)
            score = blur_score(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
            self.last_scores.append(score)
            del self.last_scores[:-1000]
            blurred = score < p.threshold
            out.append(m)  # a sharp frame stays this very object (same bytes); blurred replaced
            self.passed += not blurred
            if blurred or p.captions_for_sharp:
                todo.append((len(out) - 1, m, small, blurred))
        captions: list[Message] = []
        for i in range(0, len(todo), p.batch_size):
            # frames of one batch may differ in size: each size group runs together
            groups: dict[tuple[int, ...], list[tuple[int, Frame, np.ndarray, bool]]] = {}
            for job in todo[i:i + p.batch_size]:
                groups.setdefault(job[2].shape, []).append(job)
            for jobs in groups.values():
                for (pos, frame, small, blurred), (deb, words) in zip(jobs, self._run([j[2] for j in jobs])):
                    if blurred:
                        out[pos] = self._reencode(frame, small, deb)
                        self.deblurred += 1
                    if words is not None:
                        captions.append(Caption(frame_id=frame.frame_id, stream_id=frame.stream_id,
                                                text=" ".join(words)))
        return out + captions

    def _run(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, list[str] | None]]:
        """Deblurred BGR float images (0-255) and their captions (None without semantics)."""
        # deferred: torch, and the models.data package (it loads every data generator);
        # listing stage types and validating configs stay light
        import torch

        from vistream.models.data.blur import decode_caption

        x = np.stack([im[..., ::-1].transpose(2, 0, 1) for im in images]).astype(np.float32) / 255.0
        p: DeblurParams = self.params  # type: ignore[assignment]
        y, toks = self.model.deblur(torch.from_numpy(x), caption=p.semantic,  # type: ignore[attr-defined]
                                    mirror=p.mirror_ensemble)
        deb = (y.numpy().transpose(0, 2, 3, 1)[..., ::-1] * 255.0)
        words = [decode_caption(t) for t in toks.numpy()] if toks is not None else [None] * len(images)
        return list(zip(deb, words))

    def _reencode(self, frame: Frame, small: np.ndarray, deb: np.ndarray) -> Frame:
        import cv2

        p: DeblurParams = self.params  # type: ignore[assignment]
        img = frame.image
        if small.shape != img.shape:
            corr = cv2.resize(deb - small.astype(np.float32), (img.shape[1], img.shape[0]),
                              interpolation=cv2.INTER_LINEAR)
            full = img.astype(np.float32) + corr
        else:
            full = deb
        full = np.clip(np.round(full), 0, 255).astype(np.uint8)
        return Frame(frame_id=frame.frame_id, stream_id=frame.stream_id, seq=frame.seq,
                     timestamp_ms=frame.timestamp_ms,
                     data=encode_image(full, frame.content_type, p.quality),
                     content_type=frame.content_type)
