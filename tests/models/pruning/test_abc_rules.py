"""ABCPruner's bee rules checked against the paper/official code on toy fitness functions
(no training): the move formula of each move_rule, greedy replacement and failed-trial counts
of employed and onlooker bees, the onlooker probabilities, the scout, the budget-repair
options, and that the search beats its random start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vistream.models.backbones import create_model
from vistream.models.pruning.abc import (ABCConfig, ABCPruner, bee_move, onlooker_probs)
from vistream.models.pruning.surgery import genes_to_widths


class ScriptedRng:
    """Stands in for np.random.Generator in bee_move: uniform draws and +-1 steps scripted."""

    def __init__(self, uniforms, steps=()):
        self.uniforms, self.steps = list(uniforms), list(steps)

    def uniform(self, lo, hi):
        assert (lo, hi) == (-1, 1)
        return self.uniforms.pop(0)

    def choice(self, options):
        assert list(options) == [-1, 1]
        return self.steps.pop(0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, widths=[8, 8, 8, 16, 16, 16, 32, 32, 32],
                        base=8).eval()


def test_truncate_move_is_the_official_formula():
    x_i, x_k = np.array([5, 5, 5, 5, 5]), np.array([1, 5, 9, 1, 9])
    # 5 + .975*4 = 8.9 -> 8 (rounding would give 9); 5 + .9*0 = 5; 5 - .7*-4 ... see below
    new = bee_move(x_i, x_k, [0, 1, 2, 3], ScriptedRng([0.975, 0.9, 0.7, -0.99]), "truncate", 9)
    # gene 2: 5 + 0.7 * (5 - 9) = 2.2 -> 2; gene 3: 5 - 0.99 * 4 = 1.04 -> 1; gene 4 not chosen
    assert new.tolist() == [8, 5, 2, 1, 5]
    # clipping: 5 + 1.0 * (5 - 1) * ... beyond M -> M, below 1 -> 1
    assert bee_move([8, 2], [1, 9], [0, 1], ScriptedRng([0.9, 0.9]), "truncate", 9).tolist() \
        == [9, 1]


def test_round_step_move_rounds_and_steps_an_unchanged_gene():
    x_i, x_k = np.array([5, 5, 5]), np.array([1, 5, 9])
    new = bee_move(x_i, x_k, [0, 1, 2], ScriptedRng([0.975, 0.9, 0.1], steps=[-1, 1]),
                   "round_step", 9)
    # 8.9 -> 9; x_i == x_k -> 5, stepped -1 -> 4; 5 + .1*-4 = 4.6 -> 5 unchanged, stepped +1 -> 6
    assert new.tolist() == [9, 4, 6]


def test_onlooker_probabilities():
    assert onlooker_probs([0.5, 1.0, 0.0]) == pytest.approx([0.55, 1.0, 0.1])
    assert onlooker_probs([0.0, 0.0]) == pytest.approx([0.1, 0.1])


def replay(cfg: ABCConfig, evaluations) -> dict:
    """Re-run the colony's bookkeeping from the evaluation log and check each rule on the way."""
    n = cfg.food_number
    init = [e for e in evaluations if e.phase == "init"]
    assert len(init) == n
    foods = [e.genes for e in init]
    fits = [e.fitness for e in init]
    trials = [0] * n
    scouts = 0
    rest = evaluations[n:]
    for cycle in range(1, cfg.max_cycle + 1):
        this = [e for e in rest if e.cycle == cycle]
        employed = [e for e in this if e.phase == "employed"]
        onlookers = [e for e in this if e.phase == "onlooker"]
        scout = [e for e in this if e.phase == "scout"]
        # every employed bee moves once, in source order; then food_number onlooker moves
        assert [e.source for e in employed] == list(range(n))
        assert len(onlookers) == n and len(scout) <= 1
        for e in employed + onlookers:
            i = e.source
            changed = sum(a != b for a, b in zip(e.genes, foods[i]))
            assert changed <= cfg.changes    # a move from the source's *current* genes (0: clipped)
            if e.fitness > fits[i]:                     # greedy replacement
                foods[i], fits[i], trials[i] = e.genes, e.fitness, 0
            else:                                       # a failed trial
                trials[i] += 1
        worst = int(np.argmax(trials))
        assert bool(scout) == (trials[worst] >= cfg.limit)   # the scout fires exactly then
        if scout:
            foods[worst], fits[worst], trials[worst] = scout[0].genes, scout[0].fitness, 0
            scouts += 1
    return {"foods": foods, "fits": fits, "scouts": scouts}


BASE = np.array([8] * 3 + [16] * 3 + [32] * 3)


def toy_fitness(target):
    """Peak 1.0 at the ``target`` widths: 1 / (1 + L1 distance in tenths of each layer)."""
    def fitness(widths):
        return 1.0 / (1.0 + float(np.abs((np.asarray(widths) - target) / BASE).sum()) * 10 / 9), 0.0
    return fitness


