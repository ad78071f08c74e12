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
    return pa.table({"reward_models": ["r"] * (n - 1) + ["other"], "prompt": [f"a red boat {i}" for i in range(n)],
                     "image_a": pa.array([png(i) for i in range(n - 1)] + [b"broken"], pa.binary()),
                     "image_b": pa.array([png(10 + i) for i in range(n)], pa.binary())})


@pytest.mark.parametrize("kind,model,checkpoint", [
    ("clip_score", "clip", None), ("pickscore", "pickscore", None), ("hpsv2", "clip", "hpsv2"),
    ("aesthetic", "clip", "aesthetic")])
def test_each_scorer_scores_both_images(tiny_kit, kind, model, checkpoint):
    cfg = RewardConfig(model=f"tiny:{model}", kind=kind, checkpoint=f"tiny:{checkpoint}" if checkpoint else None)
    scorer = RewardScorer("r", cfg.model_dump(), str(tiny_kit / model),
                          checkpoint_path=str(tiny_kit / checkpoint) if checkpoint else None)
    rows = [__import__("json").loads(r) for r in scorer(batch()).column("rewards").to_pylist()]
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
