"""Reward scorers of the CLIP family on the tiny kit, loaded through their real loaders."""

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from schemas.config import RewardConfig
from workers.reward import RewardScorer, checkpoint_file


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def batch(n=3):
    return pa.table({"reward_models": [["r"]] * (n - 1) + [["other"]], "prompt": [f"a red boat {i}" for i in range(n)],
                     "image_a": pa.array([png(i) for i in range(n - 1)] + [b"broken"], pa.binary()),
                     "image_b": pa.array([png(10 + i) for i in range(n)], pa.binary())})


@pytest.mark.parametrize("kind,model,checkpoint", [
    ("clip_score", "clip", None), ("pickscore", "pickscore", None), ("hpsv2", "clip", "hpsv2"),
    ("aesthetic", "clip", "aesthetic")])
def test_each_scorer_scores_both_images(tiny_kit, kind, model, checkpoint):
    cfg = RewardConfig(model=f"tiny:{model}", kind=kind, checkpoint=f"tiny:{checkpoint}" if checkpoint else None)
    scorer = RewardScorer("r", cfg.model_dump(), str(tiny_kit / model),
                          checkpoint_path=str(tiny_kit / checkpoint) if checkpoint else None)
    rows = scorer(batch()).column("rewards").to_pylist()
    for r in rows[:2]:
        assert len(r) == 1 and r[0]["model"] == "r"
        assert all(isinstance(r[0][k], float) and np.isfinite(r[0][k]) for k in ("score_a", "score_b"))
        assert r[0]["score_a"] != r[0]["score_b"]
    assert rows[2] == []  # another reward's row: untouched


def test_hps_checkpoint_is_loaded_on_top_of_the_architecture(tiny_kit):
    import open_clip

    base = RewardScorer("c", RewardConfig(model="x").model_dump(), str(tiny_kit / "clip"))
    hps = RewardScorer("h", RewardConfig(model="x", kind="hpsv2", checkpoint="y").model_dump(), str(tiny_kit / "clip"),
                       checkpoint_path=str(tiny_kit / "hpsv2"))
    saved = torch.load(checkpoint_file(str(tiny_kit / "hpsv2")), weights_only=True)["state_dict"]
    for k, v in hps.model.state_dict().items():
        assert torch.equal(v, saved["module." + k])
    assert any(not torch.equal(a, b) for a, b in zip(base.model.state_dict().values(), hps.model.state_dict().values()))
    assert isinstance(hps.model, open_clip.CLIP)


def test_aesthetic_score_ignores_the_prompt(tiny_kit):
    scorer = RewardScorer("a", RewardConfig(model="x", kind="aesthetic", checkpoint="y").model_dump(),
                          str(tiny_kit / "clip"), checkpoint_path=str(tiny_kit / "aesthetic"))
    image = Image.open(io.BytesIO(png(3))).convert("RGB")
    assert scorer.scores(["a cat"], [image]) == pytest.approx(scorer.scores(["a mountain at dusk"], [image]))


def test_checkpoint_config_is_required_and_files_are_found(tmp_path):
    with pytest.raises(ValueError, match="kind hpsv2 needs `checkpoint`"):
        RewardConfig(model="x", kind="hpsv2")
    with pytest.raises(FileNotFoundError, match="expected one checkpoint file"):
        checkpoint_file(str(tmp_path))


# --- preprocessing as each reference does it --------------------------------------------------------

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def edge_image(width=256, height=96) -> Image.Image:
    """Non-square, with content only near the left and right edges (a centre crop keeps only the grey middle)."""
    rng = np.random.default_rng(0)
    arr = np.full((height, width, 3), 128, np.uint8)
    arr[:, :width // 8] = rng.integers(0, 255, (height, width // 8, 3))
    arr[:, -width // 8:] = [30, 60, 220]
    return Image.fromarray(arr)


def hpsv2_reference(size: int):
    """HPSv2's scoring transform (tgxs002/HPSv2, hpsv2/src/open_clip/transform.py: image_transform with
    resize_longest_max=True, as img_score.py builds it): ToTensor, ResizeMaxSize (the longest side to
    `size`, bicubic, then zero padding centred), Normalize."""
    from torchvision.transforms import Compose, Normalize, ToTensor
    from torchvision.transforms import functional as F

    def resize_max_size(img):
        h, w = img.shape[1:]
        new = tuple(round(d * size / max(h, w)) for d in (h, w))
        img = F.resize(img, new, F.InterpolationMode.BICUBIC)
        pad_h, pad_w = size - new[0], size - new[1]
        return F.pad(img, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)

    return Compose([lambda im: im.convert("RGB"), ToTensor(), resize_max_size, Normalize(MEAN, STD)])


def clip_reference(size: int):
    """openai/CLIP clip.py `_transform` (what the LAION aesthetic predictor's `clip.load` returns)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                    lambda im: im.convert("RGB"), ToTensor(), Normalize(MEAN, STD)])


def pickscore_reference(image: Image.Image, size: int) -> torch.Tensor:
    """The CLIPImageProcessor of PickScore's reference (transformers 4.27): PIL bicubic resize of the
    shortest side (the longest truncated), centre crop at the floor offset, /255, Normalize."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    image = image.resize((size, new_long) if w <= h else (new_long, size), resample=Image.BICUBIC)
    a = np.asarray(image, dtype=np.float32)
    top, left = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    a = (a[top:top + size, left:left + size] / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def fed_images(module):
    """Records the pixel tensor each forward pass of `module` receives."""
    seen = []
    module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs.get("pixel_values") if not args else args[0]).detach().clone()),
        with_kwargs=True)
    return seen


