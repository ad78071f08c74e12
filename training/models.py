"""What the training loop needs from a diffusion model family: encode, noise, predict.

- `EpsilonUNet`: SD1.5 / SDXL-style UNets (epsilon or v prediction, DDPM noise schedule).
- `FlowTransformer`: SD3 / FLUX-style flow-matching transformers (velocity target).
- `WanVideo`: Wan 2.x text- and image-to-video transformers, flow matching on 5-D video latents.

`noise(latents, rng, paired=True)`: with `paired`, `latents` is cat([winners, losers]) and both halves
of a pair get the same noise and timestep (Diffusion-DPO); without, each row its own (SFT).
`encode_images` takes pixels in [-1, 1]: images (B, 3, H, W), or for video models videos (B, 3, F, H, W).
Video models whose conditioning comes from the video itself (image-to-video: its first frame) name it in
`condition_keys` and compute it with `encode_conditions(pixels)`, per row like the latents.
"""

from __future__ import annotations

import torch


def _draw(shape, generator, dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def freeze_encoders(pipe) -> None:
    """The VAE and text encoders stay frozen: only the denoiser (UNet / transformer) trains."""
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "image_encoder"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False).eval()


class EpsilonUNet:
    """SD1.5-style, and SDXL-style with its extra conditioning: the pooled text embedding of the second
    encoder and the size/crop ids (original size = target size = the training resolution, no crop)."""

    trainable = "unet"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    media = "image"
    condition_keys: tuple[str, ...] = ()

    def __init__(self, pipe):
        from diffusers import DDPMScheduler, StableDiffusionXLPipeline

        self.pipe = pipe
        self.xl = isinstance(pipe, StableDiffusionXLPipeline)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        freeze_encoders(pipe)

    def configure(self, cfg) -> None:
        """The training config's model options (a TrainConfig); the UNets take none."""

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
    media = "image"
    condition_keys: tuple[str, ...] = ()
    sigma_range = (0.0, 1.0)

    def __init__(self, pipe, max_sequence_length: int = 77, guidance_scale: float = 3.5):
        from diffusers import FluxPipeline

        self.pipe, self.flux = pipe, isinstance(pipe, FluxPipeline)
        self.max_sequence_length, self.guidance_scale = max_sequence_length, guidance_scale
        freeze_encoders(pipe)

    def configure(self, cfg) -> None:
        self.max_sequence_length, self.guidance_scale = cfg.max_sequence_length, cfg.guidance_scale

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
        """sigma ~ logit-normal truncated to `sigma_range` (all of (0, 1) but for a Wan2.2 expert), drawn by
        inverting the normal CDF over the range's share of it."""
        n = latents.shape[0] // 2 if paired else latents.shape[0]
        noise = _draw(latents[:n].shape, generator, latents.dtype, latents.device)
        lo, hi = (torch.special.ndtr(torch.logit(torch.tensor(s, dtype=torch.float64))) for s in self.sigma_range)
        u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        sigma = torch.sigmoid(torch.special.ndtri(u)).to(latents.device, latents.dtype)
        if paired:
            noise, sigma = noise.repeat(2, *[1] * (latents.ndim - 1)), sigma.repeat(2)
        s = sigma.view(-1, *[1] * (latents.ndim - 1))
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


EXPERTS = {"high_noise": "transformer", "low_noise": "transformer_2"}  # Wan2.2 A14B's two experts


def wan_expert(config: dict, expert: str | None) -> str:
    """The transformer a Wan run trains, from the pipeline's config (`model_index.json`): `transformer`, or
    for a two-expert Wan2.2 model the one `expert` names. ValueError in one line where that cannot be told."""
    if config.get("expand_timesteps"):
        raise ValueError("Wan2.2 TI2V-style models (expand_timesteps: per-token timesteps with the first frame kept "
                         "clean) are not supported for training; use a Wan2.1 or Wan2.2-A14B model")
    two = config.get("boundary_ratio") is not None and (config.get("transformer_2") or [None])[0] is not None
    if two and expert is None:
        raise ValueError(f"the model has two experts switched at boundary_ratio {config['boundary_ratio']} "
                         "(high_noise: transformer, low_noise: transformer_2): set expert: high_noise or low_noise, "
                         "one run per expert")
    if not two and expert is not None:
        raise ValueError(f"expert: {expert} applies to two-expert Wan2.2 models (transformer_2 and boundary_ratio); "
                         "this model has one transformer: leave expert unset")
    return EXPERTS[expert] if two else "transformer"


