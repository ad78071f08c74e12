"""The tiny-model kit: small, randomly initialised models of the real architectures, built offline.

They let the whole flow run on a laptop with no GPU and no model hub: every model is saved with its
library's own `save_pretrained` (or open_clip's `save_for_hf`) and loaded back through the same
`from_pretrained` path a real checkpoint takes, so the embedded default differs from a cluster run
only in the model refs of its config. Weights are random: the images are noise and the verdicts are
arbitrary, but every shape, tokenizer, processor and loader is the real one.

A config names a kit model as `tiny:<name>`; `workers.model_refs.resolve_model_ref` builds the kit on first
use into a cache directory (`$PAIRFORGE_CACHE`, else `~/.cache/pairforge`) and returns the local path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from workers.model_refs import default_cache_dir
from workers.publish import publish_atomically

KIT_VERSION = 3

# name -> (builder function name, kind); kinds match the worker families.
TINY_MODELS = {
    "sd": "generator",
    "sdxl": "generator",
    "sd3": "generator",
    "flux": "generator",
    "flux-dev": "generator",
    "wan-t2v": "generator",
    "wan-i2v": "generator",
    "wan2.2-i2v": "generator",
    "qwen2-vl-a": "judge",
    "qwen2.5-vl-b": "judge",
    "qwen2-vl-c": "judge",
    "clip": "reward",
    "pickscore": "reward",
    "hpsv2": "reward",
    "aesthetic": "reward",
}


def tiny_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path of kit model `name` (the kit is built on first use); `tiny:<name>` in a config."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model 'tiny:{name}'; the kit has: {', '.join('tiny:' + n for n in TINY_MODELS)}")
    root = ensure_tiny_models(Path(cache_dir) if cache_dir else default_cache_dir() / f"tiny-v{KIT_VERSION}")
    return str(root / name)


def ensure_tiny_models(root: Path) -> Path:
    """Build the whole kit into `root` once; concurrent callers wait on a file lock. A kit built before
    a model was added gets just the missing models (each is published whole, so presence means built)."""
    from filelock import FileLock

    root = Path(root)

    def complete() -> bool:
        return (root / "kit.json").exists() and all((root / name).is_dir() for name in TINY_MODELS)

    if complete():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not complete():
            build_tiny_models(root)
    return root


def build_tiny_models(out: str | os.PathLike) -> Path:
    """Build every kit model into `out/<name>`; each lands atomically (workers/publish.py)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "sd": lambda d: build_sd(d, seed=0),
        "sdxl": lambda d: build_sdxl(d, seed=3),
        "sd3": lambda d: build_sd3(d, seed=1),
        "flux": lambda d: build_flux(d, seed=2),
        "flux-dev": lambda d: build_flux(d, seed=7, guidance_embeds=True),
        "wan-t2v": lambda d: build_wan(d, seed=8, task="t2v"),
        "wan-i2v": lambda d: build_wan(d, seed=9, task="i2v"),
        "wan2.2-i2v": lambda d: build_wan(d, seed=10, task="i2v-moe"),
        "qwen2-vl-a": lambda d: build_qwen_vl(d, family="qwen2-vl", seed=0),
        "qwen2.5-vl-b": lambda d: build_qwen_vl(d, family="qwen2.5-vl", seed=1),
        "qwen2-vl-c": lambda d: build_qwen_vl(d, family="qwen2-vl", seed=2, hidden_layers=3),
        "clip": lambda d: build_open_clip(d, seed=0),
        "pickscore": lambda d: build_pickscore(d, seed=4),
        "hpsv2": lambda d: build_hps_checkpoint(d, seed=5),
        "aesthetic": lambda d: build_aesthetic_mlp(d, seed=6),
    }
    assert builders.keys() == TINY_MODELS.keys()
    for name, build in builders.items():
        if not (out / name).exists():
            publish_atomically(out / name, "kit", build)
    (out / "kit.json").write_text(json.dumps({"kit_version": KIT_VERSION, "models": TINY_MODELS}, indent=1))
    return out


# --- tokenizers built in memory (no files, no network) -------------------------------------------

