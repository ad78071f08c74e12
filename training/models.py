"""What the DPO loop needs from a diffusion model family: encode, noise, predict, save.

`EpsilonUNet` covers SD1.5-style pipelines (epsilon prediction, DDPM noise schedule). Flow-matching
transformers (SD3 / FLUX, velocity target) and video models plug in beside it with the same methods.
"""

from __future__ import annotations

import torch


class EpsilonUNet:
    """SD1.5-style: VAE latents scaled by `scaling_factor`, CLIP text states, a UNet predicting the noise."""

    trainable = "unet"

    def __init__(self, pipe):
        from diffusers import DDPMScheduler

        self.pipe = pipe
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        for frozen in (pipe.vae, pipe.text_encoder):
            frozen.requires_grad_(False).eval()

    @property
    def model(self) -> torch.nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents. The posterior mean, so a latent cache gives the same values."""
        vae = self.pipe.vae
        return vae.encode(pixels.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.pipe.text_encoder.device)
        return self.pipe.text_encoder(ids)[0]

    def noise(self, latents: torch.Tensor, generator: torch.Generator) -> tuple:
        """Noise `latents` = cat([winners, losers]) with the same noise and timestep for both halves of a
        pair; returns (noisy, timesteps, target)."""
        half = latents.shape[0] // 2
        noise = torch.randn(latents[:half].shape, generator=generator, dtype=latents.dtype).repeat(2, 1, 1, 1)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (half,), generator=generator).repeat(2)
        noise, t = noise.to(latents.device), t.to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        if self.scheduler.config.prediction_type == "v_prediction":
            return noisy, t, self.scheduler.get_velocity(latents, noise, t)
        return noisy, t, noise

    def predict(self, model: torch.nn.Module, noisy: torch.Tensor, t: torch.Tensor, cond: torch.Tensor):
        return model(noisy, t, cond).sample


def adapter_for(pipe):
    from diffusers import StableDiffusionPipeline

    if isinstance(pipe, StableDiffusionPipeline):
        return EpsilonUNet(pipe)
    raise ValueError(f"no DPO training support for {type(pipe).__name__} yet (supported: StableDiffusionPipeline)")
