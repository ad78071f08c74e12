"""Ray Train SFT and Diffusion-DPO / Poly-DPO: `pairforge train CONFIG`, on image models and Wan video models.

A `TorchTrainer` runs `train_loop` on N workers (gloo on CPU, NCCL on GPU); each streams its shard of
the pairs (`ray.train.get_dataset_shard`). Stage `sft` fits the denoising loss on winners; stage `dpo`
starts the policy and the frozen reference from `model` (or `init_checkpoint`, e.g. the SFT result).
Every `checkpoint_every` steps rank 0 saves the policy (`save_pretrained`, or the LoRA weights) with
the optimizer state and the data position, and a re-run of the same name resumes from the latest
checkpoint where its data left off. Metrics (loss, implicit accuracy, reward margin, grad norm) go to Ray
and to `OUTPUT/NAME/metrics.csv`; each worker's pairs per step to `OUTPUT/NAME/seen/rank-R.csv`.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from schemas.config import TrainConfig
from schemas.pair import stable_hash
from training.data import pair_batches, stack_pair
from training.dpo import dpo_logits, pair_metrics, per_sample_mse, preference_loss
from training.models import adapter_for, repeat_cond
from workers.publish import publish_atomically
from workers.runtime import WORKER_ENV, setup_worker

log = logging.getLogger("pairforge.train")

STATE_FILE = "trainer_state.pt"
LORA_FILE = "lora.safetensors"
METRICS = ["step", "loss", "implicit_acc", "reward_margin", "grad_norm", "lr", "step_s"]
SEEN = ["step", "epoch", "batch", "pair_ids"]  # OUTPUT/NAME/seen/rank-R.csv: the pairs of each step (batch: in the epoch)


class NonFiniteLoss(FloatingPointError):
    """A step's loss or gradient is NaN or infinite; raised before the optimizer applies it."""


class TrainingHalted(RuntimeError):
    """Training stopped for a reason the message states in one line (e.g. a non-finite loss at step N)."""


