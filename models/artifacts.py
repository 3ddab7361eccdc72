"""One-file model artifacts: a JSON manifest plus safetensors weights (plus optional ONNX).

File layout (all integers little-endian uint64)::

    b"VSTART01"                         8-byte magic + format version
    len(manifest) | manifest JSON       UTF-8, keys sorted
    len(weights)  | safetensors bytes   the state dict, loaded without unpickling
    len(onnx)     | ONNX bytes          0 length when the model was exported without ONNX

The manifest holds the architecture and its channel config (``arch``, ``config``), the
``method`` that produced it (baseline, abc, uniform, l1, random, ...), ``input_spec``,
``normalization``, ``flops`` (2 x MACs per image, see :mod:`models.flops`), ``params``,
``metrics``, ``model_id`` and ``sha256``: the SHA-256 of the canonical manifest *without*
its ``sha256`` field, followed by the weight bytes and the ONNX bytes. Any flipped bit in
any part, a truncated file or an edited manifest makes :func:`load_artifact` raise
:class:`ArtifactError` with the reason; nothing in the file is ever unpickled.

A 1-bit network (:func:`models.binary.packed.export_binary_artifact`) uses the same layout with
``runtime: "packed"`` in the manifest and its binary weights stored at one bit each; for it
``load_artifact`` returns the bit-packed CPU runtime model.

``load_artifact(path)`` returns the rebuilt model in eval mode with ``.manifest``,
``.input_spec``, ``.normalization`` and ``.model_id`` attributes; :func:`preprocess` turns
BGR uint8 images into the normalised batch the model expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"VSTART01"
FORMAT_VERSION = 1
_MAX_MANIFEST = 16 * 1024 * 1024


class ArtifactError(ValueError):
    """An artifact that cannot be trusted or used; the message says why."""


def _canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _digest(manifest: dict, weights: bytes, onnx_bytes: bytes) -> str:
    h = hashlib.sha256()
    for part in (_canonical(manifest), weights, onnx_bytes):
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.hexdigest()


def _state_bytes(model) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return save(state)


def _onnx_bytes(model, input_size: tuple[int, int], in_chans: int) -> tuple[bytes, str | None]:
    """Export ``forward_features`` and logits to ONNX (legacy TorchScript exporter); returns
    (b"", reason) when the exporter is unavailable or fails."""
    import io
    import warnings

    import torch

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


def input_specs(config: dict, data=None, input_spec: dict | None = None,
                normalization: dict | None = None) -> tuple[dict, dict]:
    """The manifest's input spec and normalisation: as given, else the dataset's, else 32x32
    RGB in [0, 1] normalised around 0.5."""
    if input_spec is None:
        input_spec = data.input_spec if data is not None else {
            "size": [32, 32], "channels": int(config.get("in_chans", 3)), "color": "RGB",
            "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0]}
    if normalization is None:
        normalization = data.normalization if data is not None else {
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return input_spec, normalization


def export_artifact(model, path: str | Path, method: str = "baseline", data=None,
                    input_spec: dict | None = None, normalization: dict | None = None,
                    metrics: dict | None = None, extra: dict | None = None,
                    onnx: bool = True) -> dict:
    """Write ``model`` (a registered backbone with ``.config``) to one artifact file.

    ``data`` (a :class:`models.data.DataBundle`) supplies the input spec and normalisation
    unless they are given. Returns the manifest."""
    from vistream.models.flops import count_flops, count_params

    config = dict(getattr(model, "config", {}))
    if "arch" not in config:
        raise ArtifactError("model has no config['arch']: only registered backbones can be exported")
    input_spec, normalization = input_specs(config, data, input_spec, normalization)
    size = tuple(int(v) for v in input_spec["size"])
    model = model.cpu().eval()
    weights = _state_bytes(model)
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


def write_artifact(path: str | Path, manifest: dict, weights: bytes, onnx_bytes: bytes = b"") -> dict:
    """Seal ``manifest`` with the checksum of all three parts and write the file atomically
    (shared by :func:`export_artifact` and the 1-bit export of :mod:`models.binary.packed`)."""
    manifest["sha256"] = _digest(manifest, weights, onnx_bytes)
    mbytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        for part in (mbytes, weights, onnx_bytes):
            f.write(struct.pack("<Q", len(part)))
            f.write(part)
    os.replace(tmp, path)
    return manifest


def read_artifact(path: str | Path) -> tuple[dict, bytes, bytes]:
    """Parse and verify an artifact; returns (manifest, safetensors bytes, onnx bytes)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc}") from None
    if not blob.startswith(MAGIC):
        raise ArtifactError(f"{path} is not a vistream artifact (bad magic bytes)")
    parts, pos = [], len(MAGIC)
    for name in ("manifest", "weights", "onnx"):
        if pos + 8 > len(blob):
            raise ArtifactError(f"{path} is truncated (no {name} section)")
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        if n > len(blob) - pos or (name == "manifest" and n > _MAX_MANIFEST):
            raise ArtifactError(f"{path} is truncated or corrupted ({name} section claims {n} "
                                f"bytes, {len(blob) - pos} left)")
        parts.append(blob[pos:pos + n])
        pos += n
    if pos != len(blob):
        raise ArtifactError(f"{path} has {len(blob) - pos} unexpected trailing bytes")
    try:
        manifest = json.loads(parts[0])
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: manifest is not valid JSON ({exc})") from None
    if manifest.get("format") != "vistream-artifact":
        raise ArtifactError(f"{path}: manifest is not a vistream artifact manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest['format_version']} is newer than "
                            f"supported {FORMAT_VERSION}")
    expected = manifest.get("sha256")
    actual = _digest(manifest, parts[1], parts[2])
    if expected != actual:
        raise ArtifactError(f"{path}: checksum mismatch — the file is corrupted or was modified "
                            f"(manifest says sha256 {str(expected)[:16]}..., content hashes to "
                            f"{actual[:16]}...)")
    return manifest, parts[1], parts[2]


