"""A searched cell pair (DARTS's genotype) and its JSON form.

A :class:`Genotype` holds, for the normal and the reduction cell, two ``(operation, input)``
pairs per intermediate node (input 0 and 1 are the two previous cells' outputs, 2.. the
earlier intermediate nodes) and the nodes concatenated into the cell output. ``to_dict`` /
``from_dict`` (and :func:`save_genotype` / :func:`load_genotype`) round-trip it through JSON;
``from_dict`` checks every field and raises :class:`GenotypeError` (a ValueError) naming what is
wrong, so a hand-edited file fails with a reason, not a traceback deep in a model builder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vistream.models.nas.ops import PRIMITIVES


class GenotypeError(ValueError):
    """A genotype that does not describe a buildable cell; the message says why."""


@dataclass(frozen=True)
class Genotype:
    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def to_dict(self) -> dict:
        return {"normal": [[op, int(j)] for op, j in self.normal],
                "normal_concat": [int(i) for i in self.normal_concat],
                "reduce": [[op, int(j)] for op, j in self.reduce],
                "reduce_concat": [int(i) for i in self.reduce_concat],
                **({"meta": dict(self.meta)} if self.meta else {})}

    @classmethod
    def from_dict(cls, d: object) -> Genotype:
        if not isinstance(d, dict):
            raise GenotypeError(f"a genotype is a JSON object, got {type(d).__name__}")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise GenotypeError(f"genotype misses {', '.join(missing)}")
        cells = {}
        for kind in ("normal", "reduce"):
            pairs = d[kind]
            if not isinstance(pairs, list) or not pairs or len(pairs) % 2:
                raise GenotypeError(f"{kind}: expected an even, non-empty list of [op, input] pairs")
            out = []
            for i, pair in enumerate(pairs):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise GenotypeError(f"{kind}[{i}]: expected [op, input], got {pair!r}")
                op, j = pair
                if op not in PRIMITIVES or op == "none":
                    raise GenotypeError(f"{kind}[{i}]: unknown operation {op!r}; use one of "
                                        f"{', '.join(p for p in PRIMITIVES if p != 'none')}")
                node = i // 2
                if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < node + 2:
                    raise GenotypeError(f"{kind}[{i}]: node {node} can take input 0..{node + 1}, got {j!r}")
                out.append((str(op), int(j)))
            concat = d[f"{kind}_concat"]
            n_states = len(pairs) // 2 + 2
            if not isinstance(concat, list) or not concat or any(
                    not isinstance(c, int) or isinstance(c, bool) or not 2 <= c < n_states for c in concat):
                raise GenotypeError(f"{kind}_concat: expected node indices in 2..{n_states - 1}, "
                                    f"got {concat!r}")
            cells[kind] = (tuple(out), tuple(int(c) for c in concat))
        if len(cells["normal"][0]) != len(cells["reduce"][0]):
            raise GenotypeError("normal and reduce cells must have the same number of nodes")
        meta = d.get("meta", {})
        return cls(cells["normal"][0], cells["normal"][1], cells["reduce"][0], cells["reduce"][1],
                   dict(meta) if isinstance(meta, dict) else {})

    def describe(self) -> str:
        def cell(pairs):
            return "; ".join(f"n{i // 2 + 2}<-{op}({j})" for i, (op, j) in enumerate(pairs))
        return f"normal: {cell(self.normal)} | reduce: {cell(self.reduce)}"


def save_genotype(g: Genotype, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(g.to_dict(), indent=1) + "\n")


def load_genotype(path: str | Path) -> Genotype:
    """Read a genotype file (``genotype.json`` of a search folder); clear errors when it is
    missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / "genotype.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise GenotypeError(f"cannot read genotype {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise GenotypeError(f"{path} is not valid JSON ({exc})") from None
    try:
        return Genotype.from_dict(data)
    except GenotypeError as exc:
        raise GenotypeError(f"{path}: {exc}") from None
