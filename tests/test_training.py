"""Ray Train Diffusion-DPO on real pair shards: checkpoints reload with from_pretrained, runs resume."""

import csv
import math
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import REPO

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


def tiny_png() -> dict:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_shard(out, category: str, index: int, rows: list[dict]) -> list[str]:
    """One pair shard of `category`: each row a vlm_panel pair with tiny real PNGs unless it says otherwise."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.pair import pair_schema

    img = tiny_png()
    table = [{"category": category, "prompt": "p", "prompt_id": "q", "prompt_source": "t", "image_w": img,
              "image_l": img, "label_source": "vlm_panel", "agreement": 1.0, "confidence": 1.0,
              "created_at": datetime.now(timezone.utc), "pipeline_version": "t", "config_hash": "h", **r} for r in rows]
    path = out / "pairs" / category / f"part-r_1-{index:05d}-x-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table, schema=pair_schema()), path)
    return [r["pair_id"] for r in table]


def write_pairs(out, category: str, files: int, rows: int) -> list[str]:
    """Pair shards of `category` with tiny real PNGs, `files` files of `rows` rows."""
    return [p for f in range(files) for p in write_shard(out, category, f, [{"pair_id": f"{category}-{f}-{r}"}
                                                                             for r in range(rows)])]


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


def test_sft_then_dpo_on_the_guidance_distilled_flux(ray_session, composition_run, tmp_path):
    _, out, _ = composition_run
    # FLUX.1-dev-style (guidance-distilled): crashed on main, which gave its transformer guidance=None
    base = dict(model="tiny:flux-dev", output=str(tmp_path), data={"paths": [str(out)], "resolution": 64},
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


def reward_row(pair_id: str, margin: float) -> dict:
    """A best-of-N pair: no agreement or confidence; two reward models whose calibrated margins average `margin`."""
    rewards = [{"model": m, "score_w": 1.0, "score_l": 0.0, "calibrated_w": 0.5 + margin / 2 + d,
                "calibrated_l": 0.5 - margin / 2 + d} for m, d in (("clip", 0.1), ("pick", -0.1))]
    return {"pair_id": pair_id, "label_source": "reward", "agreement": None, "confidence": None, "rewards": rewards}


def ocr_row(pair_id: str, loser_ned: float, winner_exact: bool = True) -> dict:
    """An OCR-decided pair: agreement 1, no confidence, both reads stored."""
    reads = [{"side": "w", "text": "SALE", "exact": winner_exact, "ned": 0.0},
             {"side": "l", "text": "SALF", "exact": False, "ned": loser_ned}]
    return {"pair_id": pair_id, "label_source": "ocr", "agreement": 1.0, "confidence": None, "ocr": reads}


LABELLED = [  # (row, passes the filters of test_label_filters_apply_to_the_labels_that_carry_them)
    ({"pair_id": "panel-sure", "agreement": 1.0, "confidence": 0.9}, True),
    ({"pair_id": "panel-split", "agreement": 0.5, "confidence": 0.9}, False),        # min_agreement
    ({"pair_id": "panel-unsure", "agreement": 2 / 3, "confidence": 0.55}, False),    # min_confidence
    ({"pair_id": "panel-both", "agreement": 0.5, "confidence": 0.55}, False),        # both
    ({"pair_id": "constructed", "label_source": "construction"}, True),
    (reward_row("reward-clear", 0.6), True),
    (reward_row("reward-close", 0.1), False),                                          # min_reward_margin
    (ocr_row("ocr-clear", 0.5), True),
    (ocr_row("ocr-one-glyph", 0.05), False),                                           # min_ocr_loser_ned
    (ocr_row("ocr-winner-misread", 0.5, winner_exact=False), False),                  # the winner must read exact
]


def test_label_filters_apply_to_the_labels_that_carry_them(ray_session, tmp_path, caplog):
    """A typical cluster config: on main, null confidence (OCR, reward) counted as 0 and dropped every
    reward- and OCR-labelled pair."""
    from schemas.config import TrainData
    from training.data import audit, training_pairs

    write_shard(tmp_path, "text_rendering", 0, [row for row, _ in LABELLED[:5] + LABELLED[7:]])
    write_shard(tmp_path, "composition", 0, [row for row, _ in LABELLED[5:7]])
    data = TrainData(paths=[str(tmp_path)], resolution=16, min_agreement=0.6, min_confidence=0.7,
                     min_reward_margin=0.3, min_ocr_loser_ned=0.1)
    expected = sorted(row["pair_id"] for row, passes in LABELLED if passes)
    assert sorted(r["pair_id"] for r in training_pairs(data, "unused").take_all()) == expected

    with caplog.at_level("INFO", logger="pairforge.train"):
        counts = audit(data).counts
    assert counts["vlm_panel"] == Counter(pairs=4, kept=1, min_agreement=2, min_confidence=2)  # zero counts ignored
    assert counts["construction"] == Counter(pairs=1, kept=1)
    assert counts["reward"] == Counter(pairs=2, kept=1, min_reward_margin=1)
    assert counts["ocr"] == Counter(pairs=3, kept=1, ocr_exact=2)
    assert "reward: 2 pairs, 1 pass the filters (dropped by min_reward_margin 1)" in caplog.text
    assert "vlm_panel: 4 pairs, 1 pass the filters (dropped by min_agreement 2, min_confidence 2)" in caplog.text


def write_gaps(path, gaps: dict[str, float]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"pair_id": list(gaps), "gap": pa.array(list(gaps.values()), pa.float64())}), path)
    return str(path)


def test_missing_gaps_fail_before_training_in_one_line(tmp_path):
    """On main the fine loss trained on NaN for a pair absent from the gap file."""
    import subprocess
    import sys

    import yaml

    from training.data import TrainDataError

    ids = write_pairs(tmp_path, "composition", 1, 6)
    gap_file = write_gaps(tmp_path / "gaps.parquet", {ids[0]: 1.0, ids[1]: 0.5, ids[2]: float("nan")})  # NaN: no gap
    config = dict(name="t", model="tiny:sd", output=str(tmp_path / "train"), loss="fine",
                  data={"paths": [str(tmp_path)], "resolution": 32, "gap_file": gap_file})
    expected = (rf"^4 of the 6 pairs that pass the filters have no gap in data.gap_file {gap_file} "
                rf"\(first: {ids[2]}, {ids[3]}, {ids[4]}, {ids[5]}\); .*missing_gap: drop")
    with pytest.raises(TrainDataError, match=expected):
        train(TrainConfig(**config))
    assert not (tmp_path / "train" / "t").exists()  # nothing started

    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(tmp_path / "train.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("4 of the 6 pairs that pass the filters have no gap")


def test_drop_missing_gaps_and_stop_on_a_non_finite_loss(ray_session, tmp_path, caplog):
    """missing_gap: drop trains on the pairs with a gap; a gap that overflows the loss (1e200 squared) stops
    training at its step with a clear error and no checkpoint after it (main stepped into NaN weights)."""
    from diffusers import UNet2DConditionModel

    from training.train import TrainingHalted

    ids = write_pairs(tmp_path, "composition", 1, 6)
    gaps = {ids[0]: 1.0, ids[1]: 0.5, ids[2]: 0.2, ids[3]: 1e200}
    cfg = TrainConfig(name="t", model="tiny:sd", output=str(tmp_path / "train"), loss="fine", batch_size=2,
                      max_steps=4, checkpoint_every=1, learning_rate=1e-4,
                      data={"paths": [str(tmp_path)], "resolution": 32, "shuffle_buffer": 0, "missing_gap": "drop",
                            "gap_file": write_gaps(tmp_path / "gaps.parquet", gaps)})
    with caplog.at_level("WARNING", logger="pairforge.train"), pytest.raises(TrainingHalted) as halted:
        train(cfg)
    assert "2 of the 6 pairs that pass the filters have no gap" in caplog.text and "dropped" in caplog.text
    run_dir = tmp_path / "train" / "t"
    with open(run_dir / "seen" / "rank-0.csv") as f:
        seen = [row["pair_ids"].split() for row in csv.DictReader(f)]
    bad_step = len(seen) + 1  # the steps before it were trained and logged
    assert str(halted.value).startswith(f"training stopped at step {bad_step}: the loss is inf (pairs ")
    assert ids[3] in str(halted.value) and "\n" not in str(halted.value)
    assert all(p in gaps for step in seen for p in step) and ids[3] not in {p for step in seen for p in step}
    assert not (run_dir / "final").exists()
    checkpoints = list(run_dir.glob("ray/**/unet"))
    assert len(checkpoints) == bad_step - 1  # one per step before the bad one, each with finite weights
    for unet in checkpoints:
        assert all(torch.isfinite(v).all() for v in UNet2DConditionModel.from_pretrained(unet).state_dict().values())


def test_resume_trains_on_the_rest_of_the_epoch_in_the_uninterrupted_order(ray_session, tmp_path):
    """Stopped at step 3 (a checkpoint) and resumed to step 8, a run sees the pairs an uninterrupted run sees,
    step by step: the rest of epoch 0, then epoch 1. On main a resume restarted the epoch (seeded by the
    step) and trained on its first batches again."""
    from schemas.config import TrainData
    from training.data import ingest_options, pair_batches, training_pairs
    from training.train import seed_for

    ids = write_pairs(tmp_path / "data", "composition", 3, 4)  # 12 pairs: 6 steps of 2 per epoch
    data = TrainData(paths=[str(tmp_path / "data")], resolution=32, shuffle_buffer=4)
    base = dict(name="cut", model="tiny:sd", output=str(tmp_path / "train"), loss="poly", alpha=0.0, batch_size=2,
                checkpoint_every=3, learning_rate=1e-4, report_every=100, data=data)
    train(TrainConfig(max_steps=3, **base))
    seen_csv = tmp_path / "train" / "cut" / "seen" / "rank-0.csv"
    # As if the stopped run had gone on to step 5 and died before its next checkpoint: those steps' log rows
    # belong to weights that are gone, and the resumed run drops them.
    with open(seen_csv, "a") as f:
        f.write(f"4,0,4,{ids[0]} {ids[1]}\n5,0,5,{ids[2]} {ids[3]}\n")
    train(TrainConfig(max_steps=8, **base))
    with open(seen_csv) as f:
        seen = [(int(r["step"]), int(r["epoch"]), r["pair_ids"].split()) for r in csv.DictReader(f)]

    # What one uninterrupted worker is handed: each epoch's batches in the order of its seed.
    ds = training_pairs(data, "unused", seed=0)
    ds.context.execution_options = ingest_options()  # what the trainer's DataConfig sets
    uninterrupted = [(epoch, list(b["pair_id"])) for epoch in (0, 1)
                     for b in pair_batches(ds.iterator(), 2, 4, seed_for("order", 0, 0, epoch))]
    assert sorted(p for e, ps in uninterrupted if e == 0 for p in ps) == sorted(ids)  # every pair once per epoch
    assert seen == [(step, epoch, ps) for step, (epoch, ps) in enumerate(uninterrupted[:8], start=1)]
    assert [int(r["step"]) for r in read_metrics(str(tmp_path / "train" / "cut"))] == list(range(1, 9))


# --- Video models (Wan): Diffusion-DPO on 5-D video latents ------------------------------------------------

VIDEO = dict(frames=9, size=32)  # 9 frames = 3 latent frames of Wan's VAE; 32 px = 4x4 latents


@pytest.fixture(scope="module")
def video_pairs(tiny_kit, tmp_path_factory):
    """A run output with one shard of video pairs (`video_w` / `video_l` MP4s from the tiny Wan T2V in the
    `{bytes, path}` layout, with frames and fps) beside a shard of image pairs."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq
    from diffusers import DiffusionPipeline

    from schemas.pair import pair_schema
    from workers.media import mp4_bytes

    out = tmp_path_factory.mktemp("video-pairs")
    pipe = DiffusionPipeline.from_pretrained(tiny_kit / "wan-t2v")
    pipe.set_progress_bar_config(disable=True)

    def video(prompt: str, seed: int) -> dict:
        frames = pipe(prompt, num_frames=VIDEO["frames"], height=VIDEO["size"], width=VIDEO["size"], num_inference_steps=2,
                      output_type="np", generator=torch.Generator().manual_seed(seed)).frames[0]
        return {"bytes": mp4_bytes(frames, 8), "path": None}

    schema = pair_schema()  # the record's own: video_w / video_l, frames, fps beside the image columns
    prompts = ["a red ball rolls left", "a dog runs on grass", "waves break on a rock", "a kite rises"]
    rows = [{"pair_id": f"video-{i}", "category": "motion_quality", "prompt": p, "prompt_id": f"q{i}", "prompt_source": "t",
             "video_w": video(p, 2 * i), "video_l": video(p, 2 * i + 1), "width": VIDEO["size"], "height": VIDEO["size"],
             "frames": VIDEO["frames"], "fps": 8.0, "label_source": "vlm_panel", "agreement": 1.0, "confidence": 1.0,
             "created_at": datetime.now(timezone.utc), "pipeline_version": "t", "config_hash": "h"}
            for i, p in enumerate(prompts)]
    path = out / "pairs" / "motion_quality" / "part-r_1-00000-x-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    write_shard(out, "composition", 0, [{"pair_id": "image-0"}])  # image pairs: not a video model's data
    return out


