"""Fine-grained labels: CaPO calibrated rewards, Pareto pair selection, reward consistency, the Arena."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipelines.arena import COMMON_SPREAD, SPREAD_PRIOR_SD, expected_gap, fit_arena, gap_matrix, leaderboard
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


def play(mu, sigma, n_games, rng, same=False):
    """The Arena's generative model: n_games pairs of generators drawn at random (two different ones, or one
    twice with same=True); each image's quality q ~ N(mu_g, sigma_g^2) and the better image wins.
    Returns winner and loser indices and q_w - q_l of every game."""
    k = len(mu)
    i = rng.integers(0, k, n_games)
    j = i if same else (i + rng.integers(1, k, n_games)) % k
    qi, qj = rng.normal(mu[i], sigma[i]), rng.normal(mu[j], sigma[j])
    won = qi > qj
    return np.where(won, i, j), np.where(won, j, i), np.abs(qi - qj)


def win_counts(w, lo) -> dict[tuple[str, str], int]:
    k = int(max(w.max(), lo.max())) + 1
    n = np.bincount(w * k + lo, minlength=k * k).reshape(k, k)
    return {(f"g{a}", f"g{b}"): int(n[a, b]) for a in range(k) for b in range(k) if n[a, b]}


def arena_unit(sigma):
    """The Arena measures quality in units where the spreads' geometric mean is 1/sqrt(2) (the data fix no
    scale): the factor that takes a simulation's quality scale there."""
    return np.sqrt(0.5) / np.exp(np.log(sigma).mean())


def test_arena_recovers_the_order_of_simulated_generators():
    rng = np.random.default_rng(0)
    mu_true, sigma = np.array([-1.5, -0.8, 0.0, 0.7, 1.4]), np.array([0.6, 0.9, 0.7, 0.8, 0.5])
    ratings = fit_arena(win_counts(*play(mu_true, sigma, 3000, rng)[:2]))
    board = leaderboard(ratings)
    assert [r["generator"] for r in board] == ["g4", "g3", "g2", "g1", "g0"]
    assert all(r["low"] < r["mu"] < r["high"] and r["games"] > 0 for r in board)


def test_arena_intervals_cover_the_truth_at_about_their_stated_rate():
    rng = np.random.default_rng(1)
    hits = total = 0
    for _ in range(60):
        mu_true = rng.normal(0, 1, 5)  # capabilities and spreads drawn from the prior the fit assumes
        z = rng.normal(0, SPREAD_PRIOR_SD, 5)
        sigma = COMMON_SPREAD * np.exp(z - z.mean())
        ratings = fit_arena(win_counts(*play(mu_true, sigma, 150, rng)[:2]))
        for i, m in enumerate(mu_true - mu_true.mean()):  # the Arena reports standings relative to the mean
            lo, hi = ratings[f"g{i}"].interval(0.9)
            hits += lo <= m <= hi
            total += 1
    rate = hits / total
    sd = np.sqrt(0.9 * 0.1 / total)
    assert abs(rate - 0.9) < 4 * sd, rate


def test_arena_gaps_match_monte_carlo_of_the_generative_model():
    """Generators with different means and spreads on an arbitrary quality scale: for every (winner, loser)
    generator pair, same-generator pairs included, the gap equals the mean of q_w - q_l over the simulated
    games with that outcome (in the Arena's unit)."""
    rng = np.random.default_rng(2)
    mu, sigma = np.array([5.0, 5.6, 6.3, 4.4, 5.2]), np.array([0.6, 1.1, 0.8, 0.7, 1.0])
    games = [play(mu, sigma, 2_000_000, rng) for _ in range(4)] + [play(mu, sigma, 1_000_000, rng, same=True)]
    w, lo, d = (np.concatenate(x) for x in zip(*games))
    ratings = fit_arena(win_counts(w, lo))
    assert len(ratings) == 5 and ratings["g1"].spread > ratings["g0"].spread  # per-generator spreads
    k = len(mu)
    gaps = gap_matrix(ratings, [f"g{i}" for i in range(k)])
    cell = w * k + lo
    mc = np.bincount(cell, d, k * k) / np.bincount(cell, minlength=k * k) * arena_unit(sigma)
    np.testing.assert_allclose(gaps.ravel(), mc, rtol=0.04)


def test_gaps_do_not_shrink_as_games_accumulate():
    """The posterior uncertainty of mu shrinks with more games; the spread of a generator's outputs, and so
    an upset's gap, does not (ArenaPO: an image is a sample of its generator, not of our belief about it)."""
    mu, sigma = np.array([0.0, 1.3]), np.array([COMMON_SPREAD, COMMON_SPREAD])  # sigma_w^2 + sigma_l^2 = 1
    rng = np.random.default_rng(3)
    w, _, d = play(mu, sigma, 1_000_000, rng)
    truth = d[w == 0].mean()  # the weaker generator won: ~0.47
    sds = []
    for n in (1000, 10_000, 100_000):
        ratings = fit_arena(win_counts(*play(mu, sigma, n, rng)[:2]))
        assert gap_matrix(ratings, ["g0", "g1"])[0, 1] == pytest.approx(truth, rel=0.1), n
        assert ratings["g0"].spread == ratings["g1"].spread == pytest.approx(COMMON_SPREAD)  # 2 generators: case V
        sds.append(ratings["g0"].mu_sd)
    assert sds[2] < sds[0] / 5


@given(st.integers(2, 8).flatmap(lambda k: arrays(np.int64, (k, k), elements=st.one_of(st.just(0), st.integers(0, 5 * 10**6)))))
@settings(max_examples=60, deadline=None)
def test_arena_fit_is_finite_and_normalised_on_any_record(counts):
    """One-sided records (a generator that won every game), huge counts and disconnected generators included."""
    wins = {(f"g{a}", f"g{b}"): int(counts[a, b]) for a in range(len(counts)) for b in range(len(counts)) if a != b}
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow on the way to the mode
        ratings = fit_arena(wins)
    if not ratings:
        assert not any(wins.values())
        return
    mu, sd, spread = (np.array([getattr(r, f) for r in ratings.values()]) for f in ("mu", "mu_sd", "spread"))
    assert np.isfinite(mu).all() and np.isfinite(sd).all() and (spread > 0).all()
    assert mu.sum() == pytest.approx(0, abs=1e-9) and np.exp(np.log(spread).mean()) == pytest.approx(COMMON_SPREAD)
    gaps = gap_matrix(ratings, sorted(ratings))
    assert np.isfinite(gaps).all() and (gaps > 0).all()


@given(st.floats(-3, 3), st.floats(0.05, 2), st.floats(-3, 3), st.floats(0.05, 2))
@settings(max_examples=30, deadline=None)
def test_expected_gap_is_positive_and_matches_monte_carlo(mu_w, s_w, mu_l, s_l):
    gap = expected_gap(mu_w, s_w, mu_l, s_l)
    assert gap > 0
    d = np.random.default_rng(0).normal(mu_w - mu_l, np.hypot(s_w, s_l), 400_000)
    d = d[d > 0]
    if len(d) > 2000:
        assert gap == pytest.approx(d.mean(), rel=0.03, abs=0.01)
