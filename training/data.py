"""Pair shards -> a Ray Dataset of training pairs: decoded, resized, center-cropped pixels in [-1, 1], or
the pairs' VAE latents from a latent cache that is built once, as a Ray Data stage, beside the shards.

Per-category mixture weights subsample categories so the stream follows the weights; agreement and
confidence filters drop weakly labelled pairs; an optional gap file adds each pair's target gap.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.store import shard_files
from schemas.config import TrainData
from schemas.pair import stable_hash
from workers.publish import owned_temps, publish_atomically, remove

COLUMNS = ["pair_id", "category", "prompt", "image_w", "image_l", "agreement", "confidence"]


def pair_files(data: TrainData) -> dict[str, list[str]]:
    """category -> its pair shards, over every output directory in `data.paths`."""
    files: dict[str, list[str]] = {}
    for root in data.paths:
        for f in shard_files(Path(root), "pairs"):
            if data.categories is None or f.parent.name in data.categories:
                files.setdefault(f.parent.name, []).append(str(f))
    if not files:
        raise FileNotFoundError(f"no pair shards under {data.paths} (categories: {data.categories or 'all'}); "
                                "run `pairforge run CONFIG` first")
    return files


def mixture_fractions(rows: dict[str, int], weights: dict[str, float] | None) -> dict[str, float]:
    """Share of each category's rows to keep so the kept rows follow `weights` (relative), subsampling
    every category but the scarcest relative to its weight. No weights: keep everything."""
    if not weights:
        return {c: 1.0 for c in rows}
    total_w = sum(weights[c] for c in rows)
    total_n = sum(rows.values())
    ratio = {c: (weights[c] / total_w) / (rows[c] / total_n) for c in rows if rows[c]}
    top = max(ratio.values())
    return {c: ratio.get(c, 0.0) / top for c in rows}


def to_pixels(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image -> (3, r, r) float32 in [-1, 1]: shorter side resized to r, then center-cropped."""
    from PIL import Image, ImageOps

    img = ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (resolution, resolution), Image.BICUBIC)
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def decode_batch(batch: pa.Table, resolution: int) -> dict:
    def pixels(col: str) -> np.ndarray:
        return np.stack([to_pixels(img["bytes"], resolution) for img in batch.column(col).to_pylist()])

    return {"pair_id": np.array(batch.column("pair_id").to_pylist(), dtype=object),
            "category": np.array(batch.column("category").to_pylist(), dtype=object),
            "prompt": np.array(batch.column("prompt").to_pylist(), dtype=object),
            "agreement": np.array(batch.column("agreement").to_pylist(), dtype=np.float64),
            "confidence": np.array(batch.column("confidence").to_pylist(), dtype=np.float64),
            "pixels_w": pixels("image_w"), "pixels_l": pixels("image_l")}


def keep(batch: pa.Table, data: TrainData) -> pa.Table:
    mask = pc.and_(pc.greater_equal(pc.fill_null(batch["agreement"], 0.0), data.min_agreement),
                   pc.greater_equal(pc.fill_null(batch["confidence"], 0.0), data.min_confidence))
    return batch.filter(mask)


def stack_pair(batch: dict, prefix: str):
    """cat([winners, losers]) of a numpy batch's `{prefix}_w` / `{prefix}_l` as one tensor. Ray hands out
    read-only arrays; np.concatenate makes the one writable copy torch needs."""
    import torch

    return torch.from_numpy(np.concatenate([batch[f"{prefix}_w"], batch[f"{prefix}_l"]]))


class LatentEncoder:
    """Ray Data actor: pixels -> VAE latents (the posterior mean, as the trainer would compute them)."""

    def __init__(self, model_path: str):
        from diffusers import DiffusionPipeline

        from training.models import adapter_for
        from workers.runtime import setup_worker

        setup_worker(1)
        self.adapter = adapter_for(DiffusionPipeline.from_pretrained(model_path))

    def __call__(self, batch: dict) -> dict:
        n = len(batch["pair_id"])
        pixels = stack_pair(batch, "pixels")
        del batch["pixels_w"], batch["pixels_l"]
        latents = self.adapter.encode_images(pixels).float().numpy()
        batch["latent_w"], batch["latent_l"] = latents[:n], latents[n:]
        return batch


