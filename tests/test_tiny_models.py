"""The tiny-model kit: every model reloads through its library's real loader and runs."""

import pytest
import torch

from workers.model_refs import resolve_model_ref
from workers.tiny_models import TINY_MODELS


def test_kit_has_every_model_family(tiny_kit):
    kinds = {}
    for name, kind in TINY_MODELS.items():
        assert (tiny_kit / name).is_dir()
        kinds.setdefault(kind, []).append(name)
    assert len(kinds["generator"]) >= 2 and len(kinds["judge"]) >= 3 and kinds["reward"]


@pytest.mark.parametrize("name,kwargs", [
    ("sd", {"guidance_scale": 5.0}),
    ("sdxl", {"guidance_scale": 5.0}),
    ("sd3", {"guidance_scale": 5.0, "max_sequence_length": 32}),
    ("flux", {"guidance_scale": 0.0, "max_sequence_length": 32}),
    ("flux-dev", {"guidance_scale": 3.5, "max_sequence_length": 32}),  # guidance-distilled (FLUX.1-dev)
])
def test_generators_load_with_from_pretrained_and_generate(tiny_kit, name, kwargs):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_kit / name)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    images = pipe(["a red cube left of a blue ball"] * 2, height=64, width=64, num_inference_steps=2,
                  generator=gen, **kwargs).images
    assert len(images) == 2 and images[0].size == (64, 64)


@pytest.mark.parametrize("name,cls,experts", [("wan-t2v", "WanPipeline", 1), ("wan-i2v", "WanImageToVideoPipeline", 1),
                                              ("wan2.2-i2v", "WanImageToVideoPipeline", 2)])
def test_video_generators_load_and_make_videos_the_way_the_real_ones_do(tiny_kit, name, cls, experts):
    """Wan through diffusers' loader: 4k+1 frames on the 3-D VAE's grid; image-to-video conditions on its
    first frame (a different image, a different video); Wan2.2's two experts both load."""
    import numpy as np
    from diffusers import DiffusionPipeline
    from PIL import Image

    pipe = DiffusionPipeline.from_pretrained(tiny_kit / name)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == cls and (pipe.components.get("transformer_2") is not None) == (experts == 2)

    def video(image=None):
        kw = {"image": image} if image is not None else {}
        return pipe(prompt="a red bird takes off", num_frames=9, height=64, width=96, num_inference_steps=2, guidance_scale=5.0,
                    generator=torch.Generator().manual_seed(0), output_type="np", **kw).frames[0]

    if cls == "WanPipeline":
        frames = video()
    else:
        frames = video(Image.new("RGB", (96, 64), (200, 40, 40)))
        other = video(Image.new("RGB", (96, 64), (20, 40, 220)))
        assert np.abs(frames - other).mean() > 1e-3
    assert frames.shape == (9, 64, 96, 3) and np.isfinite(frames).all()


@pytest.mark.parametrize("name,cls", [("qwen2-vl-a", "Qwen2VLForConditionalGeneration"),
                                      ("qwen2.5-vl-b", "Qwen2_5_VLForConditionalGeneration"),
                                      ("qwen2-vl-c", "Qwen2VLForConditionalGeneration")])
def test_judges_load_with_auto_classes(tiny_kit, name, cls):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_kit / name)
    processor = AutoProcessor.from_pretrained(tiny_kit / name)
    assert type(model).__name__ == cls
    for option in ("A", "B"):
        assert len(processor.tokenizer.encode(option, add_special_tokens=False)) == 1


def test_judges_differ(tiny_kit):
    from safetensors.torch import load_file

    a = load_file(tiny_kit / "qwen2-vl-a" / "model.safetensors")
    c = load_file(tiny_kit / "qwen2-vl-c" / "model.safetensors")
    assert a.keys() != c.keys() or any(not torch.equal(a[k], c[k]) for k in a)


def test_open_clip_scorer_loads_from_local_dir(tiny_kit):
    import open_clip
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_kit / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_kit / 'clip'}")
    with torch.no_grad():
        img = model.encode_image(preprocess(Image.new("RGB", (80, 64), "red")).unsqueeze(0))
        txt = model.encode_text(tokenizer(["a red square"]))
    assert img.shape == txt.shape == (1, 64)


def test_model_refs_resolve(tiny_kit):
    assert resolve_model_ref("tiny:sd") == str(tiny_kit / "sd")
    assert resolve_model_ref("org/some-model") == "org/some-model"
    with pytest.raises(ValueError, match="unknown tiny model 'tiny:nope'"):
        resolve_model_ref("tiny:nope")
