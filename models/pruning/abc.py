"""ABCPruner: channel pruning by an artificial bee colony search over layer widths.

Paper: Lin, Ji, Zhang, Zhang, Wu, Tian, "Channel Pruning via Automatic Structure Search",
IJCAI 2020 (arXiv 2001.08565).

What is implemented (see METHODS.md):

* A structure ("food source") is one integer gene per prunable layer in {1..M}, M = 9; the
  layer keeps ``int(C * gene / 10)`` channels (10%..90%). On ResNets only the inner width of
  each basic block is searched (residual additions never break); on VGG every conv.
* Weights are inherited from the trained model (top-L1 filters of each layer, by default),
  and the candidate is built *physically smaller* (:mod:`models.pruning.surgery`).
* Fitness = top-1 accuracy on the held-out **validation** split after a short training of the
  candidate (SGD momentum 0.9, wd 5e-4). The official code measures it on the test set; we
  never touch the test split during the search.
* Employed bees: ``x + U(-1, 1) * (x - x_k)`` on ``changes`` (2) randomly chosen genes,
  clipped to [1, M], greedy replacement (:func:`bee_move`). Onlookers pick sources with
  probability ``0.9 * fit / max_fit + 0.1`` and make the same move. Scout: the source with most
  failed trials is re-randomised once its count reaches ``limit``.
* After the search the best structure is fine-tuned (:func:`finetune`).

Where this code departs from the official code, each as an :class:`ABCConfig` option (the
default is this project's behaviour: every figure in docs/pruning.md was made with it, and
the shipped artifacts are built with it; the official behaviour is one option away):

* ``move_rule``: ``"round_step"`` (default) rounds the moved gene and, when the rounding left
  it unchanged, steps it by +-1, so every move explores; ``"truncate"`` is the official
  ``int(x + U(-1, 1) * (x - x_k))`` (truncation; a gene equal in both sources does not move).
* ``finetune_from``: ``"repruned"`` (default) fine-tunes the best structure pruned again from
  the base (top-L1 filters, no fitness training); ``"best_candidate"`` starts from the best
  candidate's fitness-trained weights, as the official code does.
* ``budget_repair`` (only with a FLOPs budget, which the paper has not): a bee move the repair
  turns back into its parent (about a quarter of the moves at 0.5 FLOPs on the 8-channel grid,
  docs/pruning.md) is ``"count"`` (default): evaluated from the cache and counted as a failed
  trial, so scouts fire early; ``"resample"``: drawn again (up to :data:`RESAMPLE_TRIES`
  times); ``"skip"``: not evaluated and not counted as a trial. ``SearchResult.moves`` counts
  them.

Optional, not in the paper: ``fitness_metric="loss"`` scores a candidate by
``1 / (1 + validation cross-entropy)`` instead of its validation accuracy (both after the same
short training). On a nearly saturated validation split the accuracy of every candidate is
within a few images (ResNet-56 on digits after 2 fitness epochs: 348..357 of 359 correct), so
the colony's greedy comparisons mostly compare binomial noise; the loss still ranks them. The
transform keeps the fitness positive and larger-is-better, as the onlooker probabilities need.
Measured (docs/pruning.md): it did not make ABC beat L1 or uniform over five seeds.

What the paper left unsaid / what was chosen here:

* **FLOPs budget.** ABCPruner itself has no FLOPs constraint (it caps the kept fraction).
  To compare methods at the *same* FLOPs, every candidate is repaired to the budget: while
  over it, a random gene > 1 is decremented; then genes are incremented in random order
  while the structure stays under it. ``flops_target=None`` switches this off (paper
  behaviour).
* **Schedule.** Paper defaults: food_number 10, max_cycle 10, limit 5, 2 epochs of fitness
  training — about 220 fitness runs x 2 epochs before fine-tuning. That is far beyond this
  project's CPU budget, so :class:`ABCConfig` defaults to a reduced schedule (food 6,
  cycles 3, limit 3, 1 epoch, lr 0.01); :data:`PAPER_DEFAULTS` holds the paper's values.
  The cost of a search is reported in *training epochs over the full training split*
  (``search_epochs``), next to its accuracy.
* **BatchNorm statistics.** After surgery the running statistics of the layers behind a
  pruned layer are stale; eval-mode accuracy then measures the stale statistics (a 50%-FLOPs
  ResNet-20 on digits scores 10% before and 97% after re-estimation, with no training).
  Every candidate's BN statistics are re-estimated on ``bn_batches`` training batches
  (forward only) after surgery and after its short training; fine-tuning ends the same way.
* **Duplicates.** A structure evaluated before is not trained again: its logged fitness is
  reused (0 epochs). This also makes the search **resumable**: every evaluation is appended
  to ``evaluations.jsonl``; a resumed search replays the same seeded bee moves and answers
  already-evaluated structures from the log, so it continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vistream.models.pruning.surgery import FlopsTable, base_widths, genes_to_widths, prune
from vistream.models.train import BackboneTrainConfig, evaluate, evaluate_loss, recalibrate_bn, train

PAPER_DEFAULTS = {"food_number": 10, "max_cycle": 10, "limit": 5, "changes": 2,
                  "fitness_epochs": 2}


@dataclass
class ABCConfig:
    food_number: int = 6
    max_cycle: int = 3
    limit: int = 3
    changes: int = 2
    max_gene: int = 9
    flops_target: float | None = 0.5     # fraction of the original FLOPs kept; None: no budget
    seed: int = 0
    fitness_epochs: int = 1
    fitness_lr: float = 0.01
    fitness_subset: int | None = None    # train the candidate on n images (None: all)
    batch_size: int = 64
    select: str = "l1"                   # channel inheritance: l1 | random | first
    bn_batches: int = 10                 # BN re-estimation batches before/after training
    channel_multiple: int = 1            # widths aligned to this many channels (1: paper)
    fitness_metric: str = "accuracy"     # accuracy (paper) | loss: 1 / (1 + val cross-entropy)
    move_rule: str = "round_step"        # round_step (this project) | truncate (official code)
    finetune_from: str = "repruned"      # repruned (this project) | best_candidate (official)
    budget_repair: str = "count"         # count | resample | skip: a move repaired to its parent

    def __post_init__(self) -> None:
        for name, allowed in OPTIONS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {' | '.join(allowed)}, "
                                 f"not {getattr(self, name)!r}")


# the documented choices of every string option of ABCConfig (first: the default)
OPTIONS = {"fitness_metric": ("accuracy", "loss"),
           "move_rule": ("round_step", "truncate"),
           "finetune_from": ("repruned", "best_candidate"),
           "budget_repair": ("count", "resample", "skip")}
RESAMPLE_TRIES = 20   # budget_repair="resample": redraws of a move before it counts as reverted


@dataclass
class Evaluation:
    index: int
    cycle: int
    phase: str
    genes: list[int]
    widths: list[int]
    flops: int
    flops_ratio: float
    fitness: float
    epochs: float           # full-train-split epochs this evaluation cost (0 when cached)
    cached: bool
    seconds: float
    source: int = -1        # the food source a bee move started from (-1: init/scout, old logs)


@dataclass
class SearchResult:
    best_genes: list[int]
    best_widths: list[int]
    best_fitness: float
    best_flops_ratio: float
    evaluations: list[Evaluation] = field(default_factory=list)
    search_epochs: float = 0.0
    seconds: float = 0.0
    # bee moves (employed + onlooker): how many the FLOPs repair turned back into their parent
    # (first draw), how many ended unchanged after budget_repair, how many "skip" dropped
    moves: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"best_genes": self.best_genes, "best_widths": self.best_widths,
                "best_fitness": self.best_fitness, "best_flops_ratio": self.best_flops_ratio,
                "evaluations": len(self.evaluations),
                "trained_evaluations": sum(not e.cached for e in self.evaluations),
                "search_epochs": round(self.search_epochs, 3), "seconds": round(self.seconds, 1),
                "moves": self.moves}


def finetune(model, data, epochs: int, lr: float = 0.01, seed: int = 0, ckpt_dir=None,
             resume: bool = False, progress: bool = True, batch_size: int = 64):
    """Fine-tune a pruned model (SGD momentum 0.9, wd 5e-4, cosine from ``lr``); returns
    (model, TrainResult). The paper's CIFAR schedule is lr 0.01, steps at 50/100, 150 epochs."""
    res = train(model, data, BackboneTrainConfig(epochs=epochs, lr=lr, seed=seed, schedule="cosine",
                                                 batch_size=batch_size),
                ckpt_dir=ckpt_dir, resume=resume, progress=progress, eval_val=False)
    recalibrate_bn(model, data, 20, batch_size, seed)
    res.best_val = evaluate(model, data.val, data.mean, data.std)
    return model, res


