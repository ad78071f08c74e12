"""Full-size architectures with random weights (`random:<name>` refs), for throughput on a GPU with no hub.

A model's speed does not depend on its weights' values, only on its shapes: these are the published
models' architectures, from the values of their config.json files (written out below, so nothing is
downloaded), built with random weights and saved with the library's own `save_pretrained`, so they load
through the same `from_pretrained` path (diffusers, transformers, vLLM) a real checkpoint takes. Text
encoders are full size too; the tokenizers are the tiny kit's (their ids are a subset of the real
vocabularies, and prompts are padded to the real maximum lengths, so the encoders' work is the real one).

    random:sd15             SD 1.5 (UNet 0.86B, CLIP ViT-L/14 text, VAE)
    random:sdxl             SDXL base 1.0 (UNet 2.6B, CLIP ViT-L + OpenCLIP bigG text, VAE)
    random:flux-dev         FLUX.1-dev (transformer 11.9B, CLIP ViT-L + T5-XXL text, 16-channel VAE)
    random:wan2.1-t2v-14b   Wan2.1-T2V-14B (transformer 14B, UMT5-XXL text, Wan VAE)
    random:qwen2.5-vl-7b    Qwen2.5-VL-7B-Instruct (8.3B), a judge

Built on the GPU when there is one, in bfloat16, into `$PAIRFORGE_CACHE/random-v1/<name>` (tens of GB for
the large ones: benchmarks/gpu.sh removes each after use). `denoiser(name, device="meta")` instantiates a
model's main network without memory, to check its parameter count anywhere.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from workers.model_refs import default_cache_dir
from workers.publish import publish_atomically

RANDOM_VERSION = 1

# stable-diffusion-v1-5 unet/config.json
SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
    norm_num_groups=32, out_channels=4, sample_size=64, up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
# stable-diffusion-xl-base-1.0 unet/config.json
SDXL_UNET = dict(
    addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], in_channels=4,
    layers_per_block=2, norm_num_groups=32, out_channels=4, projection_class_embeddings_input_dim=2816,
    sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], use_linear_projection=True)
# FLUX.1-dev transformer/config.json
FLUX_DEV = dict(attention_head_dim=128, guidance_embeds=True, in_channels=64, joint_attention_dim=4096,
                num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1, pooled_projection_dim=768,
                axes_dims_rope=[16, 56, 56])
# Wan2.1-T2V-14B-Diffusers transformer/config.json
WAN_14B = dict(attention_head_dim=128, cross_attn_norm=True, eps=1e-6, ffn_dim=13824, freq_dim=256, in_channels=16,
               num_attention_heads=40, num_layers=40, out_channels=16, patch_size=[1, 2, 2],
               qk_norm="rms_norm_across_heads", rope_max_seq_len=1024, text_dim=4096)
# Qwen2.5-VL-7B-Instruct config.json (token ids are the kit tokenizer's)
QWEN25_VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
QWEN25_VL_7B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu", in_channels=3,
                           tokens_per_second=2)
# Text encoders: CLIP ViT-L/14 (SD 1.5, SDXL, FLUX), OpenCLIP ViT-bigG/14 (SDXL text_encoder_2), T5 v1.1 XXL
# (FLUX), UMT5-XXL (Wan).
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                 num_hidden_layers=32, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, tie_word_embeddings=False)
UMT5_XXL = {**T5_XXL, "vocab_size": 256384}
# VAEs: SD / SDXL (4 latent channels), FLUX (16, no quant convs)
SD_VAE = dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, out_channels=3, latent_channels=4,
              layers_per_block=2, norm_num_groups=32, sample_size=512)
FLUX_VAE = {**SD_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "use_quant_conv": False, "use_post_quant_conv": False}

# Wan2.1 VAE (diffusers' AutoencoderKLWan defaults, written out)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])

RANDOM_MODELS = {"sd15": "generator", "sdxl": "generator", "flux-dev": "generator", "wan2.1-t2v-14b": "generator",
                 "qwen2.5-vl-7b": "judge"}


@contextlib.contextmanager
def _built_as(device: str, dtype):
    """Modules constructed inside are allocated on `device` in `dtype` from the start: a 14B model built in
    float32 and cast afterwards would need 56 GB of GPU memory first."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def denoiser(name: str, device: str = "meta", dtype=None):
    """The main network of `random:<name>` (UNet, transformer, or the whole VLM), on `device` ("meta": shapes
    only, no memory), in `dtype` (default: torch's)."""
    with _built_as(device, dtype):
        if name in ("sd15", "sdxl"):
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel(**(SD15_UNET if name == "sd15" else SDXL_UNET))
        elif name == "flux-dev":
            from diffusers import FluxTransformer2DModel

            model = FluxTransformer2DModel(**FLUX_DEV)
        elif name == "wan2.1-t2v-14b":
            from diffusers import WanTransformer3DModel

            model = WanTransformer3DModel(**WAN_14B)
        elif name == "qwen2.5-vl-7b":
            import transformers as tf

            model = tf.Qwen2_5_VLForConditionalGeneration(_qwen_config())
        else:
            raise ValueError(f"unknown random model 'random:{name}'; known: "
                             f"{', '.join('random:' + n for n in RANDOM_MODELS)}")
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def random_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path of `random:<name>`, built on first use (a file lock keeps concurrent builders apart)."""
    from filelock import FileLock

    if name not in RANDOM_MODELS:
        denoiser(name)  # raises the one-line error naming the known models
    root = Path(cache_dir) if cache_dir else default_cache_dir() / f"random-v{RANDOM_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        if not (root / name).is_dir():
            publish_atomically(root / name, "random", lambda d: build_random(name, d))
    return str(root / name)


def build_random(name: str, out: Path, device: str | None = None) -> None:
    """Build `random:<name>` into `out` (on the GPU when there is one, bfloat16 there, float32 on CPU)."""
    import torch

    from workers.runtime import pick_device, pick_dtype

    device = device or pick_device()
    dtype = pick_dtype("auto", device)
    torch.manual_seed(0)
    if name == "qwen2.5-vl-7b":
        _save_qwen(out, device, dtype)
        return
    import transformers as tf
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLWan,
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        WanPipeline,
    )

    from workers.tiny_models import tiny_clip_tokenizer, tiny_t5_tokenizer

    def clip(cfg, cls=tf.CLIPTextModel):
        return cls(tf.CLIPTextConfig(**cfg, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id))

    with _built_as(device, dtype):
        tok = tiny_clip_tokenizer()
        net = denoiser(name, device, dtype)
        if name == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**SD_VAE, scaling_factor=0.18215), text_encoder=clip(CLIP_L), tokenizer=tok,
                unet=net, scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif name == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**{**SD_VAE, "sample_size": 1024}, scaling_factor=0.13025, force_upcast=True),
                text_encoder=clip(CLIP_L), tokenizer=tok, text_encoder_2=clip(CLIP_BIGG, tf.CLIPTextModelWithProjection),
                tokenizer_2=tok, unet=net, force_zeros_for_empty_prompt=True,
                scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 steps_offset=1, timestep_spacing="leading"))
        elif name == "flux-dev":
            t5_tok = tiny_t5_tokenizer(max_len=512)
            pipe = FluxPipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                          max_shift=1.15, base_image_seq_len=256,
                                                          max_image_seq_len=4096),
                vae=AutoencoderKL(**FLUX_VAE), text_encoder=clip(CLIP_L), tokenizer=tok,
                text_encoder_2=tf.T5EncoderModel(tf.T5Config(**T5_XXL, pad_token_id=0, eos_token_id=1,
                                                             decoder_start_token_id=0)),
                tokenizer_2=t5_tok, transformer=net)
        else:  # wan2.1-t2v-14b
            t5_tok = tiny_t5_tokenizer(max_len=512)
            pipe = WanPipeline(
                tokenizer=t5_tok, transformer=net, vae=AutoencoderKLWan(**WAN_VAE),
                text_encoder=tf.UMT5EncoderModel(tf.UMT5Config(**UMT5_XXL, pad_token_id=0, eos_token_id=1,
                                                               decoder_start_token_id=0)),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(out)


def _qwen_config():
    import transformers as tf

    from workers.tiny_models import _QWEN_SPECIALS, _qwen_tokenizer

    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return tf.Qwen2_5_VLConfig(
        text_config={**QWEN25_VL_7B_TEXT, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config=QWEN25_VL_7B_VISION, tie_word_embeddings=False,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _save_qwen(out: Path, device: str, dtype) -> None:
    """The 7B judge with the real processor's pixel budget (Qwen2-VL's defaults), the kit's tokenizer."""
    import transformers as tf

    from workers.tiny_models import _QWEN_CHAT_TEMPLATE, _qwen_tokenizer

    model = denoiser("qwen2.5-vl-7b", device, dtype).eval()
    tok = _qwen_tokenizer()
    model.generation_config.eos_token_id = model.config.text_config.eos_token_id
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.save_pretrained(out)
    tf.Qwen2_5_VLProcessor(image_processor=tf.Qwen2VLImageProcessor(), tokenizer=tok,
                           video_processor=tf.Qwen2VLVideoProcessor(),
                           chat_template=_QWEN_CHAT_TEMPLATE).save_pretrained(out)
