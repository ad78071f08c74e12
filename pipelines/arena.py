"""The generator Arena (ArenaPO): each generator's capability ~ N(mu, sigma^2), fitted from win counts,
and per pair the expected quality gap as an offline fine-grained reward.

Generative model. Every image is a sample from its generator's capability distribution, quality
q ~ N(mu_g, sigma_g^2), and the judged winner is the image of higher quality, so generator w beats l with
probability Phi((mu_w - mu_l) / sqrt(sigma_w^2 + sigma_l^2)) (Thurstone). sigma_g, the *spread*, is how
much a generator's outputs vary in quality: a property of the generator that more games measure better but
do not shrink. The posterior uncertainty of mu_g (`mu_sd`, the leaderboard's intervals) is another number,
which does shrink as games accumulate.

Identifiability. Win probabilities do not change when a constant is added to every mu, or when every mu
and sigma is multiplied by a constant. So mu is reported relative to the field's mean, and the spreads'
geometric mean is fixed at 1/sqrt(2): with equal spreads sigma_w^2 + sigma_l^2 = 1 and the model is
Thurstone's case V, P = Phi(mu_w - mu_l). Gaps are in that unit (the trainer's `gap_scale` maps them to
its loss). With K generators all compared, the data give K(K-1)/2 win rates for 2K - 2 free parameters:
two generators give one rate, three give three for four parameters, so below MIN_GENERATORS_FOR_SPREADS
the spreads are common (case V). From four on each generator gets its own spread, under a prior
log(sigma_g * sqrt(2)) ~ N(0, spread_prior_sd^2) that keeps a spread the comparisons do not pin down (a
sparse comparison graph) near the common one.

Fit: the posterior mode of mu (prior N(0, prior_sd^2)) and the log-spreads from the win counts per
(winner, loser) generator pair, which is all the likelihood needs; the posterior sd of mu from a Laplace
approximation (inverse Hessian at the mode). Gap: for a pair with observed winner w and loser l,
d = q_w - q_l ~ N(mu_w - mu_l, sigma_w^2 + sigma_l^2) and the reward is E[d | d > 0], the mean of that
normal truncated to d > 0, at the fitted mode. It is positive, large when the winner's generator is much
stronger, small for an upset, and defined for two images of one generator too (2 sigma_g / sqrt(pi)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

COMMON_SPREAD = float(np.sqrt(0.5))
MIN_GENERATORS_FOR_SPREADS = 4
SPREAD_PRIOR_SD = 0.25  # a priori a spread lies within a factor e^(+-0.5) ~ 1.65 of the common one (2 sd)


@dataclass(frozen=True)
class Rating:
    name: str
    mu: float        # capability, relative to the field's mean
    mu_sd: float     # posterior sd of mu: how sure the games make us of it
    spread: float    # sigma: the spread of the generator's output quality around mu
    wins: int
    games: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Posterior interval of mu (not a range of the generator's outputs: that is mu +- spread)."""
        z = stats.norm.ppf(0.5 + level / 2)
        return self.mu - z * self.mu_sd, self.mu + z * self.mu_sd