def smallest_ratio(table: FlopsTable, max_gene: int = 9, multiple: int = 1) -> float:
    """FLOPs ratio of the smallest structure the encoding holds: every gene at 1."""
    return table.ratio(genes_to_widths([1] * len(table.base), table.base, max_gene, multiple))


def check_budget(table: FlopsTable, target: float | None, max_gene: int = 9, multiple: int = 1) -> None:
    """Refuse a budget no structure of the search space meets. Without this the repair stops
    at the smallest structure and every method would be compared above the asked budget."""
    if target is None:
        return
    floor = smallest_ratio(table, max_gene, multiple)
    if target < floor:
        raise ValueError(
            f"FLOPs target {target:g} is below {floor:.3f}, the smallest structure the search space "
            f"holds (every prunable layer at gene 1: 10% of its channels, aligned to {multiple}): "
            f"raise the target"
            + (" or align to fewer channels" if multiple > 1 else ""))


def fit_budget(genes: np.ndarray, table: FlopsTable, target: float | None, max_gene: int,
               rng: np.random.Generator, multiple: int = 1) -> np.ndarray:
    """Repair a gene vector to the FLOPs budget (see module docstring)."""
    g = np.clip(np.asarray(genes, np.int64), 1, max_gene)
    if target is None:
        return g
    base = table.base

    def ratio(x):
        return table.ratio(genes_to_widths(x, base, max_gene, multiple))

    while ratio(g) > target:
        cand = np.flatnonzero(g > 1)
        if len(cand) == 0:
            break
        g[rng.choice(cand)] -= 1
    changed = True
    while changed:
        changed = False
        for j in rng.permutation(len(g)):
            if g[j] < max_gene:
                g[j] += 1
                if ratio(g) > target:
                    g[j] -= 1
                else:
                    changed = True
    return g