def load_artifact(path: str | Path, device: str = "cpu"):
    """Verify the checksum, rebuild the registered model from the manifest and load the weights
    (safetensors; strict). Returns the model in eval mode with ``manifest``, ``input_spec``,
    ``normalization`` and ``model_id`` attributes."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from vistream.models.backbones import create_model

    manifest, weights, _ = read_artifact(path)
    packed = manifest.get("runtime") == "packed"  # a 1-bit network: the bit-packed CPU runtime
    if packed and str(device) != "cpu":
        raise ArtifactError(f"{path}: the packed 1-bit runtime runs on the CPU only, not {device}")
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
        from vistream.models.binary.packed import load_packed

        return _attach(load_packed(model, state, manifest, path), manifest)
    load_checked(model, state, manifest, path)
    return _attach(model.eval().to(device), manifest)


def load_checked(model, state: dict, manifest: dict, path: str | Path) -> None:
    """Load ``state`` strictly into the model rebuilt from ``manifest`` and check its parameter
    count; any mismatch is an :class:`ArtifactError` naming the file."""
    from vistream.models.flops import count_params

    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit the manifest's architecture: "
                            f"{str(exc)[:500]}") from None
    if count_params(model) != manifest.get("params"):
        raise ArtifactError(f"{path}: parameter count {count_params(model)} differs from the "
                            f"manifest's {manifest.get('params')}")


def _attach(model, manifest: dict):
    model.manifest = manifest
    model.input_spec = manifest["input_spec"]
    model.normalization = manifest["normalization"]
    model.model_id = manifest["model_id"]
    return model


def load_onnx(path: str | Path):
    """The ONNX model stored in an artifact (an ``onnx.ModelProto``), verified first."""
    import onnx

    _, _, onnx_bytes = read_artifact(path)
    if not onnx_bytes:
        raise ArtifactError(f"{path} holds no ONNX model")
    return onnx.load_from_string(onnx_bytes)


def preprocess(images_bgr: list[np.ndarray], input_spec: dict, normalization: dict):
    """BGR uint8 images (any size) -> normalised float32 NCHW tensor for the artifact."""
    import cv2
    import torch

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
