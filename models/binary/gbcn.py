"""GBCN: Genetic Binary Convolutional Networks (arXiv 1911.11634, AAAI 2020).

The paper shares RBCN's rectified framework (kernel approximation ``W ~ C o sign(W)``,
discriminators on teacher features, update order W / C / D, BN update) and adds a *balanced
genetic algorithm* (BGA) inside the binarization process to escape local minima. Its operators,
population and schedule are not public; this module's design:

**What evolves.** Straight-through training almost never flips the sign of a weight that sits
near zero in a useful direction: the loss surface over the *binary* kernels is piecewise
constant, and the latent weights only drift. The BGA searches directly over binarizations:
a genome holds, for every binary layer, a flip mask over that layer's ``candidates`` — the
``cand_frac`` (default 2%, at least 4) weights of smallest ``|W|``, i.e. the binary decisions the
network is least sure of. Applying a genome sets ``W <- -W`` on the flipped weights, so
``sign(W)`` changes while the latent magnitudes (and hence ``||W - C o sign(W)||``) do not.

**Balance.** Every layer keeps its ±1 counts near equal: a genome may not move any filter's
``|#(+1) - #(-1)| / n`` above ``max(current, balance_tol)`` (a *repair* operator undoes random
flips in the offending direction after crossover and mutation), and the fitness adds
``balance_weight * mean_filters |mean(W_hat)|``. Balanced ±1 filters carry the most
information per bit (maximum entropy) — the reason binarization papers keep the two values
equally used.

**Fitness** (lower is better) = cross-entropy of the network on a *probe* mini-batch of
training images (eval mode, no gradient) + the balance penalty. The kernel-approximation error
is the same for every genome by construction (flips keep ``|W|``), so it is not part of it.

**Operators.** Population ``population`` (default 6): the identity genome (no flip) plus random
mutants. Each of ``generations`` (default 2) rounds keeps the 2 best (elitism), fills the rest
with children of binary-tournament parents by uniform crossover of the flip masks, mutation
(each candidate flips with probability ``mutation``), then repair. The best genome is written
back only if it beats the identity genome on the probe batch, so a BGA round never makes the
probe loss worse.

**Schedule.** One BGA round every ``bga_every`` training steps (default 16), with a fresh probe
batch (seeded). Ablation (``--no-bga``) is exactly RBCN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vistream.models.binary.layers import BinaryResNet, binary_convs
from vistream.models.binary.methods import register_method
from vistream.models.binary.rbcn import RbcnMethod
from vistream.models.binary.xnor import Forward
from vistream.models.data import batches

Genome = list[torch.Tensor]  # one bool flip mask per binary layer (over its candidates)


class BalancedGA:
    """Balanced genetic search over the least certain binary weights of a network."""

    def __init__(self, population: int = 6, generations: int = 2, mutation: float = 0.15,
                 cand_frac: float = 0.02, balance_tol: float = 0.1, balance_weight: float = 0.1,
                 seed: int = 0) -> None:
        if population < 3:
            raise ValueError("population must be >= 3")
        self.population, self.generations, self.mutation = population, generations, mutation
        self.cand_frac, self.balance_tol, self.balance_weight = cand_frac, balance_tol, balance_weight
        self.rng = np.random.default_rng(seed)
        self.rounds = self.accepted = self.flipped = 0

    # --------------------------------------------------------------- genome helpers
    def candidates(self, model: BinaryResNet) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        out = []
        for _, m in binary_convs(model):
            w = m.weight.detach().flatten()
            n = max(4, int(self.cand_frac * w.numel()))
            out.append((m.weight, torch.topk(w.abs(), n, largest=False).indices))
        return out

    def mutate(self, g: Genome) -> Genome:
        return [m ^ torch.from_numpy(self.rng.random(len(m)) < self.mutation) for m in g]

    def crossover(self, a: Genome, b: Genome) -> Genome:
        return [torch.where(torch.from_numpy(self.rng.random(len(x)) < 0.5), x, y) for x, y in zip(a, b)]

    @staticmethod
    def imbalance(w: torch.Tensor) -> torch.Tensor:
        """Per filter ``|mean(sign(w))|``."""
        return torch.where(w.flatten(1) >= 0, 1.0, -1.0).mean(1).abs()

    def repair(self, g: Genome, cands) -> Genome:
        """Undo random flips until no filter's imbalance exceeds max(current, tol)."""
        out = []
        for mask, (w, idx) in zip(g, cands):
            mask = mask.clone()
            flat = w.detach().flatten()
            per = flat.numel() // w.shape[0]
            limit = torch.clamp(self.imbalance(w.detach()), min=self.balance_tol)
            for _ in range(len(mask)):
                trial = flat.clone()
                trial[idx[mask]] *= -1
                bad = self.imbalance(trial.view_as(w)) > limit + 1e-9
                if not bool(bad.any()):
                    break
                # flipped candidates in an offending filter that moved it towards the majority
                filt = idx // per
                s = torch.where(flat[idx] >= 0, 1.0, -1.0)  # sign before the flip
                maj = torch.sign(torch.where(trial.view(w.shape[0], -1) >= 0, 1.0, -1.0).sum(1))
                culprits = torch.nonzero(mask & bad[filt] & (-s == maj[filt])).flatten()
                if len(culprits) == 0:
                    break
                mask[culprits[self.rng.integers(len(culprits))]] = False
            out.append(mask)
        return out

    @torch.no_grad()
    def apply(self, g: Genome, cands) -> None:
        for mask, (w, idx) in zip(g, cands):
            flat = w.data.view(-1)
            flat[idx[mask]] *= -1

    @torch.no_grad()
    def fitness(self, model: BinaryResNet, g: Genome, cands, x: torch.Tensor, y: torch.Tensor) -> float:
        self.apply(g, cands)
        try:
            ce = float(F.cross_entropy(model(x), y))
            bal = float(torch.stack([self.imbalance(w.detach()).mean() for w, _ in cands]).mean())
        finally:
            self.apply(g, cands)  # flipping twice restores the weights exactly
        return ce + self.balance_weight * bal

    # --------------------------------------------------------------- one round
    @torch.no_grad()
    def run(self, model: BinaryResNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        was_training = model.training
        model.eval()
        cands = self.candidates(model)
        identity = [torch.zeros(len(idx), dtype=torch.bool) for _, idx in cands]
        pop = [identity] + [self.repair(self.mutate(identity), cands) for _ in range(self.population - 1)]
        fit = [self.fitness(model, g, cands, x, y) for g in pop]
        base = fit[0]
        for _ in range(self.generations):
            order = np.argsort(fit)
            new, new_fit = [pop[i] for i in order[:2]], [fit[i] for i in order[:2]]
            while len(new) < self.population:
                a, b = (min(self.rng.choice(len(pop), 2, replace=False), key=lambda i: fit[i])
                        for _ in range(2))
                child = self.repair(self.mutate(self.crossover(pop[a], pop[b])), cands)
                new.append(child)
                new_fit.append(self.fitness(model, child, cands, x, y))
            pop, fit = new, new_fit
        best = int(np.argmin(fit))
        self.rounds += 1
        accepted = fit[best] < base - 1e-6
        if accepted:
            self.apply(pop[best], cands)
            self.accepted += 1
            self.flipped += int(sum(int(m.sum()) for m in pop[best]))
        model.train(was_training)
        return {"base": base, "best": fit[best], "accepted": float(accepted)}

    def state(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "accepted": self.accepted, "flipped": self.flipped,
                "rng": self.rng.bit_generator.state}

    def load(self, state: dict[str, Any]) -> None:
        self.rounds, self.accepted = int(state["rounds"]), int(state["accepted"])
        self.flipped = int(state["flipped"])
        self.rng.bit_generator.state = state["rng"]


@register_method
class GbcnMethod(RbcnMethod):
    name = "gbcn"
    ablation = "BGA"
    ablation_flag = "bga"

    def __init__(self, ablate: bool = False, bga_every: int = 16, probe_batch: int = 128,
                 **options: Any) -> None:
        ga_keys = ("population", "generations", "mutation", "cand_frac", "balance_tol", "balance_weight")
        ga_opts = {k: options.pop(k) for k in ga_keys if k in options}
        super().__init__(False, **options)  # the RBCN part is never ablated here
        self.ablate = ablate
        self.bga_every, self.probe_batch = bga_every, probe_batch
        self.ga = BalancedGA(seed=int(options.get("seed", 0)), **ga_opts)
        self.steps = 0
        self.data = None

    @property
    def use_gan(self) -> bool:
        return self.adv_weight > 0

    def setup(self, model: BinaryResNet, data: Any, cfg: Any) -> None:
        super().setup(model, data, cfg)
        self.data, self.cfg = data, cfg
        self.ga.rng = np.random.default_rng(cfg.seed + 7919)

    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(self.ga.rng.integers(2**31))
        return next(iter(batches(self.data.train, self.probe_batch, self.data.mean, self.data.std,
                                 shuffle=True, seed=seed, max_batches=1)))

    def after_update(self, model: BinaryResNet, opts: dict[str, torch.optim.Optimizer],
                     fwd: Forward, x: torch.Tensor, y: torch.Tensor) -> None:
        super().after_update(model, opts, fwd, x, y)
        self.steps += 1
        if not self.ablate and self.data is not None and self.steps % self.bga_every == 0:
            px, py = self.probe()
            self.ga.run(model, px, py)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ga": self.ga.state(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "ga" in state:
            self.ga.load(state["ga"])
            self.steps = int(state["steps"])
