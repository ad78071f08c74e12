"""Diffusion-DPO / Poly-DPO: the loss math (property tests) and one policy/reference step on the tiny SD UNet."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.dpo import dpo_logits, pair_metrics, per_sample_mse, preference_loss
from training.models import adapter_for


@given(st.floats(-20, 20), st.floats(-10, 10))
@settings(max_examples=200, deadline=None)
def test_poly_dpo_gradient_matches_formula(logit, alpha):
    z = torch.tensor(logit, dtype=torch.float64, requires_grad=True)
    preference_loss(z, "poly", alpha).backward()
    p = torch.sigmoid(torch.tensor(logit, dtype=torch.float64)).item()
    assert z.grad.item() == pytest.approx(-(1 - p) * (1 + alpha * p), rel=1e-9, abs=1e-12)


@given(st.floats(-20, 20))
def test_alpha_zero_is_dpo(logit):
    z = torch.tensor([logit], dtype=torch.float64)
    assert preference_loss(z, "poly", 0.0).item() == pytest.approx(preference_loss(z, "sigmoid").item())


@given(st.lists(st.floats(0, 5), min_size=4, max_size=4), st.floats(1, 5000))
def test_identical_policy_and_reference_give_zero_logit(errs, beta):
    err_w, err_l = torch.tensor(errs[:2]), torch.tensor(errs[2:])
    logits = dpo_logits(err_w, err_l, err_w.clone(), err_l.clone(), beta)
    assert torch.equal(logits, torch.zeros(2))
    assert pair_metrics(logits) == {"implicit_acc": 0.0, "reward_margin": 0.0}


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="sigmoid | poly"):
        preference_loss(torch.zeros(1), "hinge")


def _step(adapter, policy, reference, batch, beta, loss, alpha, opt=None, seed=0):
    px_w, px_l, prompts = batch
    latents = adapter.encode_images(torch.cat([px_w, px_l]))
    cond = adapter.encode_prompts(prompts).repeat(2, 1, 1)
    noisy, t, target = adapter.noise(latents, torch.Generator().manual_seed(seed))
    err_w, err_l = per_sample_mse(adapter.predict(policy, noisy, t, cond), target).chunk(2)
    with torch.no_grad():
        ref_w, ref_l = per_sample_mse(adapter.predict(reference, noisy, t, cond), target).chunk(2)
    value = preference_loss(dpo_logits(err_w, err_l, ref_w, ref_l, beta), loss, alpha).mean()
    if opt is not None:
        opt.zero_grad()
        value.backward()
        opt.step()
    return value.item()


@pytest.fixture(scope="module")
def sd_pipe(tiny_kit):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    return StableDiffusionPipeline.from_pretrained(tiny_kit / "sd")


@pytest.fixture
def fixed_batch():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(4, 3, 64, 64, generator=g) * 2 - 1, torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
            [f"three red apples in a row, view {i}" for i in range(4)])


@pytest.mark.parametrize("loss,alpha", [("sigmoid", 0.0), ("poly", 0.0), ("poly", 2.0), ("poly", -0.5)])
def test_step0_loss_is_ln2_plus_half_alpha(sd_pipe, fixed_batch, loss, alpha):
    adapter = adapter_for(sd_pipe)
    policy = adapter.model
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    value = _step(adapter, policy, reference, fixed_batch, beta=500.0, loss=loss, alpha=alpha)
    assert value == pytest.approx(math.log(2) + (alpha / 2 if loss == "poly" else 0.0), abs=1e-6)


def test_loss_falls_on_a_fixed_batch_and_reference_never_changes(sd_pipe, fixed_batch):
    adapter = adapter_for(sd_pipe)
    policy = copy.deepcopy(adapter.model).train().requires_grad_(True)
    reference = copy.deepcopy(adapter.model).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    losses = [_step(adapter, policy, reference, fixed_batch, 500.0, "poly", 1.0, opt, seed=0) for _ in range(6)]
    assert losses[0] == pytest.approx(math.log(2) + 0.5, abs=1e-6)
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_same_noise_and_timestep_for_winner_and_loser(sd_pipe):
    adapter = adapter_for(sd_pipe)
    latents = torch.randn(6, 4, 8, 8)
    noisy, t, target = adapter.noise(latents, torch.Generator().manual_seed(1))
    assert torch.equal(t[:3], t[3:]) and torch.equal(target[:3], target[3:])
    assert not torch.equal(noisy[:3], noisy[3:])
