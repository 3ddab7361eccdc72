"""Pruning baselines at the same FLOPs budget as ABCPruner.

All methods differ only in the *structure* (how many channels each prunable layer keeps);
every pruned model inherits the top-L1 filters of the same trained model and gets the same
fine-tuning, so a comparison isolates what ABCPruner claims to improve: the structure.

* ``uniform``: every prunable layer keeps the same fraction r, the largest r whose FLOPs fit
  the budget (widths ``max(1, round(C * r))``).
* ``l1``: L1-norm filter pruning (Li et al., ICLR 2017, "Pruning Filters for Efficient
  ConvNets") with a global criterion: each filter's L1 norm is divided by the mean norm of
  its layer, and the globally weakest filters are removed one by one until the FLOPs fit.
  (The paper set per-layer ratios by hand from a sensitivity analysis; a global normalised
  ranking is the common automatic variant and needs no hand tuning.)
* ``random``: a seeded random ABCPruner gene vector (1..9 per layer), repaired to the budget
  exactly as ABCPruner's candidates are — i.e. ABCPruner's search space without the search.
"""

from __future__ import annotations

import numpy as np

from vistream.models.pruning.abc import check_budget, fit_budget
from vistream.models.pruning.surgery import (
    FlopsTable,
    align_width,
    base_widths,
    filter_scores,
    genes_to_widths,
)

METHODS = ("uniform", "l1", "random")


def uniform_widths(model, target: float, table: FlopsTable | None = None, multiple: int = 1) -> list[int]:
    table = table or FlopsTable(model)
    base = base_widths(model)

    def widths(r: float) -> list[int]:
        return [align_width(round(c * r), c, multiple) for c in base]

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if table.ratio(widths(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return widths(lo)


def l1_widths(model, target: float, table: FlopsTable | None = None, multiple: int = 1) -> list[int]:
    table = table or FlopsTable(model)
    widths = list(base_widths(model))
    scores = filter_scores(model)
    entries = []
    for g, s in enumerate(scores):
        norm = s / max(float(s.mean()), 1e-12)
        entries += [(float(v), g) for v in norm]
    entries.sort()
    # with multiple > 1 the layer owning the globally weakest remaining filter loses a whole
    # group of `multiple` filters (widths stay aligned); a layer's count of "removed" filters
    # runs ahead of its width, so a group goes only once that many of its filters are ranked
    removed = [0] * len(widths)
    step = max(1, multiple)
    for _, g in entries:
        if table.ratio(widths) <= target:
            break
        removed[g] += 1
        if removed[g] % step == 0 and widths[g] - step >= step:
            widths[g] -= step
    if multiple > 1:
        widths = [align_width(w, c, multiple) for w, c in zip(widths, base_widths(model))]
    return widths


def random_widths(model, target: float, seed: int = 0, max_gene: int = 9,
                  table: FlopsTable | None = None, multiple: int = 1) -> list[int]:
    table = table or FlopsTable(model)
    rng = np.random.default_rng(seed)
    base = base_widths(model)
    genes = fit_budget(rng.integers(1, max_gene + 1, len(base)), table, target, max_gene, rng, multiple)
    return genes_to_widths(genes, base, max_gene, multiple)


def baseline_widths(method: str, model, target: float, seed: int = 0,
                    table: FlopsTable | None = None, multiple: int = 1) -> list[int]:
    """Widths of a baseline at ``target``; a target below ABCPruner's smallest structure is
    refused (:func:`models.pruning.abc.check_budget`): the methods are compared at one budget."""
    table = table or FlopsTable(model)
    check_budget(table, target, multiple=multiple)
    if method == "uniform":
        return uniform_widths(model, target, table, multiple)
    if method == "l1":
        return l1_widths(model, target, table, multiple)
    if method == "random":
        return random_widths(model, target, seed, table=table, multiple=multiple)
    raise ValueError(f"unknown baseline {method!r}; choose from {METHODS}")
