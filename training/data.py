"""Pair shards -> a Ray Dataset of training pairs: decoded, resized, center-cropped pixels in [-1, 1], or
the pairs' VAE latents from a latent cache that is built once, as a Ray Data stage, beside the shards.
Image models read `image_w` / `image_l` (PNG), video models `video_w` / `video_l` (MP4, decoded to the
first `num_frames` frames): the same `{bytes, path}` record layout.

Per-category mixture weights subsample categories so the stream follows the weights; label filters drop
weakly labelled pairs, each filter on the pairs whose label carries its field (`label_fields`); an
optional gap file adds each pair's target gap. `audit` streams the shards' label columns once before
training: what each filter drops per label source, and the pairs without a gap.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.store import shard_files
from schemas.config import TrainData
from schemas.pair import stable_hash
from workers.publish import owned_temps, publish_atomically, remove

log = logging.getLogger("pairforge.train")

MEDIA = {"image": ["image_w", "image_l"], "video": ["video_w", "video_l"]}  # media -> winner, loser columns
LABELS = ["label_source", "agreement", "confidence", "rewards", "ocr"]  # what the label filters read
CACHE_FORMAT = 2  # in the latent cache's key: 2 = rows carry the label fields (label_fields)
FILTERS = ("min_agreement", "min_confidence", "min_reward_margin", "ocr_exact")


class TrainDataError(ValueError):
    """The data cannot be trained on as configured; the message is one line saying what to do."""


def columns(media: str) -> list[str]:
    return ["pair_id", "category", "prompt", *MEDIA[media], *LABELS]


def shard_media(path: Path) -> str:
    """Whether a pair shard holds image or video pairs: its category's media (every shard has every column,
    and a video pair's `image_w` / `image_l` are the first frames it was animated from, not pairs to train an
    image model on); for a category this process has not registered, whether its videos are present."""
    import pyarrow.parquet as pq

    from schemas.category import registered

    category = registered().get(path.parent.name)
    if category is not None:
        return category.media
    names = pq.read_schema(path).names
    has_video = set(MEDIA["video"]) <= set(names) and \
        pq.read_table(path, columns=[MEDIA["video"][0]]).column(0).null_count < pq.ParquetFile(path).metadata.num_rows
    return "video" if has_video else "image"


def pair_files(data: TrainData, media: str = "image") -> dict[str, list[str]]:
    """category -> its pair shards with `media` (image or video pairs), over every output directory in
    `data.paths`; shards of the other media are left out (a video model trains on the video categories)."""

    files: dict[str, list[str]] = {}
    other = 0
    for root in data.paths:
        for f in shard_files(Path(root), "pairs"):
            if data.categories is None or f.parent.name in data.categories:
                if shard_media(f) == media:
                    files.setdefault(f.parent.name, []).append(str(f))
                else:
                    other += 1
    if not files:
        raise FileNotFoundError(f"no pair shards under {data.paths} (categories: {data.categories or 'all'}) with "
                                f"{media} columns {', '.join(MEDIA[media])} ({other} shards without them); "
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


def video_pixels(data: bytes, frames: int | None, width: int, height: int) -> np.ndarray:
    """Encoded video -> (3, F, height, width) float32 in [-1, 1]: its first `frames` frames (all when None),
    each resized to cover width x height and center-cropped, as images are."""
    from PIL import Image, ImageOps

    from workers.media import decode_video

    video, _ = decode_video(data)
    if frames is not None and len(video) < frames:
        raise TrainDataError(f"a video has {len(video)} frames, fewer than data.num_frames={frames}; "
                             "lower data.num_frames")
    if frames is None and len(video) % 4 != 1:
        raise TrainDataError(f"a video has {len(video)} frames, not 4k + 1 as Wan's VAE needs; set data.num_frames")
    fitted = [np.asarray(ImageOps.fit(Image.fromarray(f), (width, height), Image.BICUBIC), dtype=np.float32)
              for f in video[:frames]]
    return np.stack(fitted).transpose(3, 0, 1, 2) / 127.5 - 1.0


def media_size(data: TrainData, media: str) -> int | list:
    """What the pixels are cut to (named in the latent cache's key): the resolution for images, [frames,
    width, height] for videos."""
    if media == "image":
        return data.resolution
    return [data.num_frames, data.video_width or data.resolution, data.video_height or data.resolution]


def decode_batch(batch: pa.Table, data: TrainData, media: str = "image") -> pa.Table:
    """The images or videos -> `pixels_w` / `pixels_l` tensors; every other column passes as is (nulls kept)."""
    from ray.data.extensions import ArrowTensorArray

    if media == "image":
        def decode(b: bytes) -> np.ndarray:
            return to_pixels(b, data.resolution)
    else:
        def decode(b: bytes) -> np.ndarray:
            return video_pixels(b, *media_size(data, media))

    def pixels(col: str) -> ArrowTensorArray:
        decoded = [decode(item["bytes"]) for item in batch.column(col).to_pylist()]
        if len({x.shape for x in decoded}) > 1:
            raise TrainDataError(f"videos of different lengths in one batch ({sorted({x.shape[1] for x in decoded})} "
                                 "frames); set data.num_frames")
        return ArrowTensorArray.from_numpy(np.stack(decoded))

    winner, loser = MEDIA[media]
    return batch.drop_columns(MEDIA[media]).append_column("pixels_w", pixels(winner)) \
        .append_column("pixels_l", pixels(loser))


def label_fields(batch: pa.Table) -> pa.Table:
    """The nested label columns -> the flat fields the filters compare, null where a label lacks them:
    `reward_margin`, the winner's mean calibrated reward minus the loser's (CaPO: each image's expected
    win rate among the N under one reward model; best-of-N picks by their sum), and the OCR reads of
    winner and loser, `ocr_w_exact` and `ocr_l_ned`."""
    margins, w_exact, l_ned = [], [], []
    for rewards, ocr in zip(batch.column("rewards").to_pylist(), batch.column("ocr").to_pylist()):
        gaps = [r["calibrated_w"] - r["calibrated_l"] for r in rewards or []
                if r["calibrated_w"] is not None and r["calibrated_l"] is not None]
        margins.append(sum(gaps) / len(gaps) if gaps else None)
        reads = {r["side"]: r for r in ocr or []}
        w_exact.append(reads["w"]["exact"] if "w" in reads else None)
        l_ned.append(reads["l"]["ned"] if "l" in reads else None)
    return batch.drop_columns(["rewards", "ocr"]).append_column("reward_margin", pa.array(margins, pa.float64())) \
        .append_column("ocr_w_exact", pa.array(w_exact, pa.bool_())).append_column("ocr_l_ned", pa.array(l_ned, pa.float64()))


def filter_masks(batch: pa.Table, data: TrainData) -> dict[str, pa.ChunkedArray]:
    """filter -> which rows pass it (of a `label_fields` table). A filter applies to the pairs whose label
    carries its field and passes the rest: OCR-labelled pairs have no confidence, reward-labelled ones
    (best-of-N) neither agreement nor confidence, and a judge's confidence says nothing about them.
    `min_reward_margin` applies to reward-labelled pairs, `ocr_exact` to OCR-labelled ones: the winner
    reads exact and the loser's normalised edit distance is at least `min_ocr_loser_ned`."""
    def at_least(column: str, threshold: float) -> pa.ChunkedArray:
        return pc.fill_null(pc.greater_equal(batch[column], threshold), True)

    def only(source: str, passes: pa.ChunkedArray) -> pa.ChunkedArray:
        return pc.or_(pc.invert(pc.fill_null(pc.equal(batch["label_source"], source), False)), passes)

    ocr_ok = pc.and_(pc.fill_null(batch["ocr_w_exact"], True), at_least("ocr_l_ned", data.min_ocr_loser_ned))
    return {"min_agreement": at_least("agreement", data.min_agreement),
            "min_confidence": at_least("confidence", data.min_confidence),
            "min_reward_margin": only("reward", at_least("reward_margin", data.min_reward_margin)),
            "ocr_exact": only("ocr", ocr_ok)}


