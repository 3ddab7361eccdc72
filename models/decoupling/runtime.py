"""A decoupled net as a deployable artifact (manifest ``runtime: "decoupled"``).

:func:`export_decoupled_artifact` writes a :class:`DecoupledResNet` (backbone, controlling
modules and mask classifiers) in the one-file artifact format of :mod:`models.artifact_format`;
:func:`models.artifacts.load_artifact` hands such a file to :func:`load_decoupled_artifact`,
which returns a :class:`DecoupledRuntime`: hard (inference) gates, and on the CPU the
skip-inactive runtime (:class:`sparse.SparseResNet`, one image at a time). After every
``forward_features`` call its ``last_paths`` holds the inputs' calculation paths (N, filters)
as 0/1 uint8, which the features stage can put on its records (``explain: true``) as
:func:`path_code`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistream.models.artifact_format import (FORMAT_VERSION, ArtifactError, input_specs,
                                             load_checked, state_bytes, write_artifact)
from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.decoupling.sparse import FlopsModel, SparseResNet
from vistream.models.flops import count_params

RUNTIME = "decoupled"


class DecoupledRuntime(nn.Module):
    """Inference form of a decoupled net: hard gates; ``skip=True`` (CPU) runs every image
    through the skip-inactive runtime, otherwise the masked net runs the batch at once (same
    results up to float rounding)."""

    runs_as_deployed = True   # no BN folding / channels-last pass by models.deploy: it has its own

    def __init__(self, model: DecoupledResNet, skip: bool = True) -> None:
        super().__init__()
        self.net = model.eval()
        self.sparse = SparseResNet(model) if skip else None
        self.fc = model.fc
        self.num_features = int(model.fc.in_features)
        self.widths = model.layer_widths()
        self.last_paths: np.ndarray | None = None

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.sparse is not None and x.device.type == "cpu":
            feats, paths = [], []
            for i in range(x.shape[0]):
                rec: list[torch.Tensor] = []
                feats.append(self.sparse.features(x[i:i + 1].float(), rec))
                paths.append(torch.cat(rec))
            self.last_paths = (torch.stack(paths).numpy().astype(np.uint8) if paths
                               else np.zeros((0, sum(self.widths)), np.uint8))
            return torch.cat(feats) if feats else x.new_zeros(0, self.num_features)
        n = self.net
        out = n.pool(n.blocks(n.stem(x))).flatten(1)
        self.last_paths = n.paths().cpu().numpy().astype(np.uint8)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def path_code(bits: np.ndarray) -> str:
    """A calculation path (0/1 per filter) as hex of its packed bits (8 filters a byte)."""
    return np.packbits(np.asarray(bits, np.uint8)).tobytes().hex()


def path_from_code(code: str, n: int) -> np.ndarray:
    """Inverse of :func:`path_code` for a path of ``n`` filters."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(code), np.uint8))[:n]


def export_decoupled_artifact(model: DecoupledResNet, path: str | Path, data=None,
                              input_spec: dict | None = None, normalization: dict | None = None,
                              metrics: dict | None = None) -> dict:
    """Write ``model`` as a ``runtime: decoupled`` artifact; returns the manifest. ``flops`` is
    the dense backbone's plus the controlling modules' (an upper bound: each input skips the
    filters its gates close; ``metrics`` can carry the measured mean)."""
    config = dict(model.backbone_config)
    if "arch" not in config:
        raise ArtifactError("the decoupled net's backbone has no config['arch']")
    input_spec, normalization = input_specs(config, data, input_spec, normalization)
    size = tuple(int(v) for v in input_spec["size"])
    model = model.cpu().eval()
    weights = state_bytes(model)
    fm = FlopsModel(model, size)
    arch = config.pop("arch")
    manifest: dict[str, Any] = {
        "format": "vistream-artifact", "format_version": FORMAT_VERSION,
        "arch": arch, "config": config, "method": "decoupling", "runtime": RUNTIME,
        "input_spec": input_spec, "normalization": normalization,
        "num_features": int(model.fc.in_features),
        "flops": int(fm.total_dense_with_ctrl), "flops_dense_backbone": int(fm.dense),
        "flops_convention": "2 x MACs per image (conv+linear); dense upper bound, gates skip more",
        "params": count_params(model), "layer_widths": model.layer_widths(),
        "param_shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "weights": {"format": "safetensors", "bytes": len(weights),
                    "sha256": hashlib.sha256(weights).hexdigest()},
        "onnx": {"bytes": 0, "reason": "input-dependent gates: the skip runtime is PyTorch"},
    }
    if data is not None and getattr(data, "classes", None):
        manifest["classes"] = list(data.classes)
    manifest["model_id"] = f"{arch}-decoupled-{manifest['weights']['sha256'][:12]}"
    return write_artifact(path, manifest, weights)


def load_decoupled_artifact(manifest: dict, state: dict, path: str | Path,
                            skip: bool = True) -> DecoupledRuntime:
    """The :class:`DecoupledRuntime` of a verified ``runtime: decoupled`` artifact."""
    try:
        backbone = create_model(manifest["arch"], **manifest["config"])
        model = DecoupledResNet(backbone)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot rebuild the decoupled {manifest.get('arch')!r} from "
                            f"its manifest: {exc}") from None
    model.backbone_config = {"arch": manifest["arch"], **manifest["config"]}
    load_checked(model, state, manifest, path)
    return DecoupledRuntime(model.eval(), skip=skip)
