"""The GPU benchmark suite without a GPU: the `random:` architectures have the published models' sizes (on the
meta device, no memory), their builders assemble pipelines that load and run through `from_pretrained` (at
shrunken widths), and `benchmarks/gpu.sh --tiny` prints every figure."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from workers import random_models as rm
from workers.model_refs import resolve_model_ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published sizes: SD 1.5 UNet 860M; SDXL UNet 2.6B; FLUX.1 12B; Wan2.1 14B; Qwen2.5-VL-7B 8.29B (its model card).
PUBLISHED = {"sd15": (0.86e9, 0.01), "sdxl": (2.6e9, 0.02), "flux-dev": (12e9, 0.02), "wan2.1-t2v-14b": (14e9, 0.03),
             "qwen2.5-vl-7b": (8.29e9, 0.01)}


@pytest.mark.parametrize("name", list(rm.RANDOM_MODELS))
def test_random_architectures_have_the_published_sizes(name):
    size, tolerance = PUBLISHED[name]
    assert abs(rm.n_params(rm.denoiser(name)) / size - 1) < tolerance


def test_an_unknown_random_model_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown random model 'random:nope'; known: random:sd15, .*random:qwen2.5-vl-7b"):
        resolve_model_ref("random:nope")


# The same architectures at toy widths: what the builders assemble must load through from_pretrained and run.
SHRUNK = {
    "CLIP_L": dict(rm.CLIP_L, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                   projection_dim=32),
    "CLIP_BIGG": dict(rm.CLIP_BIGG, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                      projection_dim=32),
    "T5_XXL": dict(rm.T5_XXL, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
    "UMT5_XXL": dict(rm.UMT5_XXL, vocab_size=512, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8),
    "SD_VAE": dict(rm.SD_VAE, block_out_channels=[32] * 4, layers_per_block=1),
    "FLUX_VAE": dict(rm.FLUX_VAE, block_out_channels=[32] * 4, layers_per_block=1),
    "WAN_VAE": dict(rm.WAN_VAE, base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    "SD15_UNET": dict(rm.SD15_UNET, block_out_channels=[32, 32, 64, 64], layers_per_block=1, cross_attention_dim=32),
    "SDXL_UNET": dict(rm.SDXL_UNET, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], layers_per_block=1,
                      transformer_layers_per_block=[1, 1, 1], cross_attention_dim=64, addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=32 + 6 * 8),
    "FLUX_DEV": dict(rm.FLUX_DEV, attention_head_dim=16, num_attention_heads=2, num_layers=1, num_single_layers=1,
                     joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
    "WAN_14B": dict(rm.WAN_14B, attention_head_dim=12, num_attention_heads=2, ffn_dim=32, num_layers=2, text_dim=32,
                    freq_dim=32, rope_max_seq_len=32),
    "QWEN25_VL_7B_TEXT": dict(rm.QWEN25_VL_7B_TEXT, vocab_size=512, hidden_size=128, intermediate_size=256,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
    "QWEN25_VL_7B_VISION": dict(rm.QWEN25_VL_7B_VISION, depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                out_hidden_size=128, fullatt_block_indexes=[1]),
}


@pytest.mark.parametrize("name", list(rm.RANDOM_MODELS))
def test_random_builders_load_and_run_through_from_pretrained(name, tmp_path, monkeypatch):
    from PIL import Image

    for key, value in SHRUNK.items():
        monkeypatch.setattr(rm, key, value)
    rm.build_random(name, tmp_path / name, device="cpu")
    if name == "qwen2.5-vl-7b":
        from schemas.config import JudgeConfig
        from workers.judge_backends import make_backend
        from workers.rubrics import OPTIONS, new_nonce, pairwise_messages

        backend = make_backend(str(tmp_path / name), JudgeConfig(model="x", backend="transformers"))
        a, b = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")
        (result,) = backend.option_logprobs([(pairwise_messages("composition", "a chair", new_nonce()), [a, b])],
                                            list(OPTIONS))
        assert len(result.logprobs) == 2
        return
    from workers.generator import load_pipeline

    _, _, pipe = load_pipeline(str(tmp_path / name), "float32")
    video = name.startswith("wan")
    out = pipe("a red chair", num_inference_steps=1, width=64, height=64, guidance_scale=2.0,
               **({"num_frames": 5, "output_type": "np"} if video else {}))
    assert (out.frames[0].shape[:3] == (5, 64, 64)) if video else out.images[0].size == (64, 64)


FIGURES = [r"generator sd15 .* [\d.]+ images/s", r"generator sdxl .* [\d.]+ images/s",
           r"generator flux-dev .* [\d.]+ images/s", r"generator wan2.1-t2v-14b .* [\d.]+ videos/s",
           r"judge tiny:qwen2.5-vl-b: transformers [\d.]+ pairs/s", r"train tiny:sd: Ray Train / plain loop = [\d.]+x",
           r"pipeline efficiency \(end-to-end / slowest stage alone, [\w:.-]+\): [\d.]+"]


@pytest.mark.slow
def test_the_tiny_suite_prints_every_figure(tmp_path):
    """`benchmarks/gpu.sh --tiny`, every section (the judge on transformers only: vLLM's CPU engine takes minutes to
    start; `--judge-backends transformers,vllm` adds the ratio). Its own Ray clusters, in its own processes."""
    env = {**os.environ, "PYTHON": sys.executable, "RAY_ADDRESS": ""}
    proc = subprocess.run([os.path.join(REPO, "benchmarks", "gpu.sh"), "--tiny", "--judge-backends", "transformers"],
                          capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("== summary")[1]
    for figure in FIGURES:
        assert re.search(figure, summary), f"missing {figure!r} in:\n{summary}"
    assert "vllm / transformers = n/a" in summary
