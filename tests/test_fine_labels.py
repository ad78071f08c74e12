"""Fine-grained labels: CaPO calibrated rewards, Pareto pair selection, reward consistency, the Arena."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipelines.arena import expected_gap, fit_arena, leaderboard
from pipelines.calibration import calibrated_rewards, pareto_fronts, reward_consistent, select_pair

finite = st.floats(-50, 50, allow_nan=False)
score_sets = st.integers(2, 8).flatmap(lambda n: st.integers(1, 4).flatmap(
    lambda m: arrays(np.float64, (n, m), elements=finite)))


@given(score_sets)
@settings(max_examples=300, deadline=None)
def test_calibrated_rewards_lie_in_unit_interval_and_keep_each_rewards_order(scores):
    cal = calibrated_rewards(scores)
    assert cal.shape == scores.shape and ((cal >= 0) & (cal <= 1)).all()
    for m in range(scores.shape[1]):
        for i in range(len(scores)):
            for j in range(len(scores)):
                if scores[i, m] > scores[j, m]:
                    assert cal[i, m] >= cal[j, m] - 1e-12  # sigmoid is monotone: order kept, up to rounding
                if scores[i, m] == scores[j, m]:
                    assert cal[i, m] == pytest.approx(cal[j, m])


def test_calibrated_reward_of_two_images_is_their_win_probability():
    cal = calibrated_rewards(np.array([2.0, 0.0]))
    assert cal[0] == pytest.approx(1 / (1 + np.exp(-2.0))) and cal.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 images"):
        calibrated_rewards(np.array([1.0]))


def dominates(a, b):
    return (a >= b).all() and (a > b).any()


@given(score_sets)
@settings(max_examples=300, deadline=None)
def test_pareto_selection_never_picks_a_dominated_winner(scores):
    cal = calibrated_rewards(scores)
    fronts = pareto_fronts(cal)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(len(cal)))  # a partition
    for f in fronts[0]:
        assert not any(dominates(cal[o], cal[f]) for o in range(len(cal)))
    winner, loser = select_pair(cal)
    assert not any(dominates(cal[o], cal[winner]) for o in range(len(cal)))
    assert winner != loser or len(set(map(tuple, cal))) == 1
    if len(fronts) > 1:
        assert loser in fronts[-1]  # the loser comes from the lowest front
        assert not dominates(cal[loser], cal[winner])


def test_single_reward_selection_is_best_vs_worst():
    scores = np.array([0.3, 2.0, -1.0, 0.7])
    assert select_pair(calibrated_rewards(scores)) == (1, 2)


@pytest.mark.parametrize("w,lo,expected", [([2, 3], [1, 1], True), ([2, 0], [1, 1], False), ([1, 1], [2, 2], True),
                                          ([1, 2], [1, 1], False), ([1], [0], None), ([1, None], [0, 0], None)])
def test_reward_consistency(w, lo, expected):
    assert reward_consistent(w, lo) is expected


def simulate(mu_true, n_games, rng):
    """Games between random pairs of generators; i beats j with probability Phi(mu_i - mu_j)."""
    from scipy.stats import norm

    winners, losers = [], []
    for _ in range(n_games):
        i, j = rng.choice(len(mu_true), size=2, replace=False)
        a, b = (i, j) if rng.random() < norm.cdf(mu_true[i] - mu_true[j]) else (j, i)
        winners.append(f"g{a}")
        losers.append(f"g{b}")
    return winners, losers


def test_arena_recovers_the_order_of_simulated_generators():
    rng = np.random.default_rng(0)
    mu_true = np.array([-1.5, -0.8, 0.0, 0.7, 1.4])
    ratings = fit_arena(*simulate(mu_true, 3000, rng))
    board = leaderboard(ratings)
    assert [r["generator"] for r in board] == ["g4", "g3", "g2", "g1", "g0"]
    assert all(r["low"] < r["mu"] < r["high"] and r["games"] > 0 for r in board)


def test_arena_intervals_cover_the_truth_at_about_their_stated_rate():
    rng = np.random.default_rng(1)
    hits = total = 0
    for _ in range(60):
        mu_true = rng.normal(0, 1, 5)  # drawn from the prior the fit assumes
        ratings = fit_arena(*simulate(mu_true, 150, rng))
        for i, m in enumerate(mu_true - mu_true.mean()):  # the Arena reports standings relative to the mean
            lo, hi = ratings[f"g{i}"].interval(0.9)
            hits += lo <= m <= hi
            total += 1
    rate = hits / total
    sd = np.sqrt(0.9 * 0.1 / total)
    assert abs(rate - 0.9) < 4 * sd, rate


@given(st.floats(-3, 3), st.floats(0.05, 2), st.floats(-3, 3), st.floats(0.05, 2))
@settings(max_examples=30, deadline=None)
def test_expected_gap_is_positive_and_matches_monte_carlo(mu_w, s_w, mu_l, s_l):
    gap = expected_gap(mu_w, s_w, mu_l, s_l)
    assert gap > 0
    d = np.random.default_rng(0).normal(mu_w - mu_l, np.hypot(s_w, s_l), 400_000)
    d = d[d > 0]
    if len(d) > 2000:
        assert gap == pytest.approx(d.mean(), rel=0.03, abs=0.01)