def keep(batch: pa.Table, data: TrainData) -> pa.Table:
    return batch.filter(functools.reduce(pc.and_, filter_masks(batch, data).values()))


def stack_pair(batch: dict, prefix: str):
    """cat([winners, losers]) of a numpy batch's `{prefix}_w` / `{prefix}_l` as one tensor. Ray hands out
    read-only arrays; np.concatenate makes the one writable copy torch needs."""
    import torch

    return torch.from_numpy(np.concatenate([batch[f"{prefix}_w"], batch[f"{prefix}_l"]]))


class LatentEncoder:
    """Ray Data actor: pixels -> VAE latents (the posterior mean, as the trainer would compute them), and
    for image-to-video models each video's first-frame conditioning (`condition_keys`) beside them."""

    def __init__(self, model_path: str):
        from diffusers import DiffusionPipeline

        from training.models import adapter_for
        from workers.runtime import setup_worker

        setup_worker(1)
        self.adapter = adapter_for(DiffusionPipeline.from_pretrained(model_path))

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch
        from ray.data.extensions import ArrowTensorArray

        pixels = torch.from_numpy(np.concatenate([tensor_column(batch, "pixels_w"), tensor_column(batch, "pixels_l")]))
        encoded = {"latent": self.adapter.encode_images(pixels)}
        if self.adapter.condition_keys:
            encoded.update(self.adapter.encode_conditions(pixels))
        n = batch.num_rows
        batch = batch.drop_columns(["pixels_w", "pixels_l"])
        for name, tensor in encoded.items():
            values = tensor.float().numpy()
            batch = batch.append_column(f"{name}_w", ArrowTensorArray.from_numpy(values[:n])) \
                .append_column(f"{name}_l", ArrowTensorArray.from_numpy(values[n:]))
        return batch