def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(max_len: int = 77):
    """Byte-level CLIP BPE: 512 byte tokens and a few merges, so any text tokenizes."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in _bytes_to_unicode():
        vocab[c] = len(vocab)
    for c in _bytes_to_unicode():
        vocab[c + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "a n", "an d</w>", "i n", "o n</w>", "e r", "o f</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tok.model_max_length = max_len
    return tok


def tiny_t5_tokenizer(max_len: int = 64):
    """Unigram T5 tokenizer over ASCII pieces: pad=0, eos=1, unk=2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()":
        pieces += [(c, -3.0), ("\u2581" + c, -3.5)]
    for w in ["the", "a", "of", "and", "in", "on", "with", "photo", "red", "blue"]:
        pieces.append(("\u2581" + w, -1.0))
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = max_len
    return tok


# --- generators (diffusers) ----------------------------------------------------------------------

def _tiny_vae(flow: bool):
    from diffusers import AutoencoderKL

    # Four blocks -> spatial factor 8, as in the real SD/SD3/FLUX VAEs.
    kw = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035) if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
                         block_out_channels=[8, 16, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
                         up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64, **kw)


def _tiny_clip_text(tok, cls_name: str = "CLIPTextModel", hidden: int = 32):
    import transformers

    cls = getattr(transformers, cls_name)
    return cls(transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=hidden, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))


def _tiny_t5(tok, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def build_sd(out: Path, seed: int = 0) -> None:
    """SD-1.5-style: epsilon-prediction UNet with cross-attention, CLIP text encoder, DDIM."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=_tiny_vae(flow=False), text_encoder=_tiny_clip_text(tok), tokenizer=tok, unet=unet,
                            scheduler=sched, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)


def build_sdxl(out: Path, seed: int = 3) -> None:
    """SDXL-style: a UNet with the text_time extra conditioning (pooled text embeds + size/crop ids) and
    two CLIP text encoders, the second with a projection."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=32, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    StableDiffusionXLPipeline(vae=_tiny_vae(flow=False), text_encoder=_tiny_clip_text(tok), tokenizer=tok,
                              text_encoder_2=_tiny_clip_text(tok, "CLIPTextModelWithProjection"), tokenizer_2=tok,
                              unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True).save_pretrained(out)


def build_sd3(out: Path, seed: int = 1) -> None:
    """SD3-style: MMDiT flow-matching transformer, two CLIP encoders and a T5."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok, tok3 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    tr = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                               attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                               joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=32)
    StableDiffusion3Pipeline(
        transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(flow=True),
        text_encoder=_tiny_clip_text(tok, "CLIPTextModelWithProjection"), tokenizer=tok,
        text_encoder_2=_tiny_clip_text(tok, "CLIPTextModelWithProjection"), tokenizer_2=tok,
        text_encoder_3=_tiny_t5(tok3, d_model=64), tokenizer_3=tok3).save_pretrained(out)


def build_flux(out: Path, seed: int = 2, guidance_embeds: bool = False) -> None:
    """FLUX-style: double- and single-stream flow-matching transformer, CLIP + T5 encoders. With
    `guidance_embeds`, FLUX.1-dev-style: guidance-distilled, the transformer takes the guidance scale as an
    input (embedded beside the timestep) instead of running classifier-free guidance."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, tok2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds)
    FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(flow=True),
                 text_encoder=_tiny_clip_text(tok), tokenizer=tok, text_encoder_2=_tiny_t5(tok2), tokenizer_2=tok2,
                 transformer=tr).save_pretrained(out)