class WanVideo(FlowTransformer):
    """Wan 2.x (WanPipeline, WanImageToVideoPipeline), conditioned as the pipelines condition it: latents
    normalised by the VAE's `latents_mean` / `latents_std`; the UMT5 prompt embedding; for image-to-video,
    per video, the pipeline's `prepare_latents` condition of the first frame (a frame mask and the latents
    of the first frame followed by black frames, concatenated to the noisy latents: 36 channels) and, for
    Wan2.1-I2V, the CLIP vision embedding of the first frame (`encode_image`). The first frame is each
    side's own, so winner and loser animated from different images (inherited pairs) keep their own.

    A two-expert Wan2.2 model trains one expert per run (`expert`): its timesteps are drawn only where it
    denoises (high_noise: sigma >= boundary_ratio, as the pipeline switches at boundary_ratio *
    num_train_timesteps), and the other expert is not loaded onto the device."""

    media = "video"

    def __init__(self, pipe, max_sequence_length: int = 226):
        from diffusers import WanImageToVideoPipeline

        super().__init__(pipe, max_sequence_length)
        self.condition_keys: tuple[str, ...] = ()
        if isinstance(pipe, WanImageToVideoPipeline):
            clip = pipe.transformer is not None and pipe.transformer.config.image_dim is not None  # as the pipeline tells
            self.condition_keys = ("condition", "image_embeds") if clip else ("condition",)

    def configure(self, cfg) -> None:
        self.max_sequence_length = cfg.max_sequence_length
        self.trainable = wan_expert(self.pipe.config, cfg.expert)  # validated: expert is set iff there are two
        boundary = self.pipe.config.get("boundary_ratio")
        if cfg.expert:
            self.sigma_range = (boundary, 1.0) if cfg.expert == "high_noise" else (0.0, boundary)
        other = "transformer_2" if self.trainable == "transformer" else "transformer"
        if getattr(self.pipe, other, None) is not None:
            self.pipe.register_modules(**{other: None})

    @property
    def model(self) -> torch.nn.Module:
        return getattr(self.pipe, self.trainable)

    def _normalise(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        return (latents - mean) / std

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Videos (B, 3, F, H, W) in [-1, 1] -> normalised latents (B, 16, (F - 1) / 4 + 1, H / 8, W / 8)."""
        vae = self.pipe.vae
        return self._normalise(vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float())

    @torch.no_grad()
    def encode_conditions(self, pixels: torch.Tensor) -> dict:
        """Image-to-video: what the pipeline builds from each video's first frame."""
        p = self.pipe
        _, _, frames, height, width = pixels.shape
        first = pixels[:, :, 0].float()
        # One frame at a time: prepare_latents encodes one image and repeats it batch_size times. A given
        # `latents` keeps it from drawing noise from the global RNG; only the condition is used.
        conditions = [p.prepare_latents(image[None], 1, p.vae.config.z_dim, height, width, frames, torch.float32,
                                        pixels.device, latents=first.new_zeros(()))[1] for image in first]
        out = {"condition": torch.cat(conditions)}
        if "image_embeds" in self.condition_keys:
            # encode_image takes the images a user passes the pipeline (uint8 frames here), the CLIP
            # processor resizes and normalises them
            frames_u8 = ((first + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out["image_embeds"] = p.encode_image(list(frames_u8), pixels.device)
        return out

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        embeds, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                            max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": embeds}

    def predict(self, model: torch.nn.Module, noisy: torch.Tensor, sigma: torch.Tensor, cond: dict):
        x = torch.cat([noisy, cond["condition"].to(noisy.dtype)], dim=1) if "condition" in cond else noisy
        return model(hidden_states=x, timestep=sigma * self.pipe.scheduler.config.num_train_timesteps,
                     encoder_hidden_states=cond["encoder_hidden_states"],
                     encoder_hidden_states_image=cond.get("image_embeds"), return_dict=False)[0]


def repeat_cond(cond: dict, times: int) -> dict:
    """Condition tensors for cat([winners, losers]): batch-major tensors repeated; FLUX's txt_ids (no
    batch dimension) as is."""
    return {k: v if k == "txt_ids" else v.repeat(times, *([1] * (v.ndim - 1))) for k, v in cond.items()}


def pipeline_config(model_path: str) -> dict:
    """A pipeline's `model_index.json` (a local folder or a hub id), read without importing diffusers'
    pipelines: that import takes seconds, and `pairforge train` checks the model before anything starts."""
    import json
    from pathlib import Path

    from huggingface_hub import hf_hub_download

    local = Path(model_path) / "model_index.json"
    return json.loads((local if local.is_file() else Path(hf_hub_download(model_path, "model_index.json"))).read_text())


def model_media(config: dict, expert: str | None = None) -> str:
    """"image" or "video": what a pipeline (its `model_index.json` config) trains on. For a Wan model also
    checks, before anything starts, that `expert` says which transformer trains (`wan_expert`)."""
    if config.get("_class_name") in ("WanPipeline", "WanImageToVideoPipeline"):
        wan_expert(config, expert)
        return "video"
    if expert is not None:
        raise ValueError(f"expert: {expert} applies to two-expert Wan2.2 models; this is a "
                         f"{config.get('_class_name')}: leave expert unset")
    return "image"


def adapter_for(pipe):
    from diffusers import (
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        WanImageToVideoPipeline,
        WanPipeline,
    )

    if isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        return EpsilonUNet(pipe)
    if isinstance(pipe, (StableDiffusion3Pipeline, FluxPipeline)):
        return FlowTransformer(pipe)
    if isinstance(pipe, (WanPipeline, WanImageToVideoPipeline)):
        return WanVideo(pipe)
    raise ValueError(f"no training support for {type(pipe).__name__} (supported: StableDiffusionPipeline, "
                     "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline, WanPipeline, "
                     "WanImageToVideoPipeline)")