def bee_move(x_i, x_k, genes, rng: np.random.Generator, rule: str, max_gene: int) -> np.ndarray:
    """The bees' neighbour of source ``x_i`` towards/away from ``x_k``: on every gene ``j`` of
    ``genes`` (one ``rng.uniform(-1, 1)`` draw each) ``x_i[j] + U(-1, 1) * (x_i[j] - x_k[j])``,
    clipped to [1, max_gene]; the other genes stay.

    * ``truncate`` (official code): the value is truncated toward zero (``int``); a gene where
      ``x_i == x_k``, or a small draw, leaves the gene where it was.
    * ``round_step`` (this project's default): the value is rounded, and a gene the rounding
      left unchanged is stepped by -1 or +1 (a second ``rng`` draw), so every move explores."""
    x_i = np.asarray(x_i, np.int64)
    new = x_i.copy()
    for j in genes:
        v = x_i[j] + rng.uniform(-1, 1) * (x_i[j] - x_k[j])
        if rule == "truncate":
            new[j] = int(np.clip(int(v), 1, max_gene))
            continue
        new[j] = int(np.clip(round(v), 1, max_gene))
        if new[j] == x_i[j]:
            new[j] = int(np.clip(x_i[j] + rng.choice([-1, 1]), 1, max_gene))
    return new


def onlooker_probs(fits) -> list[float]:
    """The chance an onlooker bee takes each source: ``0.9 * fit / max_fit + 0.1``."""
    mx = max(max(fits), 1e-12)
    return [0.9 * f / mx + 0.1 for f in fits]


