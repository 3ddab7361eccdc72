"""Performance-based operation space reduction (BNAS), and its UCB variant.

One round, on every edge (METHODS.md: "select half the operations with less potential,
evaluate them by sampling"; the rule as one public re-implementation reads it):

1. the **candidates** are the weaker half (by ``alpha``) of the edge's remaining operations,
   at least two while two remain;
2. ``T`` sub-networks are sampled, one candidate per edge in each (uniformly without
   replacement: every candidate once per pass; or, with ``ucb``, the candidate of highest upper
   confidence bound), and each one's validation accuracy is credited to every operation it used;
3. the candidates' mean accuracies become a likelihood ``softmax(m / tau)``; operations outside
   the candidates (the stronger half) get ``(max + mean) / 2`` of those likelihoods;
4. the running score is ``S <- S / 2 + s``; the operation of lowest ``S`` (with ``ucb``: lowest
   ``S + c sqrt(2 ln N / n_k)``, so an operation seldom sampled is not dropped on little
   evidence) leaves the space.

``none`` is never the last operation of an edge (an edge whose last two are ``none`` and one
other drops ``none``): the derived cell needs a real operation on every edge it keeps.
This module is plain arithmetic on arrays (no torch), so every rule is tested directly.
"""

from __future__ import annotations

import math

import numpy as np

NONE_INDEX = 0  # PRIMITIVES[0] == "none"


def candidates(alpha: np.ndarray, remaining: list[int]) -> list[int]:
    """The weaker half of ``remaining`` by ``alpha`` (at least 2 while 2 remain), weakest first."""
    if len(remaining) <= 1:
        return []
    n = max(2, (len(remaining) + 1) // 2)
    order = sorted(remaining, key=lambda k: (float(alpha[k]), k))
    return order[:n]


def ucb_bonus(counts: np.ndarray, total: int, c: float) -> np.ndarray:
    """``c * sqrt(2 ln N / n_k)``; ``inf`` where an operation was never sampled."""
    counts = np.asarray(counts, dtype=float)
    bonus = np.full(counts.shape, np.inf)
    seen = counts > 0
    bonus[seen] = c * np.sqrt(2.0 * math.log(max(total, 1)) / counts[seen])
    return bonus


def ucb_pick(cands: list[int], reward_sum: np.ndarray, counts: np.ndarray, c: float) -> int:
    """The candidate of highest ``mean reward + bonus`` (unsampled ones first; ties: lowest index)."""
    total = int(sum(counts[k] for k in cands))
    bonus = ucb_bonus(counts, total, c)
    best, best_v = cands[0], -np.inf
    for k in cands:
        mean = reward_sum[k] / counts[k] if counts[k] else 0.0
        v = mean + bonus[k]
        if v > best_v:
            best, best_v = k, v
    return best


def round_scores(remaining: list[int], cands: list[int], acc_sum: np.ndarray, acc_n: np.ndarray,
                 tau: float) -> dict[int, float]:
    """This round's likelihood ``s_k`` of every remaining operation (step 3 of the module text)."""
    means = np.array([acc_sum[k] / max(acc_n[k], 1) for k in cands], dtype=float)
    z = np.exp((means - means.max()) / tau)
    lik = z / z.sum()
    s = {k: float(v) for k, v in zip(cands, lik)}
    strong = (float(lik.max()) + float(lik.mean())) / 2
    for k in remaining:
        s.setdefault(k, strong)
    return s


def drop_choice(remaining: list[int], score: np.ndarray, counts: np.ndarray, ucb: bool,
                c: float) -> int:
    """The operation to drop: argmin of the running score (``ucb``: of score + bonus)."""
    if len(remaining) == 2 and NONE_INDEX in remaining:
        return NONE_INDEX
    values = {k: float(score[k]) for k in remaining}
    if ucb:
        total = int(sum(counts[k] for k in remaining))
        bonus = ucb_bonus(counts, total, c)
        values = {k: v + float(bonus[k]) for k, v in values.items()}
    return min(remaining, key=lambda k: (values[k], k))


class EdgeReducer:
    """Bookkeeping of one search's reduction: running scores, sample counts and rewards for
    every (cell type, edge, operation); plain arrays, saved in the search state."""

    def __init__(self, shape: tuple[int, int, int], tau: float = 0.05, ucb: bool = False,
                 c: float = 0.5) -> None:
        self.score = np.zeros(shape)
        self.counts = np.zeros(shape)
        self.reward = np.zeros(shape)
        self.tau, self.ucb, self.c = tau, ucb, c

    def plan(self, alphas: np.ndarray, mask: np.ndarray) -> dict[tuple[int, int], list[int]]:
        """Candidates of every edge that still has more than one operation."""
        out = {}
        for t in range(mask.shape[0]):
            for e in range(mask.shape[1]):
                rem = np.flatnonzero(mask[t, e]).tolist()
                if len(rem) > 1:
                    out[(t, e)] = candidates(alphas[t, e], rem)
        return out

    def samples(self, plan: dict[tuple[int, int], list[int]], passes: int, chosen_full: np.ndarray,
                rng: np.random.Generator):
        """Yield ``choice`` arrays (cell type x edge -> op index): edges without candidates keep
        ``chosen_full`` (their last operation); ``passes`` x max(candidates) samples in all."""
        width = max((len(c) for c in plan.values()), default=0)
        orders = {}
        for _ in range(passes):
            for key, cands in plan.items():
                orders[key] = list(rng.permutation(cands))
            for i in range(width):
                choice = chosen_full.copy()
                for (t, e), cands in plan.items():
                    if self.ucb:
                        choice[t, e] = ucb_pick(cands, self.reward[t, e], self.counts[t, e], self.c)
                    else:
                        choice[t, e] = orders[(t, e)][i % len(cands)]
                yield choice

    def credit(self, choice: np.ndarray, plan: dict[tuple[int, int], list[int]], acc: float,
               acc_sum: np.ndarray, acc_n: np.ndarray) -> None:
        for (t, e) in plan:
            k = int(choice[t, e])
            acc_sum[t, e, k] += acc
            acc_n[t, e, k] += 1
            self.counts[t, e, k] += 1
            self.reward[t, e, k] += acc

    def reduce(self, plan: dict[tuple[int, int], list[int]], mask: np.ndarray, acc_sum: np.ndarray,
               acc_n: np.ndarray) -> dict[tuple[int, int], int]:
        """Update the running scores and drop one operation per planned edge (``mask`` is changed
        in place); returns {(cell type, edge): dropped op index}."""
        dropped = {}
        for (t, e), cands in plan.items():
            rem = np.flatnonzero(mask[t, e]).tolist()
            s = round_scores(rem, cands, acc_sum[t, e], acc_n[t, e], self.tau)
            for k in rem:
                self.score[t, e, k] = self.score[t, e, k] / 2 + s[k]
            k = drop_choice(rem, self.score[t, e], self.counts[t, e], self.ucb, self.c)
            mask[t, e, k] = False
            dropped[(t, e)] = k
        return dropped

    def state_dict(self) -> dict:
        return {"score": self.score.tolist(), "counts": self.counts.tolist(),
                "reward": self.reward.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.score = np.asarray(state["score"], dtype=float)
        self.counts = np.asarray(state["counts"], dtype=float)
        self.reward = np.asarray(state["reward"], dtype=float)
