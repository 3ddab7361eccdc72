"""The paths picture: for every class, a layers x filters grid of how often each filter fires on
that class's test images (white: never, black: always; grey hatching: no such filter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def path_grid(freq_row: np.ndarray, widths: list[int]) -> np.ndarray:
    """(layers, max width) grid of one class's frequencies, NaN where a layer has fewer filters."""
    grid = np.full((len(widths), max(widths)), np.nan)
    start = 0
    for i, w in enumerate(widths):
        grid[i, :w] = freq_row[start:start + w]
        start += w
    return grid


def draw_paths(freq: np.ndarray, widths: list[int], classes: list[str], path: Path) -> Path:
    import matplotlib  # deferred: heavy, only the picture needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        ax.set_facecolor("#d8d8d8")
        im = ax.imshow(path_grid(freq[k], widths), cmap="Greys", vmin=0, vmax=1, aspect="auto",
                       interpolation="nearest")
        ax.set_title(f"class {classes[k]}", fontsize=9)
        ax.set_xlabel("filter", fontsize=7)
        ax.set_ylabel("gated layer", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.subplots_adjust(hspace=0.55, wspace=0.3)
    fig.colorbar(im, ax=axes, shrink=0.6, label="firing frequency")
    fig.suptitle("Calculation paths per class (layers x filters)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