@pytest.mark.parametrize("rule", ["round_step", "truncate"])
def test_bee_rules_on_a_toy_fitness(net, rule):
    target = np.asarray(genes_to_widths([2, 7, 4, 9, 1, 5, 3, 8, 6], list(BASE)))
    cfg = ABCConfig(food_number=4, max_cycle=6, limit=2, flops_target=None, seed=1,
                    move_rule=rule)
    res = ABCPruner(net, None, cfg, progress=False, fitness_fn=toy_fitness(target)).search()
    state = replay(cfg, res.evaluations)
    assert state["scouts"] >= 1                      # limit 2 over 6 cycles: scouts must fire
    assert res.best_fitness == max(e.fitness for e in res.evaluations)


@pytest.mark.parametrize("rule", ["round_step", "truncate"])
def test_search_beats_its_random_start(net, rule):
    rng = np.random.default_rng(0)
    for seed in range(6):
        target = np.asarray(genes_to_widths(rng.integers(1, 10, 9), list(BASE)))
        cfg = ABCConfig(food_number=5, max_cycle=8, limit=3, flops_target=None, seed=seed,
                        move_rule=rule)
        res = ABCPruner(net, None, cfg, progress=False, fitness_fn=toy_fitness(target)).search()
        start = max(e.fitness for e in res.evaluations if e.phase == "init")
        assert res.best_fitness > start or start == 1.0, (seed, start, res.best_fitness)


def moves_of(mode: str, seed: int = 0):
    m = create_model("resnet56", num_classes=10)
    cfg = ABCConfig(food_number=4, max_cycle=3, limit=3, flops_target=0.5, seed=seed,
                    channel_multiple=8, budget_repair=mode)
    return ABCPruner(m, None, cfg, progress=False,
                     fitness_fn=lambda w: (float(sum(w)) / 1e4, 0.0)).search()


def test_budget_repair_options():
    count, resample, skip = (moves_of(m) for m in ("count", "resample", "skip"))
    c = count.moves
    assert c["moves"] == 2 * 4 * 3 and c["repair_reverted"] > 0     # the repair undoes moves
    assert c["unchanged_moves"] >= c["repair_reverted"] and c["skipped_moves"] == 0
    # count: an undone move is still an evaluation (a cached one: the parent's fitness)
    assert len(count.evaluations) == 4 + 2 * 4 * 3 + sum(e.phase == "scout"
                                                         for e in count.evaluations)
    assert resample.moves["unchanged_moves"] < c["unchanged_moves"]
    # skip: undone moves are neither evaluated nor failed trials
    s = skip.moves
    assert s["skipped_moves"] == s["unchanged_moves"] > 0
    assert sum(e.phase in ("employed", "onlooker") for e in skip.evaluations) \
        == s["moves"] - s["skipped_moves"]


def test_unknown_options_are_refused():
    for kw in ({"move_rule": "round"}, {"finetune_from": "base"}, {"budget_repair": "drop"}):
        with pytest.raises(ValueError, match="must be one of"):
            ABCConfig(**kw)


def _tiny_bundle():
    from vistream.models.data import DataBundle, Split

    rng = np.random.default_rng(0)
    s = Split(rng.random((16, 3, 16, 16)).astype(np.float32), np.arange(16) % 10)
    return DataBundle("tiny", s, s, s, 10)


def test_finetune_from_best_candidate_keeps_its_trained_weights(tmp_path):
    from vistream.models.pruning.surgery import prune

    torch.manual_seed(0)
    tiny = create_model("resnet20", num_classes=10, widths=[4] * 9, base=4).eval()
    data = _tiny_bundle()
    kw = dict(food_number=2, max_cycle=1, limit=1, fitness_subset=8, batch_size=8, bn_batches=1,
              flops_target=None, fitness_lr=0.1)
    rep = ABCPruner(tiny, data, ABCConfig(**kw), progress=False, input_size=(16, 16))
    r = rep.search()
    fresh = prune(tiny, r.best_widths, "l1", 0).state_dict()
    start = rep.finetune_start(r).state_dict()
    assert all(torch.equal(start[k], v) for k, v in fresh.items())
    cfg = ABCConfig(**kw, finetune_from="best_candidate")
    best = ABCPruner(tiny, data, cfg, tmp_path, progress=False, input_size=(16, 16))
    rb = best.search()
    assert rb.best_genes == r.best_genes
    trained = best.finetune_start(rb).state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in fresh.items() if v.is_floating_point())
    # a resumed search has not the model in memory: it comes back from best_candidate.pt
    again = ABCPruner(tiny, data, cfg, tmp_path, progress=False, input_size=(16, 16))
    loaded = again.finetune_start(again.search(resume=True)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
