"""The generator Arena (ArenaPO): each generator's capability ~ N(mu, sigma^2), inferred from every
labelled pair, and per pair the expected quality gap as an offline fine-grained reward.

Model (Bayesian Thurstone): P(generator w beats l) = Phi(mu_w - mu_l), prior mu ~ N(0, prior_sd^2).
The posterior is summarised by its mode and a Laplace approximation (the inverse Hessian of the
negative log posterior at the mode), reported relative to the field's mean, so each generator gets
mu and sigma and a leaderboard with intervals. For a pair with observed winner w, the gap
d ~ N(mu_w - mu_l, sigma_w^2 + sigma_l^2) and the fine-grained reward is E[d | d > 0], the mean of
that normal truncated to d > 0: always positive, large when the winner is the much stronger
generator, small when the result was an upset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats
from scipy.special import log_ndtr


@dataclass(frozen=True)
class Rating:
    name: str
    mu: float
    sigma: float
    wins: int
    games: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        z = stats.norm.ppf(0.5 + level / 2)
        return self.mu - z * self.sigma, self.mu + z * self.sigma


def fit_arena(winners: list[str], losers: list[str], prior_sd: float = 1.0) -> dict[str, Rating]:
    """Posterior mode and Laplace sigma of every generator's capability from (winner, loser) names."""
    names = sorted(set(winners) | set(losers))
    index = {n: i for i, n in enumerate(names)}
    w = np.array([index[n] for n in winners], dtype=np.int64)
    lo = np.array([index[n] for n in losers], dtype=np.int64)
    k = len(names)

    def neg_log_post(mu):
        d = mu[w] - mu[lo]
        ratio = np.exp(stats.norm.logpdf(d) - log_ndtr(d))  # phi(d) / Phi(d), stable for d << 0
        grad = mu / prior_sd**2
        np.add.at(grad, w, -ratio)
        np.add.at(grad, lo, ratio)
        return -log_ndtr(d).sum() + (mu**2).sum() / (2 * prior_sd**2), grad

    mu = optimize.minimize(neg_log_post, np.zeros(k), jac=True, method="L-BFGS-B").x
    # Hessian of the negative log posterior: sum over games of h (e_w - e_l)(e_w - e_l)^T + I / prior_sd^2,
    # h = -d^2/dd^2 log Phi(d) = r (d + r) with r = phi(d) / Phi(d).
    d = mu[w] - mu[lo]
    r = np.exp(stats.norm.logpdf(d) - log_ndtr(d))
    h = r * (d + r)
    hess = np.eye(k) / prior_sd**2
    np.add.at(hess, (w, w), h)
    np.add.at(hess, (lo, lo), h)
    np.add.at(hess, (w, lo), -h)
    np.add.at(hess, (lo, w), -h)
    # Only differences between generators are observed: report capabilities relative to the field's mean
    # (they sum to zero), with the covariance of those centred values, so an interval says how sure the
    # data are of a generator's standing rather than how unsure the prior is of the common level.
    centre = np.eye(k) - 1.0 / k
    mu = mu - mu.mean()
    sigma = np.sqrt(np.clip(np.diag(centre @ np.linalg.inv(hess) @ centre), 0, None))
    wins = np.bincount(w, minlength=k)
    games = wins + np.bincount(lo, minlength=k)
    return {n: Rating(n, float(mu[i]), float(sigma[i]), int(wins[i]), int(games[i])) for n, i in index.items()}


def expected_gap(mu_w: float, sigma_w: float, mu_l: float, sigma_l: float) -> float:
    """E[d | d > 0] for d ~ N(mu_w - mu_l, sigma_w^2 + sigma_l^2)."""
    m, s = mu_w - mu_l, float(np.hypot(sigma_w, sigma_l))
    return float(stats.truncnorm.mean(-m / s, np.inf, loc=m, scale=s))


def leaderboard(ratings: dict[str, Rating], level: float = 0.95) -> list[dict]:
    rows = []
    for r in sorted(ratings.values(), key=lambda r: -r.mu):
        lo, hi = r.interval(level)
        rows.append({"generator": r.name, "mu": r.mu, "sigma": r.sigma, "low": lo, "high": hi,
                     "wins": r.wins, "games": r.games})
    return rows