def latent_cache(root: str, files: list[str], model_path: str, data: TrainData, num_gpus: float) -> Path:
    """`root/latents/<key>/`, built if missing: <key> names the model, the resolution and the exact set of
    shards, so new shards or another model get their own cache. Built under a temporary name and published
    in one rename (workers/publish.py), so a half-built cache is never read; builders of one key take turns
    under a file lock, which makes any temporary of that key a killed build's, removed before building."""
    import ray
    from filelock import FileLock

    key = stable_hash("latents", model_path, data.resolution, sorted((os.path.basename(f), os.path.getsize(f))
                                                                       for f in files))
    final = Path(root) / "latents" / key
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    owner = f"latents-{key}"
    with FileLock(str(final.parent / f".{key}.lock")):
        if final.exists():
            return final
        for stale in owned_temps(final.parent, owner):
            remove(stale)
        ds = ray.data.read_parquet(files, columns=COLUMNS)
        ds = ds.map_batches(decode_batch, fn_kwargs=dict(resolution=data.resolution), batch_format="pyarrow")
        ds = ds.map_batches(LatentEncoder, fn_constructor_kwargs=dict(model_path=model_path), batch_size=16,
                            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5, num_gpus=num_gpus)
        publish_atomically(final, owner, lambda tmp: ds.write_parquet(str(tmp)))
    return final


def attach_gaps(batch: pa.Table, gaps: dict[str, float]) -> pa.Table:
    return batch.append_column("gap", pa.array([gaps.get(p, np.nan) for p in batch.column("pair_id").to_pylist()],
                                               pa.float64()))


def training_pairs(data: TrainData, model_path: str, num_gpus: float = 0.0, seed: int = 0):
    """Streaming dataset of training pairs from the shards named by `data`, its blocks in a seeded random
    order (otherwise a mixture would arrive one category after another)."""
    import pyarrow.parquet as pq
    import ray
    from ray.data.expressions import col

    files = pair_files(data)
    rows = {c: sum(pq.ParquetFile(f).metadata.num_rows for f in fs) for c, fs in files.items()}
    if data.latent_cache:
        caches = [latent_cache(root, [f for fs in files.values() for f in fs if Path(f).is_relative_to(Path(root))],
                               model_path, data, num_gpus) for root in data.paths]
        cached = ray.data.read_parquet([str(c) for c in caches])
    parts = []
    for category, fraction in mixture_fractions(rows, data.categories).items():
        part = cached.filter(expr=col("category") == category) if data.latent_cache \
            else ray.data.read_parquet(files[category], columns=COLUMNS)
        parts.append(part if fraction >= 1.0 else part.random_sample(fraction, seed=0))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(keep, fn_kwargs=dict(data=data), batch_format="pyarrow")
    if not data.latent_cache:
        ds = ds.map_batches(decode_batch, fn_kwargs=dict(resolution=data.resolution), batch_format="pyarrow")
    if data.gap_file:
        gaps = pq.read_table(data.gap_file, columns=["pair_id", "gap"]).to_pydict()
        ds = ds.map_batches(attach_gaps, fn_kwargs=dict(gaps=dict(zip(gaps["pair_id"], gaps["gap"]))),
                            batch_format="pyarrow")
    return ds


def ingest_options():
    """Ray Train's default ingest options with preserve_order: streaming execution otherwise hands out
    blocks as their tasks finish, and the same seed and data would not give the same batches."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def pair_batches(iterator, batch_size: int, shuffle_buffer: int, seed: int):
    """Numpy batches of pairs from a Ray Data iterator (a worker's shard), shuffled locally."""
    return iterator.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                 local_shuffle_buffer_size=shuffle_buffer or None, local_shuffle_seed=seed)
