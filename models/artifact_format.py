"""The one-file artifact format shared by every model runtime: sealing, writing, reading and
verifying the file, independent of what the weights describe.

File layout (all integers little-endian uint64)::

    b"VSTART01"                         8-byte magic + format version
    len(manifest) | manifest JSON       UTF-8, keys sorted
    len(weights)  | safetensors bytes   the state dict, loaded without unpickling
    len(onnx)     | ONNX bytes          0 length when the model was exported without ONNX

``sha256`` in the manifest is the SHA-256 of the canonical manifest *without* its ``sha256``
field, followed by the weight bytes and the ONNX bytes. Any flipped bit in any part, a
truncated file or an edited manifest makes :func:`read_artifact` raise :class:`ArtifactError`
with the reason; nothing in the file is ever unpickled.

What the manifest holds and how a model is rebuilt from it is the runtimes' business: the
float backbones in :mod:`models.artifacts`, the bit-packed 1-bit networks in
:mod:`models.binary.packed`. Both import this module, and neither imports the other's.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from safetensors.torch import save as save_safetensors

from vistream.models.flops import count_params

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


def state_bytes(model) -> bytes:
    """The model's state dict as safetensors bytes (CPU, contiguous copies)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return save_safetensors(state)


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


def write_artifact(path: str | Path, manifest: dict, weights: bytes, onnx_bytes: bytes = b"") -> dict:
    """Seal ``manifest`` with the checksum of all three parts and write the file atomically
    (shared by :func:`models.artifacts.export_artifact` and the 1-bit export of
    :mod:`models.binary.packed`)."""
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


def load_checked(model, state: dict, manifest: dict, path: str | Path) -> None:
    """Load ``state`` strictly into the model rebuilt from ``manifest`` and check its parameter
    count; any mismatch is an :class:`ArtifactError` naming the file."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit the manifest's architecture: "
                            f"{str(exc)[:500]}") from None
    if count_params(model) != manifest.get("params"):
        raise ArtifactError(f"{path}: parameter count {count_params(model)} differs from the "
                            f"manifest's {manifest.get('params')}")


def attach(model, manifest: dict):
    """Give a loaded model its manifest and the attributes callers read off it."""
    model.manifest = manifest
    model.input_spec = manifest["input_spec"]
    model.normalization = manifest["normalization"]
    model.model_id = manifest["model_id"]
    return model