def tensor_column(batch: pa.Table, name: str) -> np.ndarray:
    return np.concatenate([chunk.to_numpy() for chunk in batch.column(name).chunks])


def latent_cache(root: str, files: list[str], model_path: str, data: TrainData, num_gpus: float,
                 media: str = "image") -> Path:
    """`root/latents/<key>/`, built if missing: <key> names the model, the size (resolution; for videos
    frames, width and height) and the exact set of shards, so new shards or another model get their own
    cache. Rows keep their label fields (unfiltered): the filters apply when training reads the cache. Built
    under a temporary name and published in one rename (workers/publish.py), so a half-built cache is never
    read; builders of one key take turns under a file lock, which makes any temporary of that key a killed
    build's, removed before building."""
    import ray
    from filelock import FileLock

    shards = sorted((os.path.basename(f), os.path.getsize(f)) for f in files)
    key = stable_hash("latents", CACHE_FORMAT, model_path, media_size(data, media), shards)
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
        ds = ray.data.read_parquet(files, columns=columns(media)).map_batches(label_fields, batch_format="pyarrow")
        ds = ds.map_batches(decode_batch, fn_kwargs=dict(data=data, media=media), batch_format="pyarrow")
        ds = ds.map_batches(LatentEncoder, fn_constructor_kwargs=dict(model_path=model_path), batch_size=16,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5,
                            num_gpus=num_gpus)
        publish_atomically(final, owner, lambda tmp: ds.write_parquet(str(tmp)))
    return final


def load_gaps(data: TrainData) -> dict[str, float] | None:
    """pair_id -> gap from `data.gap_file`, finite gaps only (a NaN gap is no gap). The whole file, in the
    driver, and shipped with the lookup stage: 10M gaps are ~1 GB of Python dict (see README, Training)."""
    if not data.gap_file:
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(data.gap_file, columns=["pair_id", "gap"])
    except (OSError, pa.ArrowInvalid) as e:
        raise TrainDataError(f"data.gap_file {data.gap_file}: cannot read pair_id and gap ({e}); "
                             "write it with `pairforge stats OUT` (OUT/arena/gaps.parquet)") from None
    table = table.filter(pc.fill_null(pc.is_finite(table["gap"]), False))
    return dict(zip(table.column("pair_id").to_pylist(), table.column("gap").to_pylist()))


def attach_gaps(batch: pa.Table, gaps: dict[str, float], drop_missing: bool) -> pa.Table:
    """Adds `gap`; pairs without one are dropped when asked, else NaN (`audit` has made sure there are
    none, and the trainer stops on a non-finite loss)."""
    batch = batch.append_column("gap", pa.array([gaps.get(p, np.nan) for p in batch.column("pair_id").to_pylist()],
                                                pa.float64()))
    return batch.filter(pc.is_finite(batch["gap"])) if drop_missing else batch


class DataAudit:
    """What the label filters and the gap lookup do to the pairs, per label source, before training."""

    SHOW_IDS = 5

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)  # source -> pairs, kept, <filter>, no_gap
        self.missing_ids: list[str] = []

    def add(self, batch: pa.Table, data: TrainData, gaps: dict[str, float] | None) -> None:
        masks = filter_masks(batch, data)
        kept = functools.reduce(pc.and_, masks.values())
        flags = {"kept": kept, **{name: pc.invert(m) for name, m in masks.items()}}
        if gaps is not None:
            has_gap = pa.array([p in gaps for p in batch.column("pair_id").to_pylist()], pa.bool_())
            flags["no_gap"] = pc.and_(kept, pc.invert(has_gap))
            room = self.SHOW_IDS - len(self.missing_ids)
            self.missing_ids += batch.filter(flags["no_gap"]).column("pair_id").slice(0, room).to_pylist()
        table = pa.table({"source": pc.fill_null(batch["label_source"], "none"), **flags})
        counts = table.group_by("source").aggregate([("source", "count"), *((f, "sum") for f in flags)])
        for row in counts.to_pylist():
            c = self.counts[row["source"]]
            c["pairs"] += row["source_count"]
            for f in flags:
                c[f] += row[f"{f}_sum"]

    @property
    def missing_gaps(self) -> int:
        return sum(c["no_gap"] for c in self.counts.values())

    @property
    def kept(self) -> int:
        return sum(c["kept"] for c in self.counts.values())

    def summary(self) -> str:
        """One line per label source: its pairs, those the filters keep, and what each filter dropped (a
        pair failing two filters counts under both)."""
        lines = []
        for source, c in sorted(self.counts.items()):
            dropped = ", ".join(f"{name} {c[name]}" for name in FILTERS if c[name])
            lines.append(f"{source}: {c['pairs']} pairs, {c['kept']} pass the filters"
                         + (f" (dropped by {dropped})" if dropped else ""))
        return "; ".join(lines)


