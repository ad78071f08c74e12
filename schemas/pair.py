"""The pair-shard record: one pyarrow schema for decided pairs, one for pairs the labeler left undecided.

Category-specific columns come from the registered categories (`Category.record_fields`, schemas/category.py),
null where they do not apply: the built-ins give today's schema whatever the run's categories are.

Images are `{bytes, path}` structs, the layout Hugging Face `datasets` decodes as `Image()`; the schema
metadata carries the `datasets` features so `load_dataset("parquet", ...)` yields PIL images. Videos (the
video categories) are `{bytes, path}` structs of H.264 MP4 (workers/media.py), marked `Video()`; a video
pair's `image_w` / `image_l` hold the first frames its videos were animated from, and `frames` / `fps`
are set (null in image pairs).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

import pyarrow as pa

PIPELINE_VERSION = "0.1.0"

LABEL_SOURCES = ("vlm_panel", "ocr", "construction", "inherited", "reward", "vlm_score")
# The last three: score-labelled pairs (motion_quality) whose score gap is outside the configured band, or
# that a judge could not score.
UNDECIDED_REASONS = ("tie", "no_quorum", "conflict", "all_abstained", "gap_too_small", "gap_too_large", "unscored")

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
VIDEO = IMAGE  # the same {bytes, path} layout; `datasets` reads it as Video() (schema metadata)
GENERATOR = pa.struct([
    ("name", pa.string()),            # the generator's name in the run config
    ("model", pa.string()),           # model ref as configured (hub id, local path or tiny:<name>)
    ("seed", pa.int64()),
    ("steps", pa.int32()),
    ("guidance_scale", pa.float32()),
    ("params", pa.string()),          # JSON of every other pipeline call argument
])
VOTE = pa.struct([
    ("judge", pa.string()),
    ("order", pa.string()),           # "AB": image a shown first; "BA": swapped
    ("choice", pa.string()),          # the option the judge picked in that order, "A" | "B"; null = abstained
    ("logprob_a", pa.float64()),      # log-probability of the option token "A" (null when unavailable)
    ("logprob_b", pa.float64()),
    ("note", pa.string()),            # why it abstained, or the raw answer when it was parsed from text
])
REWARD = pa.struct([
    ("model", pa.string()), ("score_w", pa.float64()), ("score_l", pa.float64()),
    # best-of-N: CaPO calibrated rewards, each image's expected win-rate among the N under this model
    ("calibrated_w", pa.float64()), ("calibrated_l", pa.float64()),
])
CANDIDATE_SCORE = pa.struct([("model", pa.string()), ("score", pa.float64()), ("calibrated", pa.float64())])
CANDIDATE = pa.struct([            # best-of-N: every image drawn for the prompt, chosen or not (no pixels)
    ("generator", pa.string()),
    ("seed", pa.int64()),
    ("front", pa.int32()),            # its Pareto front by calibrated rewards, 0 = the upper front
    ("role", pa.string()),            # "w" / "l" for the two images of the pair, null for the rest
    ("rewards", pa.list_(CANDIDATE_SCORE)),
])
OCR_READ = pa.struct([
    ("side", pa.string()),            # "w" / "l" in pairs, "a" / "b" in undecided rows
    ("text", pa.string()),            # what the OCR engine read, in reading order
    ("exact", pa.bool_()),            # every required span is read as whole tokens (normalised, spaces ignored)
    ("ned", pa.float64()),            # normalised edit distance of the spans to their aligned tokens (0 = exact)
])
SCORE = pa.struct([                # a score judge's 1-10 distribution for one image (Z-Reward style)
    ("judge", pa.string()),
    ("side", pa.string()),            # "w" / "l" in pairs, "a" / "b" in undecided rows
    ("expected", pa.float64()),       # expected score; null when the judge's answer could not be read
    ("std", pa.float64()),            # its spread (standard deviation of the distribution)
    ("mass", pa.float64()),           # share of the judge's next-token distribution on a score (null over an endpoint)
    ("probs", pa.list_(pa.float64())),  # P(1), ..., P(10)
    ("note", pa.string()),            # why the score is missing
])

CASCADE_SMALL = pa.struct([       # a judge cascade's small-panel verdict (pipelines/voting.py), kept when it escalated too
    ("winner", pa.string()),          # "w" / "l" in pairs, "a" / "b" in undecided rows; null = it left the pair undecided
    ("lean", pa.string()),            # the image its pooled evidence favours, even when undecided (null: none)
    ("reason", pa.string()),          # why undecided, one of UNDECIDED_REASONS
    ("confidence", pa.float64()),     # its winner's probability
])
DECIDED_BY = ("cascade:small", "panel")  # which panel's verdict a panel label is (`decided_by`)

_COMMON_HEAD = [
    ("pair_id", pa.string()),
    ("category", pa.string()),
    ("prompt", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt_source", pa.string()),
]
_COMMON_TAIL = [
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("pipeline_version", pa.string()),
    ("config_hash", pa.string()),
]

_SCORES = ("scores", pa.list_(SCORE))     # categories with score_judges: each judge's score of each image


def __getattr__(name: str):
    """CATEGORIES / IMAGE_CATEGORIES: the registered categories' names (schemas/category.py), read when asked
    for, since the built-ins register on first use."""
    from schemas.category import registered

    if name == "CATEGORIES":
        return tuple(registered())
    if name == "IMAGE_CATEGORIES":
        return tuple(n for n, c in registered().items() if c.media == "image")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def detail_fields() -> list[tuple[str, pa.DataType]]:
    """Category-specific fields (each registered category's `record_fields`, in registration order), null
    where they do not apply, then `scores`."""
    from schemas.category import registered

    fields: dict[str, pa.DataType] = {}
    for category in registered().values():
        for name, typ in category.record_fields:
            if fields.setdefault(name, typ) != typ:
                raise ValueError(f"category {category.name!r}: record field {name!r} is {typ}, another category's "
                                 f"is {fields[name]}")
    return [*fields.items(), _SCORES]


def _video_fields(first: str, second: str) -> list[tuple[str, pa.DataType]]:
    """Video pairs' videos and their frame count and rate (null in image pairs)."""
    return [(f"video_{first}", VIDEO), (f"video_{second}", VIDEO), ("frames", pa.int32()), ("fps", pa.float32())]


def pair_fields(details: list | None = None) -> list[tuple[str, pa.DataType]]:
    return _COMMON_HEAD + [
        ("prompt_l", pa.string()),        # the prompt the loser was generated from, when it differs (alignment)
        ("image_w", IMAGE),
        ("image_l", IMAGE),
        ("generator_w", GENERATOR),
        ("generator_l", GENERATOR),
        ("width", pa.int32()),
        ("height", pa.int32()),
        *_video_fields("w", "l"),
        ("label_source", pa.string()),
        ("votes", pa.list_(VOTE)),
        ("agreement", pa.float64()),      # share of the judges with a verdict that chose the winner
        ("confidence", pa.float64()),     # the winner's probability, >= 0.5 (see pipelines/voting.py)
        ("decided_by", pa.string()),      # panel labels: one of DECIDED_BY; null for other label sources
        ("cascade_small", CASCADE_SMALL),  # categories with a cascade: the small panel's verdict
        ("rewards", pa.list_(REWARD)),
        ("reward_consistent", pa.bool_()),  # every reward model ranks the winner higher; null with < 2 rewards
        ("candidates", pa.list_(CANDIDATE)),  # best-of-N only: all N images with raw and calibrated rewards
    ] + (details if details is not None else detail_fields()) + _COMMON_TAIL


def undecided_fields(details: list | None = None) -> list[tuple[str, pa.DataType]]:
    return _COMMON_HEAD + [
        ("prompt_b", pa.string()),
        ("image_a", IMAGE),
        ("image_b", IMAGE),
        ("generator_a", GENERATOR),
        ("generator_b", GENERATOR),
        ("width", pa.int32()),
        ("height", pa.int32()),
        *_video_fields("a", "b"),
        ("reason", pa.string()),          # one of UNDECIDED_REASONS
        ("votes", pa.list_(VOTE)),
        ("decided_by", pa.string()),      # panel rows: the panel that left it undecided ("panel" with a cascade)
        ("cascade_small", CASCADE_SMALL),
    ] + (details if details is not None else detail_fields()) + _COMMON_TAIL


_IMAGE_COLUMNS = ("image_w", "image_l", "image_a", "image_b")
_VIDEO_COLUMNS = ("video_w", "video_l", "video_a", "video_b")


def _with_hf_features(fields) -> pa.Schema:
    from datasets import Features, Image, Video

    schema = pa.schema(fields)
    features = Features.from_arrow_schema(schema)
    for name in _IMAGE_COLUMNS:
        if name in features:
            features[name] = Image()
    for name in _VIDEO_COLUMNS:
        if name in features:
            features[name] = Video()
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})})


