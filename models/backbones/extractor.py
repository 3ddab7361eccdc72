"""Feature extractors: images in, L2-normalised feature vectors out.

:class:`FeatureExtractor` is the small interface the query service (image search) needs; any
object with ``model_id``, ``dim`` and ``extract(images)`` fits, so a loader of trained
artifacts can replace :class:`BackboneExtractor` without touching the service.

:class:`BackboneExtractor` runs a registered backbone (``models.backbones``) on the CPU:

1. BGR uint8 (OpenCV convention, H x W x 3; grey H x W is expanded) -> RGB;
2. resize to ``input_size`` x ``input_size`` (area interpolation when shrinking, bilinear when
   enlarging; the aspect ratio is not kept, so every pixel contributes);
3. scale to [0, 1] and normalise with the ImageNet mean and std;
4. ``net.forward_features`` (global-average-pooled features, ``net.num_features`` dims);
5. L2-normalise every row (a zero row stays zero).

Weights: no trained artifact exists yet, so the network is *randomly initialised with a fixed
seed* (``torch.manual_seed(seed)`` in a forked RNG, so the caller's global RNG is untouched).
Such features still separate images by low-level statistics, but they are not semantic; the
``model_id`` says ``random-init`` so an index never mixes them with trained features. The
features stage and the query service must use the same extractor settings, or image queries
land in a different feature space than the indexed frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from vistream.models.backbones.registry import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns decoded images into feature vectors."""

    #: identifies the feature space (architecture, weights, preprocessing)
    model_id: str
    #: length of every feature vector
    dim: int

    def extract(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """BGR uint8 images (any sizes) -> float32 (n, dim), rows L2-normalised."""
        ...


def l2_normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def preprocess(image: np.ndarray, input_size: int,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
               ) -> np.ndarray:
    """One BGR/grey uint8 image -> normalised float32 CHW array of ``input_size``^2 pixels."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"expected an H x W x 3 image, got shape {img.shape}")
    img = img[:, :, :3][:, :, ::-1]  # BGR(A) -> RGB
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if (h > input_size or w > input_size) else cv2.INTER_LINEAR
    img = cv2.resize(np.ascontiguousarray(img), (input_size, input_size), interpolation=interp)
    x = img.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class BackboneExtractor:
    """A registered backbone as a :class:`FeatureExtractor` (see the module docstring)."""

    def __init__(self, name: str = "resnet18", input_size: int = 224, seed: int = 0,
                 batch_size: int = 32) -> None:
        if input_size < 8:
            raise ValueError("input_size must be at least 8")
        self.name = name
        self.input_size = int(input_size)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = create_model(name).eval()
        self.dim = int(self.net.num_features)
        self.model_id = f"{name}@{self.input_size}:random-init:seed{self.seed}"

    def extract(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                x = np.stack([preprocess(im, self.input_size) for im in images[s: s + self.batch_size]])
                out.append(self.net.forward_features(torch.from_numpy(x)).float().numpy())
        return l2_normalize(np.concatenate(out))

    def __repr__(self) -> str:
        return f"BackboneExtractor({self.name!r}, input_size={self.input_size}, seed={self.seed})"
