"""Ray Train Diffusion-DPO on real pair shards: checkpoints reload with from_pretrained, runs resume."""

import csv
import math

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