def build_wan(out: Path, seed: int, task: str) -> None:
    """Wan video models (flow matching on 5-D video latents, a causal 3-D VAE: 4x in time, 8x in space, a UMT5
    text encoder). `t2v`: Wan2.1 text-to-video. `i2v`: Wan2.1 image-to-video: the first frame's latents are
    concatenated to the noise (36 input channels) and a CLIP vision encoder's embedding is cross-attended
    (`image_dim`). `i2v-moe`: Wan2.2-A14B image-to-video: no image encoder, two expert transformers switched
    at `boundary_ratio` of the schedule (high-noise `transformer`, low-noise `transformer_2`)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tok = tiny_t5_tokenizer(max_len=64)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])

    def transformer(in_channels: int, image_dim: int | None = None):
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                     in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                                     num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                     rope_max_seq_len=32, image_dim=image_dim)

    common = dict(tokenizer=tok, text_encoder=text_encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    if task == "t2v":
        pipe = WanPipeline(transformer=transformer(16), **common)
    elif task == "i2v":
        encoder = CLIPVisionModel(CLIPVisionConfig(  # Wan2.1-I2V reads its penultimate hidden states
            hidden_size=8, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=4))
        pipe = WanImageToVideoPipeline(transformer=transformer(36, image_dim=8), image_encoder=encoder,
                                       image_processor=CLIPImageProcessor(crop_size=32, size=32), **common)
    elif task == "i2v-moe":
        pipe = WanImageToVideoPipeline(transformer=transformer(36), transformer_2=transformer(36), boundary_ratio=0.9,
                                       **common)
    else:
        raise ValueError(f"unknown Wan task {task!r}")
    pipe.save_pretrained(out)


# --- VLM judges (Qwen2-VL / Qwen2.5-VL) ----------------------------------------------------------

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's own chat template, reduced to what the judges use (system, text and image parts).
_QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _qwen_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["You are a helpful assistant.", "Answer with A or B.", "A", "B", "Image A", "Image B",
              "Which image is better?", "The quick brown fox jumps over the lazy dog.", "user", "assistant",
              "system", "Score from 1 to 10.", "1 2 3 4 5 6 7 8 9 10"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=_QWEN_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        additional_special_tokens=_QWEN_SPECIALS[1:], chat_template=_QWEN_CHAT_TEMPLATE, model_max_length=4096)


def build_qwen_vl(out: Path, family: str = "qwen2-vl", seed: int = 0, hidden_layers: int = 2) -> None:
    """Qwen2-VL or Qwen2.5-VL with text head_dim 64 (what vLLM's CPU attention supports)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    # The judge's pixel budget: 64-px images become 2x2 merged patches, 128-px ones 4x4.
    pix = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    processor_cls = tf.Qwen2_5_VLProcessor if family == "qwen2.5-vl" else tf.Qwen2VLProcessor
    processor = processor_cls(image_processor=tf.Qwen2VLImageProcessor(**pix), tokenizer=tokenizer,
                              video_processor=tf.Qwen2VLVideoProcessor(**pix), chat_template=_QWEN_CHAT_TEMPLATE)
    hidden = 128  # 2 heads of 64; mrope_section sums to head_dim / 2
    text_cfg = dict(vocab_size=512, hidden_size=hidden, intermediate_size=256, num_hidden_layers=hidden_layers,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
                    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"])
    token_ids = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                     vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if family == "qwen2.5-vl":
        config = tf.Qwen2_5_VLConfig(text_config=text_cfg, vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
            tie_word_embeddings=False, **token_ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(config)
    elif family == "qwen2-vl":
        config = tf.Qwen2VLConfig(text_config=text_cfg, vision_config=dict(
            depth=2, embed_dim=64, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2), tie_word_embeddings=False, **token_ids)
        model = tf.Qwen2VLForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown VLM family {family!r}")
    model = model.to(torch.float32).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)


# --- reward models (open_clip, transformers CLIP) ---------------------------------------------------

TINY_OPEN_CLIP = {"embed_dim": 64,
                  "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def build_open_clip(out: Path, seed: int = 0) -> None:
    """A tiny open_clip CLIP saved in the hub layout (`open_clip_config.json` + weights): load it with
    `open_clip.create_model_and_transforms('local-dir:' + out)`; its text tower uses open_clip's bundled BPE."""
    import open_clip
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model_cfg = TINY_OPEN_CLIP
    model = open_clip.CLIP(**model_cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "open_clip_model.safetensors")
    preprocess_cfg = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))


def build_pickscore(out: Path, seed: int = 4) -> None:
    """PickScore-style: a transformers CLIPModel with its CLIPProcessor (PickScore is a fine-tuned CLIP-H)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    tok = tiny_clip_tokenizer()
    config = tf.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16), projection_dim=32)
    tf.CLIPModel(config).save_pretrained(out)
    tf.CLIPProcessor(image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 64},
                                                           crop_size={"height": 64, "width": 64}),
                     tokenizer=tok).save_pretrained(out)


def build_hps_checkpoint(out: Path, seed: int = 5) -> None:
    """An HPSv2-format checkpoint ({"state_dict": ...}, DDP "module." keys) for the tiny open_clip
    architecture: HPSv2 is open_clip ViT-H-14 with fine-tuned weights loaded on top."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, out / "hps.pt")


def build_aesthetic_mlp(out: Path, seed: int = 6) -> None:
    """LAION improved-aesthetic-predictor layout (embed -> 1024 -> 128 -> 64 -> 16 -> 1) on the tiny
    open_clip's 64-d normalised image embeddings (768-d for CLIP ViT-L/14 in the real one)."""
    import torch

    from workers.reward import aesthetic_mlp

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(aesthetic_mlp(64).state_dict(), out / "aesthetic.pth")