class ABCPruner:
    """Search (``search``) then fine-tune (``finetune``) a pruned structure of ``model``.

    ``fitness_fn(widths) -> (accuracy, epochs_spent)`` may be injected (tests); by default a
    candidate inherits weights, trains ``fitness_epochs`` and is scored on ``data.val``."""

    def __init__(self, model, data, cfg: ABCConfig | None = None, log_dir: str | Path | None = None,
                 progress: bool = True,
                 fitness_fn: Callable[[list[int]], tuple[float, float]] | None = None,
                 input_size: tuple[int, int] = (32, 32)) -> None:
        self.model = model.eval()
        self.data = data
        self.cfg = cfg or ABCConfig()
        self.log_dir = Path(log_dir) if log_dir else None
        self.progress = progress
        self.table = FlopsTable(model, input_size)
        check_budget(self.table, self.cfg.flops_target, self.cfg.max_gene, self.cfg.channel_multiple)
        self.base = base_widths(model)
        self.fitness_fn = fitness_fn or self._train_fitness
        self._cache: dict[tuple[int, ...], float] = {}
        self.evaluations: list[Evaluation] = []
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ fitness
    def _train_fitness(self, widths: list[int]) -> tuple[float, float]:
        c = self.cfg
        cand = prune(self.model, widths, c.select, c.seed)
        recalibrate_bn(cand, self.data, c.bn_batches, c.batch_size, c.seed)
        train(cand, self.data, BackboneTrainConfig(epochs=c.fitness_epochs, lr=c.fitness_lr,
                                                   schedule="constant", seed=c.seed,
                                                   batch_size=c.batch_size,
                                                   train_subset=c.fitness_subset),
              progress=False, eval_val=False)
        recalibrate_bn(cand, self.data, c.bn_batches, c.batch_size, c.seed)
        self._last_model = cand
        if c.fitness_metric == "loss":
            score = 1.0 / (1.0 + evaluate_loss(cand, self.data.val, self.data.mean,
                                               self.data.std))
        else:
            score = evaluate(cand, self.data.val, self.data.mean, self.data.std)
        n = len(self.data.train)
        frac = min(c.fitness_subset, n) / n if c.fitness_subset else 1.0
        return score, c.fitness_epochs * frac

    def _load_log(self) -> list[dict]:
        path = self.log_dir / "evaluations.jsonl" if self.log_dir else None
        if not (path and path.exists()):
            return []
        recs = []
        for line in path.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:  # a line cut by a kill: drop it and everything after
                break
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        return recs

    def _evaluate(self, genes: np.ndarray, cycle: int, phase: str, source: int = -1) -> float:
        key = tuple(int(v) for v in genes)
        widths = genes_to_widths(key, self.base, self.cfg.max_gene, self.cfg.channel_multiple)
        t0 = time.perf_counter()
        if len(self.evaluations) < len(self._logged):  # resuming: replay the logged answer
            rec = self._logged[len(self.evaluations)]
            if tuple(rec["genes"]) != key:
                raise RuntimeError("resumed ABC search diverged from its log (different config "
                                   "or seed?); start it again without --resume")
            ev = Evaluation(**rec)
            self.evaluations.append(ev)
            self._cache[key] = ev.fitness
            if ev.fitness > self._best_fit:   # its trained weights are not in memory
                self._best_fit, self._best_key, self._best_model = ev.fitness, key, None
            if self._bar is not None:
                self._bar.update(1)
            return ev.fitness
        cached = key in self._cache
        if cached:
            fit, ep = self._cache[key], 0.0
        else:
            self._last_model = None
            fit, ep = self.fitness_fn(widths)
            self._cache[key] = fit
            if fit > self._best_fit:
                self._keep_best(key, widths, float(fit))
        ev = Evaluation(len(self.evaluations), cycle, phase, list(key), widths, self.table(widths),
                        round(self.table.ratio(widths), 5), float(fit), float(ep),
                        cached, round(time.perf_counter() - t0, 3), source)
        self.evaluations.append(ev)
        if self.log_dir:
            with open(self.log_dir / "evaluations.jsonl", "a") as f:
                f.write(json.dumps(asdict(ev)) + "\n")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(best=f"{max(e.fitness for e in self.evaluations):.4f}",
                                  phase=phase)
        return float(fit)

    # ------------------------------------------------------------------ search
    def search(self, resume: bool = False) -> SearchResult:
        c = self.cfg
        rng = np.random.default_rng(c.seed)
        n_genes = len(self.base)
        self._logged = self._load_log() if resume else []
        self.evaluations, self._cache = [], {}
        self._best_fit, self._best_key, self._best_model = float("-inf"), None, None
        if not resume and self.log_dir and (self.log_dir / "evaluations.jsonl").exists():
            (self.log_dir / "evaluations.jsonl").unlink()
        total = c.food_number * (1 + 2 * c.max_cycle)
        self._bar = tqdm(total=total, desc="ABC search", disable=not self.progress, leave=False)
        t0 = time.perf_counter()

        def random_source() -> np.ndarray:
            return fit_budget(rng.integers(1, c.max_gene + 1, n_genes), self.table,
                              c.flops_target, c.max_gene, rng, c.channel_multiple)

        def one_move(i: int, foods: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            k = int(rng.choice([j for j in range(len(foods)) if j != i])) if len(foods) > 1 else i
            genes = rng.choice(n_genes, size=min(c.changes, n_genes), replace=False)
            raw = bee_move(foods[i], foods[k], genes, rng, c.move_rule, c.max_gene)
            return raw, fit_budget(raw, self.table, c.flops_target, c.max_gene, rng,
                                   c.channel_multiple)

        def move(i: int, foods: list[np.ndarray]) -> np.ndarray:
            raw, new = one_move(i, foods)
            stats["moves"] += 1
            if np.array_equal(new, foods[i]) and not np.array_equal(raw, foods[i]):
                stats["repair_reverted"] += 1      # the budget repair undid the bee's move
            tries = 1
            while (c.budget_repair == "resample" and tries < RESAMPLE_TRIES
                   and np.array_equal(new, foods[i])):
                raw, new = one_move(i, foods)
                tries += 1
            if np.array_equal(new, foods[i]):
                stats["unchanged_moves"] += 1
            return new

        stats = {"moves": 0, "repair_reverted": 0, "unchanged_moves": 0, "skipped_moves": 0}
        foods = [random_source() for _ in range(c.food_number)]
        fits = [self._evaluate(f, 0, "init") for f in foods]
        trials = [0] * c.food_number
        best_i = int(np.argmax(fits))
        best = (foods[best_i].copy(), fits[best_i])

        def try_move(i: int, cycle: int, phase: str) -> None:
            nonlocal best
            new = move(i, foods)
            if c.budget_repair == "skip" and np.array_equal(new, foods[i]):
                stats["skipped_moves"] += 1        # no evaluation, no failed trial
                return
            f = self._evaluate(new, cycle, phase, i)
            if f > fits[i]:
                foods[i], fits[i], trials[i] = new, f, 0
            else:
                trials[i] += 1
            if f > best[1]:
                best = (new.copy(), f)

        for cycle in range(1, c.max_cycle + 1):
            for i in range(c.food_number):                       # employed bees
                try_move(i, cycle, "employed")
            probs = onlooker_probs(fits)
            done, i = 0, 0
            while done < c.food_number:                          # onlooker bees
                if rng.random() < probs[i]:
                    try_move(i, cycle, "onlooker")
                    done += 1
                i = (i + 1) % c.food_number
            worst = int(np.argmax(trials))                       # scout bee
            if trials[worst] >= c.limit:
                foods[worst] = random_source()
                fits[worst] = self._evaluate(foods[worst], cycle, "scout")
                trials[worst] = 0
                if fits[worst] > best[1]:
                    best = (foods[worst].copy(), fits[worst])
        self._bar.close()
        self._bar = None
        bw = genes_to_widths(best[0], self.base, c.max_gene, c.channel_multiple)
        res = SearchResult([int(v) for v in best[0]], bw, float(best[1]),
                           round(self.table.ratio(bw), 5), list(self.evaluations),
                           sum(e.epochs for e in self.evaluations),
                           time.perf_counter() - t0, moves=dict(stats))
        if self.log_dir:
            (self.log_dir / "search.json").write_text(json.dumps(
                {"config": asdict(c), "paper_defaults": PAPER_DEFAULTS, **res.summary()}, indent=2))
            plot_convergence(res.evaluations, self.log_dir / "convergence.png")
        return res

    _bar = None
    _logged: list[dict] = []
    _last_model = None
    _best_fit = float("-inf")
    _best_key: tuple[int, ...] | None = None
    _best_model = None

    def _keep_best(self, key: tuple[int, ...], widths: list[int], fit: float) -> None:
        """Remember the best candidate's fitness-trained model (finetune_from="best_candidate");
        with a log folder also on disk, so a resumed search still has it."""
        self._best_fit, self._best_key = fit, key
        if self.cfg.finetune_from != "best_candidate":
            return
        self._best_model = self._last_model
        if self.log_dir and self._best_model is not None:
            import torch  # defer: abc's own code needs torch only here (train loads it anyway)

            torch.save({"genes": list(key), "widths": widths,
                        "state_dict": self._best_model.state_dict()},
                       self.log_dir / "best_candidate.pt")

    def build(self, widths: list[int]):
        """The pruned, weight-inheriting model of a structure (before fine-tuning)."""
        return prune(self.model, widths, self.cfg.select, self.cfg.seed)

    def finetune_start(self, res: SearchResult):
        """The model fine-tuning starts from. ``finetune_from="repruned"`` (default, what every
        figure in docs/pruning.md used): the best structure pruned again from the base model
        (top-L1 filters). ``"best_candidate"`` (official code): the best candidate as its
        fitness run left it (weights inherited *and* trained ``fitness_epochs``); after a
        resumed search it comes from ``best_candidate.pt``, or, when that is missing, its
        seeded fitness training is run again."""
        widths = res.best_widths
        if self.cfg.finetune_from == "repruned":
            return prune(self.model, widths, "l1", self.cfg.seed)
        key = tuple(res.best_genes)
        if self._best_model is not None and self._best_key == key:
            return self._best_model
        path = self.log_dir / "best_candidate.pt" if self.log_dir else None
        if path is not None and path.exists():
            import torch  # defer: as in _keep_best

            saved = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(saved["genes"]) == key:
                model = prune(self.model, widths, self.cfg.select, self.cfg.seed)
                model.load_state_dict(saved["state_dict"])
                return model.eval()
        self._train_fitness(widths)
        return self._last_model.eval()


def plot_convergence(evaluations: list[Evaluation], path: str | Path) -> None:
    """Best-so-far fitness and every evaluated structure vs cumulative training epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not evaluations:
        return
    ep = np.cumsum([e.epochs for e in evaluations])
    fit = np.array([e.fitness for e in evaluations])
    best = np.maximum.accumulate(fit)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"init": "C0", "employed": "C1", "onlooker": "C2", "scout": "C3"}
    for ph, col in colors.items():
        m = np.array([e.phase == ph for e in evaluations])
        if m.any():
            ax[0].scatter(np.flatnonzero(m), fit[m], s=12, c=col, label=ph)
    ax[0].plot(best, "k-", label="best so far")
    ax[0].set_xlabel("evaluation")
    ax[0].set_ylabel("fitness (val accuracy)")
    ax[0].legend(fontsize=7)
    ax[1].plot(ep, best, "k-")
    ax[1].set_xlabel("search cost (training epochs)")
    ax[1].set_ylabel("best fitness")
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle("ABCPruner search convergence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search_cost_epochs(cfg: ABCConfig, train_size: int) -> float:
    """Upper bound of the search cost in full-split epochs (no duplicates, every scout fires)."""
    frac = min(cfg.fitness_subset, train_size) / train_size if cfg.fitness_subset else 1.0
    return cfg.food_number * (1 + 2 * cfg.max_cycle + (cfg.max_cycle / max(cfg.limit, 1))) \
        * cfg.fitness_epochs * frac