def pair_schema() -> pa.Schema:
    """The decided-pair record for the registered categories (built on the driver; workers get it passed)."""
    return _schema("pairs", tuple(detail_fields()))


def undecided_schema() -> pa.Schema:
    return _schema("undecided", tuple(detail_fields()))


@cache
def _schema(kind: str, details: tuple) -> pa.Schema:
    return _with_hf_features((pair_fields if kind == "pairs" else undecided_fields)(list(details)))


def stable_hash(*parts: object, length: int = 16) -> str:
    """Hex digest of the canonical JSON of `parts`: the same inputs give the same id on every machine."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def make_prompt_id(source: str, text: str) -> str:
    return stable_hash("prompt", source, text)


def make_pair_id(category: str, prompt_id: str, spec: dict) -> str:
    """`spec` holds everything that decides the pair's content (both sides' generator settings, seeds,
    prompt edits); re-running the same config yields the same ids, so finished pairs are skipped."""
    return stable_hash("pair", category, prompt_id, spec, length=24)


def validate_table(table: pa.Table, schema: pa.Schema) -> None:
    """Raise ValueError naming the first column that does not match `schema`."""
    names = set(table.schema.names)
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise ValueError(f"missing columns: {missing}")
    for f in schema:
        got = table.schema.field(f.name).type
        if got != f.type:
            raise ValueError(f"column {f.name!r}: expected {f.type}, got {got}")
    for col in ("pair_id", "category", "prompt_id"):
        if table.column(col).null_count:
            raise ValueError(f"column {col!r} has nulls")
