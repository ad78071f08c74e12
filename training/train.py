"""Ray Train Diffusion-DPO / Poly-DPO: `pairforge train CONFIG`.

A `TorchTrainer` runs `train_loop` on N workers (gloo on CPU, NCCL on GPU); each streams its shard of
the pairs (`ray.train.get_dataset_shard`). The policy starts from `model` and the frozen reference is
a copy of it; every `checkpoint_every` steps rank 0 saves the policy (`save_pretrained`) with the
optimizer state, and a restarted run resumes from the latest checkpoint. Metrics (loss, implicit
accuracy, reward margin, grad norm) go to Ray and to `OUTPUT/NAME/metrics.csv`.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path

from schemas.config import TrainConfig
from workers.runtime import WORKER_ENV, setup_worker

log = logging.getLogger("pairforge.train")

STATE_FILE = "trainer_state.pt"
METRICS = ["step", "loss", "implicit_acc", "reward_margin", "grad_norm", "lr"]


def load_policy_checkpoint(model, checkpoint_dir: str, subfolder: str):
    """Copy saved policy weights into `model` (same architecture)."""
    loaded = type(model).from_pretrained(checkpoint_dir, subfolder=subfolder)
    model.load_state_dict(loaded.state_dict())


def train_loop(config: dict) -> None:
    import ray.train
    import torch
    from diffusers import DiffusionPipeline

    from training.dpo import dpo_logits, pair_metrics, per_sample_mse, preference_loss
    from training.models import adapter_for

    cfg = TrainConfig.model_validate(config["cfg"])
    setup_worker(config.get("num_threads", 1))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    adapter = adapter_for(DiffusionPipeline.from_pretrained(config["model_path"]))
    adapter.pipe.to(device)
    policy = adapter.model
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate)

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            load_policy_checkpoint(policy, d, adapter.trainable)
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
    model = ray.train.torch.prepare_model(policy, move_to_device=False) if ctx.get_world_size() > 1 else policy
    noise_rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank + step)
    shard = ray.train.get_dataset_shard("train")

    while step < cfg.max_steps:
        batches = 0
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", drop_last=True):
            batches += 1
            pixels = torch.cat([torch.from_numpy(batch["pixels_w"]), torch.from_numpy(batch["pixels_l"])]).to(device)
            latents = adapter.encode_images(pixels)
            cond = adapter.encode_prompts(list(batch["prompt"])).repeat(2, 1, 1)
            noisy, t, target = adapter.noise(latents, noise_rng)
            err_w, err_l = per_sample_mse(adapter.predict(model, noisy, t, cond), target).chunk(2)
            with torch.no_grad():
                ref_w, ref_l = per_sample_mse(adapter.predict(reference, noisy, t, cond), target).chunk(2)
            logits = dpo_logits(err_w, err_l, ref_w, ref_l, cfg.beta)
            loss = preference_loss(logits, cfg.loss, cfg.alpha).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm=1.0)
            optimizer.step()
            step += 1
            metrics = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                       "lr": optimizer.param_groups[0]["lr"], **pair_metrics(logits.detach())}
            save = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
            with tempfile.TemporaryDirectory() as d:
                ckpt = None
                if save and rank == 0:
                    policy.save_pretrained(os.path.join(d, adapter.trainable))
                    torch.save({"optimizer": optimizer.state_dict(), "step": step}, os.path.join(d, STATE_FILE))
                    ckpt = ray.train.Checkpoint.from_directory(d)
                if rank == 0:
                    append_metrics(Path(config["metrics_csv"]), metrics)
                ray.train.report(metrics, checkpoint=ckpt)
            if step >= cfg.max_steps:
                break
        if batches == 0:
            raise ValueError(f"no training batch: fewer than batch_size={cfg.batch_size} pairs per worker "
                             "passed the data filters")


def append_metrics(path: Path, metrics: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRICS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(metrics)


def train(cfg: TrainConfig):
    """Fit (or resume) the run `cfg.name` under `cfg.output`; returns the Ray Train `Result`. The final
    policy is also copied to `OUTPUT/NAME/final/<trainable>` (loadable with `from_pretrained`)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.run import init_ray
    from training.data import pair_files, training_pairs
    from workers.tiny_models import resolve_model_ref

    for k, v in {**WORKER_ENV, **cfg.ray.env_vars}.items():
        os.environ.setdefault(k, v)
    model_path = resolve_model_ref(cfg.model)
    pair_files(cfg.data)  # fail before starting Ray when there is nothing to train on
    init_ray(cfg.ray)
    run_dir = Path(cfg.output).resolve() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model_path": model_path,
                           "metrics_csv": str(run_dir / "metrics.csv")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.resources_per_worker),
        run_config=RunConfig(name="ray", storage_path=str(run_dir),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": training_pairs(cfg.data)},
    )
    result = trainer.fit()
    if result.checkpoint:
        final = run_dir / "final"
        with result.checkpoint.as_directory() as d:
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(d, final)
    return result
