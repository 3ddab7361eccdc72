"""Performance-based operation space reduction and its UCB rule (models/nas/reduction.py)."""

from __future__ import annotations

import numpy as np

from vistream.models.nas.reduction import (
    NONE_INDEX,
    EdgeReducer,
    candidates,
    drop_choice,
    round_scores,
    ucb_bonus,
    ucb_pick,
)


def test_candidates_are_the_weaker_half_by_alpha():
    alpha = np.array([0.0, 5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 7.0])
    assert candidates(alpha, list(range(8))) == [0, 2, 4, 5]
    assert candidates(alpha, [1, 3]) == [3, 1]  # two left: both are sampled
    assert candidates(alpha, [3]) == []


def test_a_round_drops_the_operation_with_the_weakest_sampled_accuracy():
    mask = np.ones((1, 1, 8), dtype=bool)
    alpha = np.zeros((1, 1, 8))
    alpha[0, 0, 4:] = 1.0  # ops 4..7 are the stronger half; 0..3 the candidates
    red = EdgeReducer(mask.shape, tau=0.05)
    plan = red.plan(alpha, mask)
    assert plan[(0, 0)] == [0, 1, 2, 3]
    acc_sum, acc_n = np.zeros(mask.shape), np.zeros(mask.shape)
    for k, acc in zip([0, 1, 2, 3], [0.5, 0.6, 0.2, 0.7]):  # op 2's sampled nets score worst
        choice = np.array([[k]])
        red.credit(choice, plan, acc, acc_sum, acc_n)
    dropped = red.reduce(plan, mask, acc_sum, acc_n)
    assert dropped == {(0, 0): 2}
    assert mask[0, 0].tolist() == [True, True, False, True, True, True, True, True]
    # the stronger half got (max + mean) / 2 of the candidates' likelihoods: above the mean
    assert red.score[0, 0, 5] > red.score[0, 0, 0]


def test_running_scores_carry_half_of_the_past_rounds():
    red = EdgeReducer((1, 1, 3), tau=1.0)
    red.score[0, 0] = [10.0, 0.0, 0.0]  # op 0 was strong in earlier rounds
    mask = np.ones((1, 1, 3), dtype=bool)
    acc_sum = np.array([[[0.1, 0.5, 0.4]]])
    acc_n = np.ones((1, 1, 3))
    red.reduce({(0, 0): [0, 1, 2]}, mask, acc_sum, acc_n)
    assert not mask[0, 0, 2] and mask[0, 0, 0]  # op 0 survives a weak round on its history


def test_round_scores_are_a_softmax_of_mean_accuracies():
    s = round_scores([0, 1, 2], [0, 1], np.array([0.2, 0.8, 0.0]), np.array([1, 2, 0]), tau=0.1)
    assert abs(s[0] + s[1] - 1.0) < 1e-9 and s[1] > s[0]  # means 0.2 and 0.4
    assert abs(s[2] - (max(s[0], s[1]) + 0.5) / 2) < 1e-9


def test_none_is_never_the_last_operation():
    score = np.zeros(8)
    score[NONE_INDEX] = 5.0  # even when none scores best
    assert drop_choice([NONE_INDEX, 4], score, np.ones(8), ucb=False, c=1.0) == NONE_INDEX


def test_ucb_bonus_is_infinite_for_unsampled_and_shrinks_with_samples():
    b = ucb_bonus(np.array([0, 1, 4]), total=5, c=1.0)
    assert np.isinf(b[0]) and b[1] > b[2] > 0
    assert abs(b[2] - np.sqrt(2 * np.log(5) / 4)) < 1e-12


def test_ucb_pick_explores_then_exploits():
    reward, counts = np.zeros(4), np.zeros(4)
    assert ucb_pick([1, 2], reward, counts, c=0.5) == 1  # both unsampled: the first
    reward[1], counts[1] = 0.9, 1
    assert ucb_pick([1, 2], reward, counts, c=0.5) == 2  # the unsampled one next
    reward[2], counts[2] = 0.1, 1
    assert ucb_pick([1, 2], reward, counts, c=0.5) == 1  # then the better mean


def test_ucb_drop_spares_an_operation_sampled_too_seldom_to_judge():
    remaining = [1, 2]
    score = np.array([0.0, 0.40, 0.45, 0.0])
    counts = np.array([0.0, 1.0, 50.0, 0.0])  # op 1 slightly worse but seen once
    assert drop_choice(remaining, score, counts, ucb=False, c=0.5) == 1
    assert drop_choice(remaining, score, counts, ucb=True, c=0.5) == 2


def test_uniform_sampling_covers_every_candidate_once_per_pass():
    red = EdgeReducer((1, 2, 8))
    plan = {(0, 0): [0, 1, 2, 3], (0, 1): [5, 6]}
    full = np.array([[7, 7]])
    got = list(red.samples(plan, passes=1, chosen_full=full, rng=np.random.default_rng(0)))
    assert len(got) == 4
    assert sorted(int(c[0, 0]) for c in got) == [0, 1, 2, 3]
    assert sorted(int(c[0, 1]) for c in got) == [5, 5, 6, 6]
