"""Statistics shared by the evaluations."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def paired_differences(d: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of paired differences ``a - b``, each pair measured on the same item (a scene, a
    seed): mean, standard error (their standard deviation over sqrt(n); None for one pair), and
    how many pairs ``a`` is ahead on, tied on, behind on. The pairing removes what the item does
    to both sides alike, so a mean within about two standard errors of zero cannot rank them."""
    if not d:
        raise ValueError("no paired differences")
    n = len(d)
    return {"n": n, "mean": statistics.fmean(d),
            "se": statistics.stdev(d) / math.sqrt(n) if n > 1 else None,
            "ahead": sum(x > 0 for x in d), "tied": sum(x == 0 for x in d), "behind": sum(x < 0 for x in d)}
