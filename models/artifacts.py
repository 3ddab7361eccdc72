"""One-file model artifacts: a JSON manifest plus safetensors weights (plus optional ONNX).

The file format (layout, checksum, verification) is :mod:`models.artifact_format`; this module
exports and loads the models. The manifest holds the architecture and its channel config
(``arch``, ``config``), the ``method`` that produced it (baseline, abc, uniform, l1, random,
...), ``input_spec``, ``normalization``, ``flops`` (2 x MACs per image, see
:mod:`models.flops`), ``params``, ``metrics``, ``model_id`` and ``sha256``. Any flipped bit in
any part, a truncated file or an edited manifest makes :func:`load_artifact` raise
:class:`ArtifactError` with the reason; nothing in the file is ever unpickled.

A 1-bit network (:func:`models.binary.packed.export_binary_artifact`) uses the same layout with
``runtime: "packed"`` in the manifest and its binary weights stored at one bit each; for it
``load_artifact`` returns the bit-packed CPU runtime model; a BNAS network (``arch:
bnas_network``, :mod:`models.nas.export`) runs its depthwise/dilated binary convs on a named
float fallback, listed in the manifest and logged.

``load_artifact(path)`` returns the rebuilt model in eval mode with ``.manifest``,
``.input_spec``, ``.normalization`` and ``.model_id`` attributes; :func:`preprocess` turns
BGR uint8 images into the normalised batch the model expects.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from vistream.models.artifact_format import (
    FORMAT_VERSION,
    MAGIC,
    ArtifactError,
    attach,
    input_specs,
    load_checked,
    read_artifact,
    state_bytes,
    write_artifact,
)
from vistream.models.backbones import create_model
from vistream.models.binary.packed import load_packed
from vistream.models.flops import count_flops, count_params

__all__ = ["FORMAT_VERSION", "MAGIC", "ArtifactError", "export_artifact", "input_specs", "load_artifact",
           "load_checked", "load_onnx", "preprocess", "read_artifact", "write_artifact"]


def _onnx_bytes(model, input_size: tuple[int, int], in_chans: int) -> tuple[bytes, str | None]:
    """Export ``forward_features`` and logits to ONNX (legacy TorchScript exporter); returns
    (b"", reason) when the exporter is unavailable or fails."""
    class Both(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            f = self.m.forward_features(x)
            return f, self.m.fc(f) if hasattr(self.m, "fc") else f

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Both(model).eval(), torch.zeros(1, in_chans, *input_size), buf,
                              input_names=["input"], output_names=["features", "logits"],
                              dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"},
                                            "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - ONNX is optional
        return b"", f"{type(exc).__name__}: {exc}"[:300]
    return buf.getvalue(), None


def export_artifact(model, path: str | Path, method: str = "baseline", data=None,
                    input_spec: dict | None = None, normalization: dict | None = None,
                    metrics: dict | None = None, extra: dict | None = None,
                    onnx: bool = True) -> dict:
    """Write ``model`` (a registered backbone with ``.config``) to one artifact file.

    ``data`` (a :class:`models.data.DataBundle`) supplies the input spec and normalisation
    unless they are given. Returns the manifest."""
    config = dict(getattr(model, "config", {}))
    if "arch" not in config:
        raise ArtifactError("model has no config['arch']: only registered backbones can be exported")
    input_spec, normalization = input_specs(config, data, input_spec, normalization)
    size = tuple(int(v) for v in input_spec["size"])
    model = model.cpu().eval()
    weights = state_bytes(model)
    onnx_bytes, onnx_reason = _onnx_bytes(model, size, int(config.get("in_chans", 3))) if onnx \
        else (b"", "not requested")
    arch = config.pop("arch")
    manifest: dict[str, Any] = {
        "format": "vistream-artifact", "format_version": FORMAT_VERSION,
        "arch": arch, "config": config, "method": method,
        "input_spec": input_spec, "normalization": normalization,
        "num_features": int(getattr(model, "num_features", 0)),
        "flops": count_flops(model, size), "flops_convention": "2 x MACs per image (conv+linear)",
        "params": count_params(model),
        "param_shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "metrics": metrics or {},
        "weights": {"format": "safetensors", "bytes": len(weights),
                    "sha256": hashlib.sha256(weights).hexdigest()},
        "onnx": ({"bytes": len(onnx_bytes), "opset": 17, "outputs": ["features", "logits"]}
                 if onnx_bytes else {"bytes": 0, "reason": onnx_reason}),
        **(extra or {}),
    }
    manifest["model_id"] = f"{arch}-{method}-{manifest['weights']['sha256'][:12]}"
    return write_artifact(path, manifest, weights, onnx_bytes)


#: arch -> "module:function" of a method family's packed-runtime loader, imported on first use: the
#: artifact hub names the families' runtimes without importing them, so every family that imports
#: the hub (through models.train) stays apart from the others (import-linter: methods-apart)
_FAMILY_LOADERS = {"bnas_network": "vistream.models.nas.export:load_bnas"}
DECOUPLED_RUNTIME = "decoupled"  # models.decoupling.runtime.RUNTIME (tests/models/nas checks they agree)
_DECOUPLED_LOADER = "vistream.models.decoupling.runtime:load_decoupled_artifact"


def _family_loader(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def load_artifact(path: str | Path, device: str = "cpu"):
    """Verify the checksum, rebuild the registered model from the manifest and load the weights
    (safetensors; strict). Returns the model in eval mode with ``manifest``, ``input_spec``,
    ``normalization`` and ``model_id`` attributes."""
    manifest, weights, _ = read_artifact(path)
    packed = manifest.get("runtime") == "packed"  # a 1-bit network: the bit-packed CPU runtime
    if packed and str(device) != "cpu":
        raise ArtifactError(f"{path}: the packed 1-bit runtime runs on the CPU only, not {device}")
    family = _FAMILY_LOADERS.get(str(manifest.get("arch"))) if packed else None
    if family is not None:  # a method family's own runtime, e.g. a searched 1-bit net (models/nas)
        try:
            return attach(_family_loader(family)(manifest, st_load(weights), path), manifest)
        except SafetensorError as exc:
            raise ArtifactError(f"{path}: weights are not valid safetensors ({exc})") from None
    if manifest.get("runtime") == DECOUPLED_RUNTIME:  # gated filters (models/decoupling)
        if str(device) != "cpu":
            raise ArtifactError(f"{path}: the decoupled runtime skips filters on the CPU only")
        try:
            state = st_load(weights)
        except SafetensorError as exc:
            raise ArtifactError(f"{path}: weights are not valid safetensors ({exc})") from None
        return attach(_family_loader(_DECOUPLED_LOADER)(manifest, state, path), manifest)
    try:
        model = create_model(manifest["arch"], **manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot rebuild {manifest.get('arch')!r} from its manifest: "
                            f"{exc}") from None
    try:
        state = st_load(weights)
    except (SafetensorError, Exception) as exc:  # noqa: BLE001
        raise ArtifactError(f"{path}: weights are not valid safetensors ({exc})") from None
    if packed:
        return attach(load_packed(model, state, manifest, path), manifest)
    load_checked(model, state, manifest, path)
    return attach(model.eval().to(device), manifest)


def load_onnx(path: str | Path):
    """The ONNX model stored in an artifact (an ``onnx.ModelProto``), verified first."""
    import onnx  # optional and slow to import: only this function needs it

    _, _, onnx_bytes = read_artifact(path)
    if not onnx_bytes:
        raise ArtifactError(f"{path} holds no ONNX model")
    return onnx.load_from_string(onnx_bytes)


def preprocess(images_bgr: list[np.ndarray], input_spec: dict, normalization: dict):
    """BGR uint8 images (any size) -> normalised float32 NCHW tensor for the artifact."""
    h, w = (int(v) for v in input_spec["size"])
    rgb = input_spec.get("color", "RGB") == "RGB"
    arr = np.empty((len(images_bgr), 3, h, w), np.float32)
    for i, im in enumerate(images_bgr):
        if im.ndim == 2:
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
        small = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        if rgb:
            small = small[:, :, ::-1]
        arr[i] = small.transpose(2, 0, 1) / 255.0
    mean = np.asarray(normalization["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy((arr - mean) / std)
