"""Ray Train Diffusion-DPO on real pair shards: checkpoints reload with from_pretrained, runs resume."""

import csv
import math

import numpy as np
import pytest
import torch

from schemas.config import TrainConfig
from training.data import mixture_fractions
from training.train import train


def read_metrics(run_dir: str) -> list[dict]:
    with open(f"{run_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def train_cfg(composition_run, tmp_path_factory):
    _, out, _ = composition_run
    return TrainConfig(name="t", model="tiny:sd", output=str(tmp_path_factory.mktemp("train")),
                       data={"paths": [str(out)], "resolution": 64}, loss="poly", alpha=1.0, beta=500,
                       learning_rate=1e-4, batch_size=2, max_steps=3, checkpoint_every=2, num_workers=2)


def test_train_checkpoint_reload_and_resume(ray_session, train_cfg, tiny_kit):
    from diffusers import UNet2DConditionModel

    result = train(train_cfg)
    assert result.metrics["step"] == 3
    run_dir = result.checkpoint.path.rsplit("/ray/", 1)[0]
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2) + 0.5, abs=1e-5)  # policy == reference
    assert all(math.isfinite(float(r["grad_norm"])) for r in rows)

    final = UNet2DConditionModel.from_pretrained(f"{run_dir}/final/unet")
    base = UNet2DConditionModel.from_pretrained(tiny_kit / "sd", subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), base.state_dict().values()))

    resumed = train(train_cfg.model_copy(update={"max_steps": 5}))
    assert resumed.metrics["step"] == 5
    steps = [int(r["step"]) for r in read_metrics(run_dir)]
    assert steps == [1, 2, 3, 4, 5]  # continued from the saved step, not from scratch


def test_missing_shards_fail_before_starting_ray(tmp_path):
    cfg = TrainConfig(name="t", model="tiny:sd", output=str(tmp_path), data={"paths": [str(tmp_path / "nothing")]})
    with pytest.raises(FileNotFoundError, match="no pair shards"):
        train(cfg)


def test_mixture_fractions_follow_the_weights():
    rows = {"composition": 1000, "aesthetics": 100}
    f = mixture_fractions(rows, {"composition": 1.0, "aesthetics": 1.0})
    assert f["aesthetics"] == 1.0 and f["composition"] == pytest.approx(0.1)
    assert mixture_fractions(rows, None) == {"composition": 1.0, "aesthetics": 1.0}


def write_pairs(out, category: str, files: int, rows: int) -> list[str]:
    """Pair shards of `category` with tiny real PNGs, `files` files of `rows` rows."""
    import io
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from schemas.pair import pair_schema

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    img = {"bytes": buf.getvalue(), "path": None}
    ids = []
    for f in range(files):
        table = [{"pair_id": f"{category}-{f}-{r}", "category": category, "prompt": "p", "prompt_id": "q",
                  "prompt_source": "t", "image_w": img, "image_l": img, "label_source": "vlm_panel", "agreement": 1.0,
                  "confidence": 1.0, "created_at": datetime.now(timezone.utc), "pipeline_version": "t",
                  "config_hash": "h"} for r in range(rows)]
        path = out / "pairs" / category / f"part-r_1-{f:05d}-x-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table, schema=pair_schema()), path)
        ids += [r["pair_id"] for r in table]
    return ids


def test_training_batches_mix_categories_and_repeat_with_the_seed(ray_session, tmp_path):
    from schemas.config import TrainData
    from training.data import ingest_options, pair_batches, training_pairs

    ids = write_pairs(tmp_path, "composition", 4, 6) + write_pairs(tmp_path, "aesthetics", 4, 6)

    def order(seed: int, shuffle_buffer: int = 16) -> list[str]:
        ds = training_pairs(TrainData(paths=[str(tmp_path)], resolution=16), "unused", seed=seed)
        ds.context.execution_options = ingest_options()  # what the trainer's DataConfig sets
        return [p for b in pair_batches(ds.iterator(), 4, shuffle_buffer, seed) for p in b["pair_id"]]

    first = order(0)
    assert sorted(first) == sorted(ids) and order(0) == first  # every pair once; the same seed, the same batches
    assert order(1) != first
    head = {p.split("-")[0] for p in first[:12]}
    assert head == {"composition", "aesthetics"}  # the first half is not one category


def test_sft_then_dpo_on_the_flow_matching_model(ray_session, composition_run, tmp_path):
    _, out, _ = composition_run
    base = dict(model="tiny:flux", output=str(tmp_path), data={"paths": [str(out)], "resolution": 64},
                batch_size=2, max_steps=2, checkpoint_every=2, max_sequence_length=32, learning_rate=1e-4)
    sft = train(TrainConfig(name="sft", stage="sft", **base))
    assert sft.metrics["step"] == 2
    sft_final = tmp_path / "sft" / "final"
    assert (sft_final / "transformer").is_dir()
    dpo = train(TrainConfig(name="dpo", stage="dpo", init_checkpoint=str(sft_final), loss="poly", alpha=0.0, **base))
    rows = read_metrics(str(tmp_path / "dpo"))
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2), abs=1e-5)  # policy and reference both = SFT
    assert dpo.metrics["step"] == 2


def test_latent_cache_gives_the_same_loss_as_encoding_on_the_fly(ray_session, composition_run, tiny_kit):
    from diffusers import DiffusionPipeline

    from training.data import training_pairs
    from training.train import PreferenceTrainer

    _, out, _ = composition_run
    cfg = TrainConfig(name="t", model="tiny:sd", output="/tmp", data={"paths": [str(out)], "resolution": 64})
    path = str(tiny_kit / "sd")

    def first_batch(latent_cache: bool) -> dict:
        data = cfg.data.model_copy(update={"latent_cache": latent_cache})
        rows = sorted(training_pairs(data, path).take_all(), key=lambda r: r["pair_id"])[:4]
        return {k: np.stack([r[k] for r in rows]) if k.startswith(("pixels", "latent")) else [r[k] for r in rows]
                for k in rows[0]}

    cached, fresh = first_batch(True), first_batch(False)
    assert "latent_w" in cached and "pixels_w" in fresh and cached["pair_id"] == fresh["pair_id"]
    trainer = PreferenceTrainer(DiffusionPipeline.from_pretrained(path), cfg)
    with torch.no_grad():
        trainer.policy.conv_in.weight.mul_(1.01)  # a policy that differs from its reference: a non-trivial loss
    # The same latents up to float32 rounding (the cache encodes in batches of 16, here 4 at a time) ...
    assert torch.allclose(trainer.latents(cached), trainer.latents(fresh), atol=1e-5)
    loss_cached, _ = trainer.loss(cached, torch.Generator().manual_seed(3))
    loss_fresh, _ = trainer.loss(fresh, torch.Generator().manual_seed(3))
    # ... so the same loss, to the precision beta = 500 leaves of that rounding.
    assert loss_cached.item() == pytest.approx(loss_fresh.item(), rel=1e-4) and loss_cached.item() != pytest.approx(math.log(2))
    def caches():  # published caches; dot-names are the builders' lock and temporaries
        return [p for p in (out / "latents").iterdir() if not p.name.startswith(".")]

    assert len(caches()) == 1  # built once, beside the shards
    first_batch(True)
    assert len(caches()) == 1  # and reused
