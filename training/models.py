"""What the training loop needs from a diffusion model family: encode, noise, predict.

- `EpsilonUNet`: SD1.5 / SDXL-style UNets (epsilon or v prediction, DDPM noise schedule).
- `FlowTransformer`: SD3 / FLUX-style flow-matching transformers (velocity target).
Video models (Wan) plug in beside them with the same five methods.

`noise(latents, rng, paired=True)`: with `paired`, `latents` is cat([winners, losers]) and both halves
of a pair get the same noise and timestep (Diffusion-DPO); without, each row its own (SFT).
"""

from __future__ import annotations

import torch


def _draw(shape, generator, dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def freeze_encoders(pipe) -> None:
    """The VAE and text encoders stay frozen: only the denoiser (UNet / transformer) trains."""
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False).eval()


class EpsilonUNet:
    """SD1.5-style, and SDXL-style with its extra conditioning: the pooled text embedding of the second
    encoder and the size/crop ids (original size = target size = the training resolution, no crop)."""

    trainable = "unet"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, pipe):
        from diffusers import DDPMScheduler, StableDiffusionXLPipeline

        self.pipe = pipe
        self.xl = isinstance(pipe, StableDiffusionXLPipeline)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        freeze_encoders(pipe)

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents. The posterior mean, so a latent cache gives the same values."""
        vae = self.pipe.vae
        return vae.encode(pixels.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        if self.xl:
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds, "text_embeds": pooled}
        tok = self.pipe.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.pipe.text_encoder.device)
        return {"encoder_hidden_states": self.pipe.text_encoder(ids)[0]}

    def noise(self, latents: torch.Tensor, generator: torch.Generator, paired: bool = True) -> tuple:
        """Returns (noisy, timesteps, target)."""
        n = latents.shape[0] // 2 if paired else latents.shape[0]
        noise = _draw(latents[:n].shape, generator, latents.dtype, latents.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator).to(latents.device)
        if paired:
            noise, t = noise.repeat(2, 1, 1, 1), t.repeat(2)
        noisy = self.scheduler.add_noise(latents, noise, t)
        if self.scheduler.config.prediction_type == "v_prediction":
            return noisy, t, self.scheduler.get_velocity(latents, noise, t)
        return noisy, t, noise

    def predict(self, model: torch.nn.Module, noisy: torch.Tensor, t: torch.Tensor, cond: dict):
        if not self.xl:
            return model(noisy, t, cond["encoder_hidden_states"]).sample
        h, w = (side * self.pipe.vae_scale_factor for side in noisy.shape[-2:])
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=noisy.dtype, device=noisy.device).repeat(noisy.shape[0], 1)
        return model(noisy, t, cond["encoder_hidden_states"],
                     added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": time_ids}).sample


class FlowTransformer:
    """SD3 / FLUX: x_t = (1 - s) x0 + s noise with s ~ logit-normal, target noise - x0.

    Guidance-distilled FLUX (FLUX.1-dev: `transformer.config.guidance_embeds`) takes the guidance scale
    as an input; it is trained at one fixed `guidance_scale` per sample, as the diffusers FLUX training
    scripts do (3.5, FLUX.1-dev's sampling default). FLUX.1-schnell and SD3 take none."""

    trainable = "transformer"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, pipe, max_sequence_length: int = 77, guidance_scale: float = 3.5):
        from diffusers import FluxPipeline

        self.pipe, self.flux = pipe, isinstance(pipe, FluxPipeline)
        self.max_sequence_length, self.guidance_scale = max_sequence_length, guidance_scale
        freeze_encoders(pipe)

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.transformer

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
        return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        p, n = self.pipe, self.max_sequence_length
        if self.flux:
            embeds, pooled, txt_ids = p.encode_prompt(prompts, prompts, max_sequence_length=n)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": txt_ids}
        embeds, _, pooled, _ = p.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                               max_sequence_length=n)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def noise(self, latents: torch.Tensor, generator: torch.Generator, paired: bool = True) -> tuple:
        n = latents.shape[0] // 2 if paired else latents.shape[0]
        noise = _draw(latents[:n].shape, generator, latents.dtype, latents.device)
        sigma = torch.sigmoid(torch.randn(n, generator=generator)).to(latents.device, latents.dtype)
        if paired:
            noise, sigma = noise.repeat(2, 1, 1, 1), sigma.repeat(2)
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * latents + s * noise, sigma, noise - latents

    def predict(self, model: torch.nn.Module, noisy: torch.Tensor, sigma: torch.Tensor, cond: dict):
        if not self.flux:
            return model(hidden_states=noisy, timestep=sigma * 1000, **cond).sample
        p = self.pipe
        b, c, h, w = noisy.shape
        packed = p._pack_latents(noisy, b, c, h, w)
        img_ids = p._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        guidance = None
        if p.transformer.config.guidance_embeds:  # the transformer embeds it (and scales it by 1000, like t)
            guidance = torch.full((b,), self.guidance_scale, device=noisy.device, dtype=torch.float32)
        out = model(hidden_states=packed, timestep=sigma, img_ids=img_ids, guidance=guidance, **cond).sample
        return p._unpack_latents(out, h * p.vae_scale_factor, w * p.vae_scale_factor, p.vae_scale_factor)


def repeat_cond(cond: dict, times: int) -> dict:
    """Condition tensors for cat([winners, losers]): batch-major tensors repeated; FLUX's txt_ids (no
    batch dimension) as is."""
    return {k: v if k == "txt_ids" else v.repeat(times, *([1] * (v.ndim - 1))) for k, v in cond.items()}


def adapter_for(pipe):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        return EpsilonUNet(pipe)
    if isinstance(pipe, (StableDiffusion3Pipeline, FluxPipeline)):
        return FlowTransformer(pipe)
    raise ValueError(f"no training support for {type(pipe).__name__} (supported: StableDiffusionPipeline, "
                     "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline)")
