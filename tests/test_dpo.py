"""Diffusion-DPO / Poly-DPO: the loss math (property tests) and one policy/reference step on the tiny SD UNet."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.dpo import dpo_logits, pair_metrics, preference_loss
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


def trainer_for(pipe, **cfg):
    from schemas.config import TrainConfig
    from training.train import PreferenceTrainer

    defaults = dict(name="t", model="x", output="/tmp", data={"paths": ["/tmp"]}, beta=500.0, learning_rate=1e-4)
    return PreferenceTrainer(copy.deepcopy(pipe), TrainConfig(**{**defaults, **cfg}))


@pytest.fixture(scope="module")
def sd_pipe(tiny_kit):
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    return StableDiffusionPipeline.from_pretrained(tiny_kit / "sd")


@pytest.fixture(scope="module")
def flux_pipe(tiny_kit):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(tiny_kit / "flux")


@pytest.fixture(scope="module")
def flux_dev_pipe(tiny_kit):
    """Guidance-distilled, as FLUX.1-dev: its transformer embeds the guidance scale."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_kit / "flux-dev")
    assert pipe.transformer.config.guidance_embeds
    return pipe


@pytest.fixture
def fixed_batch():
    g = torch.Generator().manual_seed(0)
    return {"pixels_w": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1, "pixels_l": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
            "prompt": [f"three red apples in a row, view {i}" for i in range(4)], "gap": torch.tensor([0.5, 1.0, 2.0, 0.1])}


@pytest.mark.parametrize("loss,alpha", [("sigmoid", 0.0), ("poly", 0.0), ("poly", 2.0), ("poly", -0.5)])
def test_step0_loss_is_ln2_plus_half_alpha(sd_pipe, fixed_batch, loss, alpha):
    trainer = trainer_for(sd_pipe, loss=loss, alpha=alpha)
    value, metrics = trainer.loss(fixed_batch, torch.Generator().manual_seed(0))
    assert value.item() == pytest.approx(math.log(2) + (alpha / 2 if loss == "poly" else 0.0), abs=1e-6)
    assert metrics == {"implicit_acc": 0.0, "reward_margin": 0.0}


def test_loss_falls_on_a_fixed_batch_and_reference_never_changes(sd_pipe, fixed_batch):
    trainer = trainer_for(sd_pipe, loss="poly", alpha=1.0)
    before = {k: v.clone() for k, v in trainer.reference.state_dict().items()}
    losses = [trainer.step(fixed_batch, torch.Generator().manual_seed(0))["loss"] for _ in range(6)]
    assert losses[0] == pytest.approx(math.log(2) + 0.5, abs=1e-6)
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(before[k], v) for k, v in trainer.reference.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


def test_lora_reference_is_the_base_model_and_base_weights_stay_frozen(sd_pipe, fixed_batch):
    trainer = trainer_for(sd_pipe, lora_rank=4)
    base = sd_pipe.unet
    latents = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    cond = trainer.adapter.encode_prompts(["a cat", "a dog"])["encoder_hidden_states"]
    trainer.step(fixed_batch, torch.Generator().manual_seed(0))  # the adapters move away from zero
    with torch.no_grad(), trainer.reference_model() as reference:
        ref_out = reference(latents, t, cond).sample
    with torch.no_grad():
        base_out = base(latents, t, cond).sample
        policy_out = trainer.model(latents, t, cond).sample
    assert torch.allclose(ref_out, base_out, atol=1e-6)
    assert not torch.allclose(policy_out, base_out, atol=1e-6)
    trained = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trained and all("lora" in n for n in trained)


@given(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.1, 10))
def test_fine_loss_gradient_pulls_the_logit_to_the_scaled_gap(logit, gap, scale):
    z = torch.tensor(logit, dtype=torch.float64, requires_grad=True)
    ((scale * gap - z) ** 2).backward()
    assert z.grad.item() == pytest.approx(-2 * (scale * gap - logit), abs=1e-9)


def test_fine_loss_regresses_on_stored_gaps(sd_pipe, fixed_batch):
    trainer = trainer_for(sd_pipe, loss="fine", gap_scale=2.0, data={"paths": ["/tmp"], "gap_file": "/tmp/g.parquet"})
    value, _ = trainer.loss(fixed_batch, torch.Generator().manual_seed(0))
    assert value.item() == pytest.approx(((2.0 * fixed_batch["gap"]) ** 2).mean().item(), rel=1e-6)  # logit 0 at step 0


@pytest.mark.parametrize("gap", [float("nan"), 1e200])  # 1e200 overflows float32: an infinite loss
def test_a_non_finite_loss_stops_before_the_optimizer_step(sd_pipe, fixed_batch, gap):
    """On main a NaN gap went into the step and turned every weight into NaN."""
    from training.train import NonFiniteLoss

    trainer = trainer_for(sd_pipe, loss="fine", data={"paths": ["/tmp"], "gap_file": "/tmp/g.parquet"})
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    batch = {**fixed_batch, "gap": torch.tensor([0.5, gap, 2.0, 0.1])}
    with pytest.raises(NonFiniteLoss, match="the loss is (nan|inf)"):
        trainer.step(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert not trainer.optimizer.state  # no moment estimates: the optimizer never ran


def test_sdxl_unet_trains_with_its_extra_conditioning(tiny_kit, fixed_batch):
    from diffusers import StableDiffusionXLPipeline

    trainer = trainer_for(StableDiffusionXLPipeline.from_pretrained(tiny_kit / "sdxl"))
    assert trainer.adapter.xl
    first = trainer.step(fixed_batch, torch.Generator().manual_seed(0))
    # ln 2 up to kernel rounding: with gradients on, CPU attention may take another (equally exact) path
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and math.isfinite(first["grad_norm"])


@pytest.mark.parametrize("pipe", ["flux_pipe", "flux_dev_pipe"])
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_flow_matching_transformer_trains(request, pipe, fixed_batch, stage):
    trainer = trainer_for(request.getfixturevalue(pipe), stage=stage, max_sequence_length=32)
    first = trainer.step(fixed_batch, torch.Generator().manual_seed(0))
    if stage == "dpo":
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    losses = [trainer.step(fixed_batch, torch.Generator().manual_seed(0))["loss"] for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < first["loss"]


def test_guidance_distilled_flux_is_given_the_configured_guidance(flux_dev_pipe):
    """FLUX.1-dev's transformer conditions on the guidance: the prediction depends on `guidance_scale`."""
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.7])

    def prediction(scale: float) -> torch.Tensor:
        trainer = trainer_for(flux_dev_pipe, max_sequence_length=32, guidance_scale=scale)
        cond = trainer.adapter.encode_prompts(["a red cube", "a blue ball"])
        with torch.no_grad():
            return trainer.adapter.predict(trainer.model, latents, sigma, cond)

    assert torch.isfinite(prediction(3.5)).all()
    assert not torch.allclose(prediction(3.5), prediction(1.0))


def test_same_noise_and_timestep_for_winner_and_loser(sd_pipe, flux_pipe):
    for pipe in (sd_pipe, flux_pipe):
        adapter = adapter_for(pipe)
        latents = torch.randn(6, 4 if pipe is sd_pipe else 4, 8, 8)
        noisy, t, target = adapter.noise(latents, torch.Generator().manual_seed(1))
        assert torch.equal(t[:3], t[3:])
        assert not torch.equal(noisy[:3], noisy[3:])
