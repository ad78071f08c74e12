"""Labels finer than a binary winner, from reward models (CaPO, arXiv 2025; ViPO Section 5.2).

- Calibrated reward (CaPO Eq. 7): among N images of one prompt, R_ca(x_i) = 1/(N-1) sum_{j != i}
  sigmoid(R(x_i) - R(x_j)): the expected win-rate of image i against the others under that reward.
- Frontier-based pair selection: with several rewards, sort the N images into Pareto fronts by
  non-dominated sorting of their calibrated rewards; the winner comes from the upper front, the loser
  from the lowest. With one reward this is best vs worst.
- Reward consistency: whether every reward model ranks the same image of a pair higher (ViPO reports
  20.79% of Pick-a-Pic v2 pairs consistent across five rewards).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit


def calibrated_rewards(scores: np.ndarray) -> np.ndarray:
    """(N,) or (N, M) raw rewards of N images (M reward models) -> calibrated rewards in [0, 1], same shape."""
    scores = np.asarray(scores, dtype=np.float64)
    flat = scores.ndim == 1
    s = scores[:, None] if flat else scores
    n = s.shape[0]
    if n < 2:
        raise ValueError(f"calibration needs at least 2 images per prompt, got {n}")
    wins = expit(s[:, None, :] - s[None, :, :])  # (N, N, M): P(i beats j)
    wins[np.arange(n), np.arange(n)] = 0.0
    out = wins.sum(axis=1) / (n - 1)
    return out[:, 0] if flat else out


def pareto_fronts(points: np.ndarray) -> list[np.ndarray]:
    """Non-dominated sorting (maximising every column): the indices of each front, best front first."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 1:
        points = points[:, None]
    remaining = np.arange(len(points))
    fronts = []
    while remaining.size:
        p = points[remaining]
        dominated = ((p[None, :, :] >= p[:, None, :]).all(-1) & (p[None, :, :] > p[:, None, :]).any(-1)).any(1)
        fronts.append(remaining[~dominated])
        remaining = remaining[dominated]
    return fronts


def select_pair(calibrated: np.ndarray) -> tuple[int, int]:
    """(winner, loser) image indices: the upper front's best and the lowest front's worst by summed
    calibrated reward (ties broken by index, so the choice is deterministic)."""
    calibrated = np.asarray(calibrated, dtype=np.float64)
    total = calibrated if calibrated.ndim == 1 else calibrated.sum(axis=1)
    fronts = pareto_fronts(calibrated)
    top, bottom = fronts[0], fronts[-1]
    if len(fronts) == 1:  # every image is on one front: no image dominates another, fall back to the sums
        order = np.lexsort((np.arange(len(total)), -total))
        return int(order[0]), int(order[-1])
    winner = top[np.lexsort((top, -total[top]))[0]]
    loser = bottom[np.lexsort((bottom, total[bottom]))[0]]
    return int(winner), int(loser)


def reward_consistent(score_w: list[float], score_l: list[float]) -> bool | None:
    """True when every reward model ranks the same image higher (ties break consistency); None with
    fewer than two reward models or a missing score."""
    if len(score_w) < 2 or any(s is None for s in (*score_w, *score_l)):
        return None
    diff = np.sign(np.asarray(score_w, float) - np.asarray(score_l, float))
    return bool(diff[0] != 0 and (diff == diff[0]).all())


def pair_reward_consistency(rewards: list[dict]) -> bool | None:
    """reward_consistent over a pair record's `rewards` ({model, score_w, score_l}), skipping a model that
    could not score both images."""
    scored = [r for r in rewards if r["score_w"] is not None and r["score_l"] is not None]
    return reward_consistent([r["score_w"] for r in scored], [r["score_l"] for r in scored])