class PreferenceTrainer:
    """One model being trained: the policy, the reference, the optimizer and one step of either stage."""

    def __init__(self, pipe, cfg: TrainConfig, device: str = "cpu"):
        self.cfg, self.device = cfg, device
        self.adapter = adapter_for(pipe)
        self.adapter.configure(cfg)
        pipe.to(device)
        self.policy = self.adapter.model
        if cfg.init_checkpoint:
            load_trainable(self.policy, cfg.init_checkpoint, self.adapter.trainable)
        self.reference = None
        if cfg.lora_rank:
            from peft import LoraConfig

            self.policy.requires_grad_(False)
            self.policy.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                               init_lora_weights="gaussian", target_modules=self.adapter.lora_targets))
        elif cfg.stage == "dpo":
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
            self.policy.requires_grad_(True)
        else:
            self.policy.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.policy.enable_gradient_checkpointing()
        self.policy.train()
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate)
        self.model = self.policy  # what forward passes use; wrapped in DDP by prepare_model on N workers

    @contextmanager
    def reference_model(self):
        """The frozen reference: its own copy, or with LoRA the policy with its adapters disabled."""
        if self.reference is not None:
            yield self.reference
            return
        self.policy.disable_adapters()
        try:
            yield self.model
        finally:
            self.policy.enable_adapters()

    def _autocast(self):
        if self.cfg.mixed_precision == "bf16" and self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def latents(self, batch: dict) -> torch.Tensor:
        """cat([winners, losers]) latents, from the latent cache or encoded on the fly."""
        if "latent_w" in batch:
            return stack_pair(batch, "latent").to(self.device)
        return self.adapter.encode_images(stack_pair(batch, "pixels").to(self.device))

    def media_conditions(self, batch: dict) -> dict:
        """cat([winners, losers]) of each video's own conditioning (image-to-video: its first frame), from
        the latent cache or computed on the fly; {} for models conditioned on the prompt alone."""
        keys = self.adapter.condition_keys
        if not keys:
            return {}
        if "latent_w" in batch:
            return {k: stack_pair(batch, k).to(self.device) for k in keys}
        return self.adapter.encode_conditions(stack_pair(batch, "pixels").to(self.device))

    def loss(self, batch: dict, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        a, cfg = self.adapter, self.cfg
        latents = self.latents(batch)
        cond = a.encode_prompts(list(batch["prompt"]))
        media = self.media_conditions(batch)
        with self._autocast():
            if cfg.stage == "sft":
                winners = latents[: latents.shape[0] // 2]
                cond.update({k: v[: v.shape[0] // 2] for k, v in media.items()})
                noisy, t, target = a.noise(winners, rng, paired=False)
                loss = per_sample_mse(a.predict(self.model, noisy, t, cond), target).mean()
                return loss, {}
            cond = {**repeat_cond(cond, 2), **media}
            noisy, t, target = a.noise(latents, rng, paired=True)
            err_w, err_l = per_sample_mse(a.predict(self.model, noisy, t, cond), target).chunk(2)
            with torch.no_grad(), self.reference_model() as reference:
                ref_w, ref_l = per_sample_mse(a.predict(reference, noisy, t, cond), target).chunk(2)
        logits = dpo_logits(err_w, err_l, ref_w, ref_l, cfg.beta)
        if cfg.loss == "fine":
            gap = torch.as_tensor(batch["gap"], dtype=logits.dtype, device=logits.device)
            loss = ((cfg.gap_scale * gap - logits) ** 2).mean()
        else:
            loss = preference_loss(logits, cfg.loss, cfg.alpha).mean()
        return loss, pair_metrics(logits.detach())

    def step(self, batch: dict, rng: torch.Generator) -> dict:
        """One optimizer step. A NaN or infinite loss or gradient raises NonFiniteLoss before the optimizer
        runs: one such step would turn every weight into NaN."""
        loss, metrics = self.loss(batch, rng)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm=1.0)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLoss(f"the gradient norm is {grad_norm.item()} (loss {loss.item():.6g})")
        self.optimizer.step()
        return {"loss": loss.item(), "grad_norm": grad_norm.item(), "lr": self.optimizer.param_groups[0]["lr"], **metrics}

    def save(self, directory: str, step: int, position: dict | None = None) -> None:
        """The trainable weights (`save_pretrained`, or LoRA weights as a safetensors state dict), the
        optimizer state and the data position (`train_loop`)."""
        if self.cfg.lora_rank:
            from peft.utils import get_peft_model_state_dict
            from safetensors.torch import save_file

            os.makedirs(os.path.join(directory, self.adapter.trainable), exist_ok=True)
            save_file(get_peft_model_state_dict(self.policy), os.path.join(directory, self.adapter.trainable, LORA_FILE))
        else:
            self.policy.save_pretrained(os.path.join(directory, self.adapter.trainable))
        torch.save({"optimizer": self.optimizer.state_dict(), "step": step, "data": position},
                   os.path.join(directory, STATE_FILE))

    def restore(self, directory: str) -> tuple[int, dict]:
        """The saved weights and optimizer state; returns (step, data position). A checkpoint from before
        positions were saved resumes at the start of epoch 0 (what such runs did)."""
        if self.cfg.lora_rank:
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.policy, load_file(os.path.join(directory, self.adapter.trainable, LORA_FILE)))
        else:
            load_trainable(self.policy, directory, self.adapter.trainable)
        state = torch.load(os.path.join(directory, STATE_FILE), map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        return state["step"], state.get("data") or {"epoch": 0, "pairs": 0, "seed": self.cfg.seed}


def load_trainable(model: torch.nn.Module, checkpoint_dir: str, subfolder: str) -> None:
    """Copy saved weights of the same architecture into `model`."""
    loaded = type(model).from_pretrained(checkpoint_dir, subfolder=subfolder)
    model.load_state_dict(loaded.state_dict())


def seed_for(*parts) -> int:
    """A 60-bit seed from the run seed and a position (rank, epoch or step): the same on every machine."""
    return int(stable_hash(*parts, length=15), 16)


def train_loop(config: dict) -> None:
    """One worker. The data position (epoch, pairs consumed in it, the seed of its order) is saved with
    every checkpoint; a resumed worker replays its epoch's order and skips the batches already trained on,
    so it sees the rest of the epoch in the order an uninterrupted run would. Each step's noise comes from
    (seed, rank, step): a resumed step draws what it would have drawn."""
    import ray.train
    from diffusers import DiffusionPipeline

    cfg = TrainConfig.model_validate(config["cfg"])
    setup_worker(config.get("num_threads", 1))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    trainer = PreferenceTrainer(DiffusionPipeline.from_pretrained(config["model_path"]), cfg, device)
    step, position = 0, {"epoch": 0, "pairs": 0, "seed": cfg.seed}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            step, position = trainer.restore(d)
        check_position(position, cfg, rank)
    seen_csv = Path(config["run_dir"]) / "seen" / f"rank-{rank}.csv"
    for log_file in (seen_csv, Path(config["run_dir"]) / "metrics.csv") if rank == 0 else (seen_csv,):
        truncate_log(log_file, step)  # steps after the checkpoint were trained on by weights that are gone
    if ctx.get_world_size() > 1:
        trainer.model = ray.train.torch.prepare_model(trainer.policy, move_to_device=False)
    shard = ray.train.get_dataset_shard("train")

    while step < cfg.max_steps:
        epoch, skip = position["epoch"], position["pairs"] // cfg.batch_size
        batches = 0
        tick = time.perf_counter()
        for batch in pair_batches(shard, cfg.batch_size, cfg.data.shuffle_buffer, seed=seed_for("order", cfg.seed, rank, epoch)):
            batches += 1
            if batches <= skip:  # trained on before the checkpoint this run resumed from
                continue
            noise = torch.Generator().manual_seed(seed_for("noise", cfg.seed, rank, step))
            try:
                metrics = {"step": step + 1, **trainer.step(batch, noise)}
            except NonFiniteLoss as e:
                raise TrainingHalted(
                    f"training stopped at step {step + 1}: {e} (pairs {', '.join(map(str, batch['pair_id'][:4]))}); "
                    "the step was not applied and no checkpoint holds it; check the batch's gaps and images, or "
                    "lower learning_rate or beta") from None
            metrics["step_s"], tick = time.perf_counter() - tick, time.perf_counter()  # data wait + step
            step += 1
            position = {"epoch": epoch, "pairs": batches * cfg.batch_size, "seed": cfg.seed}
            append_row(seen_csv, SEEN, {"step": step, "epoch": epoch, "batch": batches,
                                        "pair_ids": " ".join(map(str, batch["pair_id"]))})
            if rank == 0:
                append_row(Path(config["run_dir"]) / "metrics.csv", METRICS, metrics)
            save = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
            if save or step % cfg.report_every == 0:  # a report is a round trip to the controller: not every step
                with tempfile.TemporaryDirectory() as d:
                    ckpt = None
                    if save and rank == 0:
                        trainer.save(d, step, position)
                        ckpt = ray.train.Checkpoint.from_directory(d)
                    ray.train.report(metrics, checkpoint=ckpt)
            if step >= cfg.max_steps:
                break
        if batches == 0:
            raise ValueError(f"no training batch: fewer than batch_size={cfg.batch_size} pairs per worker "
                             "passed the data filters")
        if step < cfg.max_steps:
            position = {"epoch": epoch + 1, "pairs": 0, "seed": cfg.seed}


def check_position(position: dict, cfg: TrainConfig, rank: int) -> None:
    """Warn where a resumed run cannot continue the checkpoint's data order exactly."""
    if rank != 0:
        return
    if position["seed"] != cfg.seed:
        log.warning("resuming a run with seed %s under seed %s: epoch %s is shuffled anew, and its first %s pairs "
                    "of the new order are skipped", position["seed"], cfg.seed, position["epoch"], position["pairs"])
    if position["pairs"] % cfg.batch_size:
        log.warning("batch_size changed to %s: epoch %s resumes after %s pairs, not %s", cfg.batch_size,
                    position["epoch"], position["pairs"] // cfg.batch_size * cfg.batch_size, position["pairs"])


def append_row(path: Path, fields: list[str], row: dict) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_log(path: Path, step: int) -> None:
    """Drop a per-step CSV's rows after `step`, atomically (workers/publish.py)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["step"]) <= step]
    if len(kept) < len(rows):
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(kept)

        publish_atomically(path, "trainlog", write, replace=True)


def train(cfg: TrainConfig):
    """Fit (or resume) the run `cfg.name` under `cfg.output`; returns the Ray Train `Result`. The final
    weights are also copied to `OUTPUT/NAME/final/<unet|transformer|transformer_2>`. Raises TrainDataError
    before starting Ray when the data cannot be trained on, ConfigError when the model cannot be trained as
    configured (a two-expert Wan2.2 without `expert`), TrainingHalted when a step's loss is not finite."""
    import ray.train
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.run import init_ray
    from schemas.config import ConfigError
    from training.data import audit, ingest_options, load_gaps, training_pairs
    from training.models import model_media, pipeline_config
    from workers.model_refs import resolve_model_ref

    for k, v in {**WORKER_ENV, **cfg.ray.env_vars}.items():
        os.environ.setdefault(k, v)
    model_path = resolve_model_ref(cfg.model)
    try:
        media = model_media(pipeline_config(model_path), cfg.expert)
    except ValueError as e:
        raise ConfigError(f"model {cfg.model}: {e}") from None
    gaps = load_gaps(cfg.data)
    audit(cfg.data, gaps, media)  # fail before starting Ray when there is nothing to train on, or a gap is missing
    init_ray(cfg.ray)
    run_dir = Path(cfg.output).resolve() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "model_path": model_path,
                           "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.resources_per_worker),
        run_config=RunConfig(name="ray", storage_path=str(run_dir),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": training_pairs(cfg.data, model_path, num_gpus=1.0 if cfg.use_gpu else 0.0, seed=cfg.seed,
                                          gaps=gaps, media=media)},
        dataset_config=DataConfig(execution_options=ingest_options()),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        halted = [f for f in getattr(e, "worker_failures", {}).values() if isinstance(f, TrainingHalted)]
        if halted:
            raise TrainingHalted(str(halted[0])) from None
        raise
    if result.checkpoint:
        final = run_dir / "final"
        with result.checkpoint.as_directory() as d:
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(d, final)
    return result
