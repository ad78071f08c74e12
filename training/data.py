"""Pair shards -> a Ray Dataset of training pairs (decoded, resized, center-cropped pixels in [-1, 1])."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.store import shard_files
from schemas.config import TrainData

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
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = resolution / min(img.size)
    img = img.resize((max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))),
                     Image.BICUBIC)
    left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5) - 1.0


def decode_batch(batch: pa.Table, resolution: int) -> dict:
    def pixels(col: str) -> np.ndarray:
        return np.stack([to_pixels(img["bytes"], resolution) for img in batch.column(col).to_pylist()])

    return {"pair_id": np.array(batch.column("pair_id").to_pylist(), dtype=object),
            "prompt": np.array(batch.column("prompt").to_pylist(), dtype=object),
            "pixels_w": pixels("image_w"), "pixels_l": pixels("image_l")}


def keep(batch: pa.Table, data: TrainData) -> pa.Table:
    mask = pc.and_(pc.greater_equal(pc.fill_null(batch["agreement"], 0.0), data.min_agreement),
                   pc.greater_equal(pc.fill_null(batch["confidence"], 0.0), data.min_confidence))
    return batch.filter(mask)


def training_pairs(data: TrainData):
    """Streaming dataset of decoded pairs from the shards named by `data`."""
    import pyarrow.parquet as pq
    import ray

    files = pair_files(data)
    rows = {c: sum(pq.ParquetFile(f).metadata.num_rows for f in fs) for c, fs in files.items()}
    parts = []
    for category, fraction in mixture_fractions(rows, data.categories).items():
        part = ray.data.read_parquet(files[category], columns=COLUMNS)
        parts.append(part if fraction >= 1.0 else part.random_sample(fraction, seed=0))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.map_batches(keep, fn_kwargs=dict(data=data), batch_format="pyarrow")
    return ds.map_batches(decode_batch, fn_kwargs=dict(resolution=data.resolution), batch_format="pyarrow")
