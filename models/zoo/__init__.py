"""Shipped backbones: small trained artifacts inside the package, and their catalogue.

The files sit in this folder (``<name>.vsa``) next to ``index.json``, which lists each one with
the figures of its manifest (accuracy on the validation and test splits of the hard set, FLOPs,
params, bytes, sha256, method, recipe, dataset fingerprint). ``vistream artifacts build``
(:mod:`models.zoo.build`, ``make artifacts``) rebuilds them from fixed seeds;
``vistream artifacts list`` prints the catalogue.

A shipped artifact is named ``zoo:<name>`` wherever an artifact path is accepted (the features
stage's ``artifact``, ``vistream serve --backbone``): :func:`resolve` turns either form into a
file path. This module is light on purpose (json and pathlib only): configs are validated and
stage types listed without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
INDEX = "index.json"
PREFIX = "zoo:"
#: the 1-bit backbone on the bit-packed runtime: what the features stage uses by default
DEFAULT_ARTIFACT = "zoo:binary-resnet20-composite"
#: the whole folder of shipped files must stay under this many bytes
MAX_TOTAL_BYTES = 10 * 1000 * 1000


class ZooError(ValueError):
    """An unknown shipped name or a shipped file that does not match its catalogue entry."""


def load_index(folder: str | Path | None = None) -> dict:
    """The catalogue (``{"artifacts": {name: entry}, ...}``); empty when none was built."""
    path = Path(folder or ZOO_DIR) / INDEX
    if not path.exists():
        return {"artifacts": {}}
    return json.loads(path.read_text())


def names(folder: str | Path | None = None) -> list[str]:
    """Names of the shipped artifacts, sorted."""
    return sorted(load_index(folder)["artifacts"])


def is_zoo_name(ref: str) -> bool:
    return str(ref).startswith(PREFIX)


def resolve(ref: str | Path, folder: str | Path | None = None) -> Path:
    """``zoo:<name>`` -> the shipped file; anything else is taken as a path, returned as is.
    An unknown name raises :class:`ZooError` listing the shipped ones."""
    ref = str(ref)
    if not is_zoo_name(ref):
        return Path(ref)
    name = ref[len(PREFIX):]
    entries = load_index(folder)["artifacts"]
    if name not in entries:
        known = ", ".join(f"{PREFIX}{n}" for n in sorted(entries)) or "none (run `make artifacts`)"
        raise ZooError(f"no shipped artifact {ref!r}; shipped: {known}")
    path = Path(folder or ZOO_DIR) / entries[name]["file"]
    if not path.exists():
        raise ZooError(f"shipped artifact {ref!r} is listed but its file {path.name} is missing "
                       "(rebuild with `make artifacts`)")
    return path


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify(folder: str | Path | None = None) -> list[str]:
    """Problems of the shipped folder (empty when every file matches its entry: bytes, file
    sha256, manifest sha256; and the total stays under :data:`MAX_TOTAL_BYTES`)."""
    folder = Path(folder or ZOO_DIR)
    problems, total = [], 0
    for name, e in load_index(folder)["artifacts"].items():
        path = folder / e["file"]
        if not path.exists():
            problems.append(f"{name}: {path.name} is missing")
            continue
        size = path.stat().st_size
        total += size
        if size != e["bytes"]:
            problems.append(f"{name}: {size} bytes, the index says {e['bytes']}")
        if sha256_file(path) != e["file_sha256"]:
            problems.append(f"{name}: file sha256 differs from the index")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"shipped artifacts total {total} bytes > {MAX_TOTAL_BYTES}")
    return problems