def fit_arena(wins: Mapping[tuple[str, str], int], prior_sd: float = 1.0,
              spread_prior_sd: float = SPREAD_PRIOR_SD) -> dict[str, Rating]:
    """Ratings of every generator that played another one, from `wins[(winner, loser)]` = pair count.
    Same-generator counts carry no information about capabilities and are ignored."""
    games = {key: n for key, n in wins.items() if key[0] != key[1] and n}
    names = sorted({g for key in games for g in key})
    if not names:
        return {}
    k, index = len(names), {g: i for i, g in enumerate(names)}
    n = np.zeros((k, k))
    for (w, lo), count in games.items():
        n[index[w], index[lo]] += count
    total, spreads = n.sum(), k >= MIN_GENERATORS_FOR_SPREADS

    def unpack(theta):
        z = theta[k:] if spreads else np.zeros(k)
        return theta[:k], z, COMMON_SPREAD * np.exp(z - z.mean())  # the spreads' geometric mean is fixed

    def neg_log_post(theta):
        """Negative log posterior and its gradient, per game (so tolerances do not depend on the count)."""
        mu, z, s = unpack(theta)
        s2 = s[:, None] ** 2 + s[None, :] ** 2
        t = (mu[:, None] - mu[None, :]) / np.sqrt(s2)
        g = -n * np.sqrt(2 / np.pi) / special.erfcx(-t / np.sqrt(2))  # d/dt of -n log Phi(t): -n phi(t) / Phi(t)
        value = -(n * special.log_ndtr(t)).sum() + (mu**2).sum() / (2 * prior_sd**2)
        a = g / np.sqrt(s2)
        grad = [a.sum(1) - a.sum(0) + mu / prior_sd**2]
        if spreads:
            value += (z**2).sum() / (2 * spread_prior_sd**2)
            b = g * t / s2
            grad_u = -(s**2) * (b.sum(1) + b.sum(0))  # d/d log(sigma_i) through t = (mu_w - mu_l) / s_wl
            grad.append(grad_u - grad_u.mean() + z / spread_prior_sd**2)
        return value / total, np.concatenate(grad) / total

    # Bounds keep a one-sided record (a generator that won every game) from sending mu or a spread off to
    # infinity: 20 prior sds of mu, a spread within a factor e^3 of the common one.
    bounds = [(-20 * prior_sd, 20 * prior_sd)] * k + [(-3.0, 3.0)] * (k if spreads else 0)
    theta = optimize.minimize(neg_log_post, np.zeros(len(bounds)), jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000}).x
    hess = optimize.approx_fprime(theta, lambda x: neg_log_post(x)[1]) * total
    cov = np.linalg.inv((hess + hess.T) / 2)[:k, :k]
    # Only differences between generators are observed: report capabilities relative to the field's mean
    # (they sum to zero), with the covariance of those centred values, so an interval says how sure the
    # data are of a generator's standing rather than how unsure the prior is of the common level.
    centre = np.eye(k) - 1.0 / k
    mu, _, s = unpack(theta)
    mu = mu - mu.mean()
    mu_sd = np.sqrt(np.clip(np.diag(centre @ cov @ centre), 0, None))
    won = n.sum(1)
    played = won + n.sum(0)
    return {g: Rating(g, float(mu[i]), float(mu_sd[i]), float(s[i]), int(won[i]), int(played[i]))
            for g, i in index.items()}


def expected_gap(mu_w, sigma_w, mu_l, sigma_l):
    """E[d | d > 0] for d ~ N(mu_w - mu_l, sigma_w^2 + sigma_l^2); numpy broadcasting over arrays."""
    m, s = np.subtract(mu_w, mu_l), np.hypot(sigma_w, sigma_l)
    return stats.truncnorm.mean(-m / s, np.inf, loc=m, scale=s)[()]


def gap_matrix(ratings: dict[str, Rating], names: list[str]) -> np.ndarray:
    """gaps[i, j]: the expected gap of a pair that names[i] won over names[j]. A generator without games
    against others (one seen only in same-generator pairs) has the common spread."""
    mu = np.array([ratings[g].mu if g in ratings else 0.0 for g in names])
    s = np.array([ratings[g].spread if g in ratings else COMMON_SPREAD for g in names])
    return np.asarray(expected_gap(mu[:, None], s[:, None], mu[None, :], s[None, :]), dtype=np.float64)


def leaderboard(ratings: dict[str, Rating], level: float = 0.95) -> list[dict]:
    rows = []
    for r in sorted(ratings.values(), key=lambda r: -r.mu):
        lo, hi = r.interval(level)
        rows.append({"generator": r.name, "mu": r.mu, "mu_sd": r.mu_sd, "low": float(lo), "high": float(hi),
                     "spread": r.spread, "wins": r.wins, "games": r.games})
    return rows
