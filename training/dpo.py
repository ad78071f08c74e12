"""Diffusion-DPO and Poly-DPO losses (Wallace et al. 2023; ViPO Section 3, Eq. 9-10).

For a pair (x_w, x_l) noised with the *same* noise and timestep, with per-sample denoising errors
e = ||pred - target||^2 (mean over pixels) of the policy and of the frozen reference:

    logit = -beta/2 * [(e_w - e_l)_policy - (e_w - e_l)_reference]
    p     = sigmoid(logit)                          the model's probability that w beats l
    DPO       loss = -log p                         (= -logsigmoid(logit))
    Poly-DPO  loss = -log p + alpha * (1 - p)       dloss/dlogit = -(1 - p)(1 + alpha p)

Losses are per pair, then averaged. With policy == reference the logit is 0, so the step-0 loss is
ln 2 (+ alpha/2 for Poly-DPO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))


def dpo_logits(policy_err_w, policy_err_l, ref_err_w, ref_err_l, beta: float) -> torch.Tensor:
    return -0.5 * beta * ((policy_err_w - policy_err_l) - (ref_err_w - ref_err_l))


def preference_loss(logits: torch.Tensor, kind: str = "sigmoid", alpha: float = 0.0) -> torch.Tensor:
    """Per-pair loss (not reduced)."""
    if kind == "sigmoid":
        return -F.logsigmoid(logits)
    if kind == "poly":
        return -F.logsigmoid(logits) + alpha * (1 - torch.sigmoid(logits))
    raise ValueError(f"unknown preference loss {kind!r} (sigmoid | poly)")


def pair_metrics(logits: torch.Tensor) -> dict[str, float]:
    """Implicit accuracy (share of pairs the policy ranks like the label, relative to the reference)
    and reward margin (mean logit: the implicit reward of w minus that of l)."""
    return {"implicit_acc": (logits > 0).float().mean().item(), "reward_margin": logits.mean().item()}