def video_cfg(out, model: str, **kw) -> TrainConfig:
    return TrainConfig(name="v", model=model, output=str(out), lora_rank=4, learning_rate=1e-3, max_sequence_length=32,
                       data={"paths": [str(out)], "resolution": VIDEO["size"], "num_frames": VIDEO["frames"]}, **kw)


def video_batch(out, cfg: TrainConfig) -> dict:
    """All the video pairs as one numpy batch of decoded pixels, as the trainer is handed them."""
    import pyarrow.parquet as pq

    from training.data import decode_batch, tensor_column

    table = decode_batch(pq.read_table(next(out.glob("pairs/motion_quality/*.parquet")),
                                       columns=["pair_id", "prompt", "video_w", "video_l"]), cfg.data, "video")
    return {"pair_id": table.column("pair_id").to_pylist(), "prompt": table.column("prompt").to_pylist(),
            "pixels_w": tensor_column(table, "pixels_w"), "pixels_l": tensor_column(table, "pixels_l")}


@pytest.mark.parametrize("model,expert", [("wan-t2v", None), ("wan-i2v", None), ("wan2.2-i2v", "low_noise")])
def test_video_dpo_steps_lower_the_loss_on_a_fixed_batch(video_pairs, tiny_kit, model, expert):
    from diffusers import DiffusionPipeline

    from training.train import PreferenceTrainer

    cfg = video_cfg(video_pairs, f"tiny:{model}", expert=expert)
    batch = video_batch(video_pairs, cfg)
    assert batch["pixels_w"].shape == (4, 3, VIDEO["frames"], VIDEO["size"], VIDEO["size"])
    trainer = PreferenceTrainer(DiffusionPipeline.from_pretrained(tiny_kit / model), cfg)
    assert trainer.latents(batch).shape == (8, 16, 3, 4, 4)  # cat([winners, losers]): 5-D video latents
    losses = [trainer.step(batch, torch.Generator().manual_seed(1))["loss"] for _ in range(5)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # LoRA starts at zero: policy == reference
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < math.log(2) - 0.01, losses


def test_video_pairs_share_noise_and_timestep_and_an_expert_trains_its_own_timesteps(tiny_kit, tmp_path):
    from diffusers import DiffusionPipeline

    from training.models import adapter_for

    latents = torch.randn(6, 16, 3, 4, 4)  # 3 pairs: winners, then losers
    for expert, inside in (("high_noise", lambda s: s >= 0.9), ("low_noise", lambda s: s < 0.9)):
        adapter = adapter_for(DiffusionPipeline.from_pretrained(tiny_kit / "wan2.2-i2v"))
        adapter.configure(video_cfg(tmp_path, "tiny:wan2.2-i2v", expert=expert))
        noisy, sigma, target = adapter.noise(latents, torch.Generator().manual_seed(0))
        noise = target + latents
        assert torch.equal(sigma[:3], sigma[3:]) and len(set(sigma[:3].tolist())) == 3  # per pair, shared in it
        assert torch.allclose(noise[:3], noise[3:], atol=1e-6) and not torch.allclose(noise[0], noise[1])
        s = sigma.view(-1, 1, 1, 1, 1)
        assert torch.allclose(noisy, (1 - s) * latents + s * noise, atol=1e-6)
        many = adapter.noise(torch.zeros(2000, 1, 1, 1, 1), torch.Generator().manual_seed(1))[1]
        assert inside(many).all()  # the pipeline hands this expert exactly these timesteps
        assert adapter.model is adapter.pipe.transformer if expert == "high_noise" else adapter.pipe.transformer_2


def test_i2v_conditioning_and_the_latent_cache_are_what_the_pipeline_builds(video_pairs, tiny_kit):
    """The first-frame condition (mask + latents, 20 channels), the CLIP embedding and the prompt embedding
    equal what WanImageToVideoPipeline hands its transformer; the latent cache's encoder stores the same."""
    import pyarrow as pa
    from diffusers import DiffusionPipeline
    from PIL import Image
    from ray.data.extensions import ArrowTensorArray

    from training.data import LatentEncoder, tensor_column
    from training.models import adapter_for

    cfg = video_cfg(video_pairs, "tiny:wan-i2v")
    batch = video_batch(video_pairs, cfg)
    pipe = DiffusionPipeline.from_pretrained(tiny_kit / "wan-i2v")
    pipe.set_progress_bar_config(disable=True)
    adapter = adapter_for(pipe)
    adapter.configure(cfg)
    seen = {}
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    first = ((batch["pixels_w"][0, :, 0].transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    pipe(image=Image.fromarray(first), prompt=batch["prompt"][0], num_frames=VIDEO["frames"], height=VIDEO["size"],
         width=VIDEO["size"], num_inference_steps=1, guidance_scale=1.0, max_sequence_length=32)

    ours = adapter.encode_conditions(torch.from_numpy(batch["pixels_w"][:1]))
    assert ours["condition"].shape == (1, 20, 3, 4, 4)
    assert torch.allclose(seen["hidden_states"][:, 16:], ours["condition"], atol=1e-5)
    assert torch.allclose(seen["encoder_hidden_states_image"], ours["image_embeds"], atol=1e-5)
    assert torch.allclose(seen["encoder_hidden_states"], adapter.encode_prompts(batch["prompt"][:1])["encoder_hidden_states"])

    table = pa.table({"pixels_w": ArrowTensorArray.from_numpy(batch["pixels_w"]),
                      "pixels_l": ArrowTensorArray.from_numpy(batch["pixels_l"])})
    cached = LatentEncoder(str(tiny_kit / "wan-i2v"))(table)
    pixels = torch.from_numpy(np.concatenate([batch["pixels_w"], batch["pixels_l"]]))
    fresh = {"latent": adapter.encode_images(pixels), **adapter.encode_conditions(pixels)}
    for name, tensor in fresh.items():
        stored = np.concatenate([tensor_column(cached, f"{name}_w"), tensor_column(cached, f"{name}_l")])
        assert np.allclose(stored, tensor.numpy(), atol=1e-5), name


def test_video_lora_dpo_with_ray_train_and_a_checkpoint_that_reloads(ray_session, video_pairs, tiny_kit, tmp_path):
    """The real entry: Ray Train, the video latent cache (I2V: with each video's first-frame conditioning),
    LoRA; the saved LoRA weights load back into the transformer through from_pretrained and PEFT."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    cfg = video_cfg(tmp_path, "tiny:wan-i2v", batch_size=2, max_steps=2, checkpoint_every=2, loss="poly", alpha=1.0)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"paths": [str(video_pairs)], "latent_cache": True})})
    result = train(cfg)
    assert result.metrics["step"] == 2
    rows = read_metrics(str(tmp_path / "v"))
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2) + 0.5, abs=1e-5)
    assert all(math.isfinite(float(r["grad_norm"])) for r in rows)
    with open(tmp_path / "v" / "seen" / "rank-0.csv") as f:
        seen = {p for r in csv.DictReader(f) for p in r["pair_ids"].split()}
    assert seen and all(p.startswith("video-") for p in seen)  # the image shard beside them is not read
    assert [p for p in (video_pairs / "latents").iterdir() if not p.name.startswith(".")]  # trained from the cache

    base = WanTransformer3DModel.from_pretrained(tiny_kit / "wan-i2v", subfolder="transformer")
    loaded = WanTransformer3DModel.from_pretrained(tiny_kit / "wan-i2v", subfolder="transformer")
    loaded.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    state = load_file(tmp_path / "v" / "final" / "transformer" / "lora.safetensors")
    assert not set_peft_model_state_dict(loaded, state).unexpected_keys
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in state.items())  # trained, not the zero init
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 36, 3, 4, 4, generator=gen), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 32, 32, generator=gen),
                  encoder_hidden_states_image=torch.randn(1, 257, 8, generator=gen), return_dict=False)
    with torch.no_grad():
        out_base, out_lora = base(**inputs)[0], loaded(**inputs)[0]
        loaded.disable_adapters()
        out_off = loaded(**inputs)[0]
    assert not torch.allclose(out_base, out_lora) and torch.equal(out_base, out_off)


def test_video_frame_counts_fail_before_training_in_one_line(video_pairs):
    from schemas.config import TrainData
    from training.data import TrainDataError, audit

    assert audit(TrainData(paths=[str(video_pairs)], num_frames=5), media="video").kept == 4
    with pytest.raises(TrainDataError, match=r"^4 video pairs have fewer than data.num_frames=13 frames \(shortest: 9\)"):
        audit(TrainData(paths=[str(video_pairs)], num_frames=13), media="video")


def test_a_two_expert_wan_without_expert_fails_before_starting_ray(tmp_path):
    from schemas.config import ConfigError

    with pytest.raises(ConfigError, match=r"^model tiny:wan2.2-i2v: the model has two experts .*set expert: high_noise "
                                          r"or low_noise, one run per expert$"):
        train(video_cfg(tmp_path, "tiny:wan2.2-i2v"))