def check_frames(files: list[str], data: TrainData) -> None:
    """Video pairs: fail before training, in one line, when the records' `frames` say a video is shorter
    than `data.num_frames`, or (num_frames unset) that the videos cannot be batched as they are."""
    import pyarrow.parquet as pq

    counts = Counter()
    for f in files:
        if "frames" in pq.read_schema(f).names:
            counts.update(c for c in pq.read_table(f, columns=["frames"]).column("frames").to_pylist() if c is not None)
    if not counts:
        return
    if data.num_frames is not None:
        short = sum(n for c, n in counts.items() if c < data.num_frames)
        if short:
            raise TrainDataError(f"{short} video pairs have fewer than data.num_frames={data.num_frames} frames "
                                 f"(shortest: {min(counts)}); lower data.num_frames")
    elif len(counts) > 1 or min(counts) % 4 != 1:
        raise TrainDataError(f"the video pairs have {', '.join(map(str, sorted(counts)))} frames; set data.num_frames "
                             f"(4k + 1, at most {min(counts)}) to train on the same first frames of each")


def audit(data: TrainData, gaps: dict[str, float] | None = None, media: str = "image") -> DataAudit:
    """Streams the shards' label columns (no images) through the filters and the gap lookup; logs what
    each filter drops per label source. Pairs without a gap: `missing_gap: error` raises TrainDataError
    naming how many and the first ids, `drop` logs the count (the pipeline drops them)."""
    import pyarrow.parquet as pq

    result = DataAudit()
    if media == "video":
        check_frames([f for fs in pair_files(data, media).values() for f in fs], data)
    for files in pair_files(data, media).values():
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["pair_id", *LABELS]):
                result.add(label_fields(pa.Table.from_batches([batch])), data, gaps)
    log.info("training data (before mixture sampling): %s", result.summary())
    if result.kept == 0:
        raise TrainDataError(f"no pair passes the data filters ({result.summary()}); lower data.min_agreement, "
                             "data.min_confidence, data.min_reward_margin or data.min_ocr_loser_ned")
    if result.missing_gaps:
        message = (f"{result.missing_gaps} of the {result.kept} pairs that pass the filters have no gap in "
                   f"data.gap_file {data.gap_file} (first: {', '.join(result.missing_ids)})")
        if data.missing_gap == "error":
            raise TrainDataError(f"{message}; re-run `pairforge stats OUT` to write gaps for every decided pair, "
                                 "or set data.missing_gap: drop to train without them")
        log.warning("%s: dropped (data.missing_gap: drop)", message)
    return result


def training_pairs(data: TrainData, model_path: str, num_gpus: float = 0.0, seed: int = 0,
                   gaps: dict[str, float] | None = None, media: str = "image"):
    """Streaming dataset of training pairs from the shards named by `data`, its blocks in a seeded random
    order (otherwise a mixture would arrive one category after another). `gaps`: `load_gaps(data)`, when
    the caller has it already. `media`: the model's (`training.models.model_media`)."""
    import pyarrow.parquet as pq
    import ray
    from ray.data.expressions import col

    files = pair_files(data, media)
    rows = {c: sum(pq.ParquetFile(f).metadata.num_rows for f in fs) for c, fs in files.items()}
    if data.latent_cache:
        caches = [latent_cache(root, [f for fs in files.values() for f in fs if Path(f).is_relative_to(Path(root))],
                               model_path, data, num_gpus, media) for root in data.paths]
        cached = ray.data.read_parquet([str(c) for c in caches])
    parts = []
    for category, fraction in mixture_fractions(rows, data.categories).items():
        part = cached.filter(expr=col("category") == category) if data.latent_cache \
            else ray.data.read_parquet(files[category], columns=columns(media)).map_batches(label_fields, batch_format="pyarrow")
        parts.append(part if fraction >= 1.0 else part.random_sample(fraction, seed=0))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(keep, fn_kwargs=dict(data=data), batch_format="pyarrow")
    if data.gap_file:
        ds = ds.map_batches(attach_gaps, fn_kwargs=dict(gaps=load_gaps(data) if gaps is None else gaps,
                                                        drop_missing=data.missing_gap == "drop"), batch_format="pyarrow")
    if not data.latent_cache:
        ds = ds.map_batches(decode_batch, fn_kwargs=dict(data=data, media=media), batch_format="pyarrow")
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