def test_hpsv2_pads_to_a_square_as_its_reference(tiny_kit):
    scorer = RewardScorer("h", RewardConfig(model="x", kind="hpsv2", checkpoint="y").model_dump(), str(tiny_kit / "clip"),
                          checkpoint_path=str(tiny_kit / "hpsv2"))
    seen = fed_images(scorer.model.visual)
    image, prompt = edge_image(), "a red boat"
    score = scorer.scores([prompt], [image])[0]
    fed, ref = seen[0][0], hpsv2_reference(64)(image)
    assert fed.shape == ref.shape == (3, 64, 64)
    pad = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(ref[:, :20], pad[:, None, None].expand(3, 20, 64))  # 256x96 -> 64x24: 20 rows of padding
    assert torch.equal(fed[:, :20], ref[:, :20]) and torch.equal(fed[:, -20:], ref[:, -20:])
    # the image rows: PIL (open_clip) vs tensor (HPSv2) bicubic resampling differ by rounding only
    diff = ((fed - ref).abs() * torch.tensor(STD)[:, None, None])[:, 20:-20]
    assert diff.mean() < 0.5 / 255 and diff.max() < 3 / 255, (diff.mean(), diff.max())

    def cos(pixels):
        with torch.inference_mode():
            img = scorer.model.encode_image(pixels[None])
            txt = scorer.model.encode_text(scorer.tokenizer([prompt]))
        return float(torch.nn.functional.cosine_similarity(img, txt).item())

    cropped = clip_reference(64)(image)  # what a centre crop would have fed the model
    assert abs(score - cos(ref)) < 0.05 * abs(cos(ref) - cos(cropped)), (score, cos(ref), cos(cropped))


@pytest.mark.parametrize("kind,checkpoint", [("clip_score", None), ("aesthetic", "aesthetic")])
def test_clip_family_crops_as_clip_does(tiny_kit, kind, checkpoint):
    scorer = RewardScorer("c", RewardConfig(model="x", kind=kind, checkpoint=checkpoint and "y").model_dump(),
                          str(tiny_kit / "clip"), checkpoint_path=checkpoint and str(tiny_kit / checkpoint))
    seen = fed_images(scorer.model.visual)
    scorer.scores(["a red boat"], [edge_image()])
    assert torch.allclose(seen[0][0], clip_reference(64)(edge_image()), atol=1e-6)


def test_pickscore_feeds_what_its_reference_feeds(tiny_kit):
    scorer = RewardScorer("p", RewardConfig(model="x", kind="pickscore").model_dump(), str(tiny_kit / "pickscore"))
    seen = fed_images(scorer.model.vision_model)
    images = [edge_image(), edge_image(300, 700)]
    prompts = ["a red boat", "a much longer prompt about a red boat on a grey sea under a blue sky"]
    scores = scorer.scores(prompts, images)
    for fed, image in zip(seen[0], images):
        assert torch.allclose(fed, pickscore_reference(image, 64), atol=1e-5)
    # PickScore's reference scores one prompt at a time, text and images in separate processor calls;
    # padding to the batch's longest prompt must not change a score.
    model, processor = scorer.model, scorer.processor
    for prompt, image, score in zip(prompts, images, scores):
        kw = dict(padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.inference_mode():
            img = model.get_image_features(**processor(images=[image], **kw))
            txt = model.get_text_features(**processor(text=prompt, **kw))
            img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            reference = float(model.logit_scale.exp() * (txt @ img.T)[0, 0])
        assert score == pytest.approx(reference, abs=1e-4)
