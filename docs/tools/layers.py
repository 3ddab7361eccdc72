"""Draws docs/img/layers.png from the code: the layers of docs/ARCHITECTURE.md, how many modules
and lines each holds, and how many import edges run between each pair of layers (an edge that
points up would be drawn red; `make lint` fails on it before that).

    .venv/bin/python docs/tools/layers.py        # rewrites docs/img/layers.png
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from collections import Counter
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: top to bottom, as in the import-linter contract of pyproject.toml
LAYERS = [
    ("cli", "command line: vistream ... (typer), demo"),
    ("bench", "benchmarks: vistream bench ..."),
    ("pipeline", "runtime: wire, bus, runner, app, broker, ingest, index serving, API"),
    ("stages", "typed records + stages' batch logic (no bus, no offsets)"),
    ("models", "methods, one module per paper; seeded data generators"),
]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in dict(LAYERS) else None


def measure() -> tuple[Counter, Counter, Counter]:
    graph = grimp.build_graph("vistream", cache_dir=None)
    modules: Counter = Counter()
    lines: Counter = Counter()
    edges: Counter = Counter()
    for m in graph.modules:
        layer = layer_of(m)
        if layer is None:
            continue
        modules[layer] += 1
        lines[layer] += len(Path(find_spec(m).origin).read_text().splitlines())
        for d in graph.find_modules_directly_imported_by(m):
            other = layer_of(d)
            if other is not None and other != layer:
                edges[(layer, other)] += 1
    return modules, lines, edges


def draw(out: Path) -> Counter:
    modules, lines, edges = measure()
    names = [n for n, _ in LAYERS]
    fig, ax = plt.subplots(figsize=(9, 7.5))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.axis("off")
    y = {n: 8.6 - i * 1.95 for i, n in enumerate(names)}
    for name, what in LAYERS:
        ax.add_patch(FancyBboxPatch((0.3, y[name] - 0.55), 6.4, 1.1,
                                    boxstyle="round,pad=0.05", fc="#eef3fb", ec="#335"))
        ax.text(0.55, y[name] + 0.15, f"vistream.{name}", fontsize=12, weight="bold", va="center")
        ax.text(0.55, y[name] - 0.25, what, fontsize=8.5, va="center")
        ax.text(6.55, y[name] + 0.15, f"{modules[name]} modules\n{lines[name]:,} lines",
                fontsize=8, ha="right", va="center", color="#444")
    for (src, dst), n in sorted(edges.items()):
        down = names.index(src) < names.index(dst)
        offset = 7.2 + 0.5 * (names.index(dst) - names.index(src) - 1) if down else 9.5
        arrow = FancyArrowPatch((offset, y[src] - 0.1), (offset, y[dst] + 0.1),
                                arrowstyle="-|>", mutation_scale=12,
                                color="#2a6" if down else "#d22",
                                connectionstyle="arc3,rad=-0.25")
        ax.add_patch(arrow)
        ax.text(offset + 0.12, (y[src] + y[dst]) / 2, str(n), fontsize=8,
                color="#2a6" if down else "#d22")
    ax.set_title("vistream layers: import edges between them (green: down; red: up)", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return edges


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img" / "layers.png"
    counted = draw(target)
    print(target, dict(counted))
