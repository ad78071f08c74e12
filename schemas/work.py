"""The work row: what a planned pair carries between the worker pools (pipelines/stages.py), typed.

Rows are Arrow all the way through: name lists are `list<string>`, a judge's votes are the stored
record's `VOTE` structs, OCR reads its `OCR_READ`s, score-judge scores its `SCORE`s (sides "a" / "b"
here; the record builder renames them to the winner's and loser's tags). Only the reward struct differs
from the record's, since a work row does not know its winner yet (`score_a` / `score_b`).

`PLANNED` are the columns a category's `plan` writes (`pipelines.records.plan_table`); `WRITTEN` the
ones the pools add or fill in. Each pool actor declares the columns it reads (`input_columns`; "x|y"
when either will do, as a judge reads images or videos) and writes (`output_columns`, which it may
also read back to append to), and `check_stages` proves, when the pipeline is built and before any
model loads, that every read is planned or written by an earlier stage.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.config import ConfigError
from schemas.pair import OCR_READ, SCORE, VOTE

NAMES = pa.list_(pa.string())
# A reward model's scores of the pair's two images (best-of-N: calibrated, once the rewards chose the pair).
WORK_REWARD = pa.struct([("model", pa.string()), ("score_a", pa.float64()), ("score_b", pa.float64()),
                         ("calibrated_a", pa.float64()), ("calibrated_b", pa.float64())])
# Best-of-N: one reward model's score of every candidate image, in candidate order (null: not scored).
CANDIDATE_SCORES = pa.struct([("model", pa.string()), ("scores", pa.list_(pa.float64()))])

PLANNED = {
    "pair_id": pa.string(), "category": pa.string(), "prompt": pa.string(), "prompt_id": pa.string(),
    "prompt_source": pa.string(),
    "gen_a": pa.string(), "gen_b": pa.string(),        # generator names; "" for an existing image
    "prompt_a": pa.string(), "prompt_b": pa.string(),  # prompt_b null until an LLM perturber writes it
    "seed_a": pa.int64(), "seed_b": pa.int64(),
    "image_a": pa.binary(),                            # an existing image (PNG), else drawn by a generator
    "judges": NAMES,                                   # the panel that votes on the pair (empty: none)
    "score_judges": NAMES, "reward_models": NAMES,
    "perturber": pa.string(), "edit_k": pa.int64(), "edit_dimensions": NAMES,
    "ocr_engine": pa.string(), "required_text": NAMES,
    "cand_gens": NAMES, "cand_seeds": pa.list_(pa.int64()),  # best-of-N candidates' generators and seeds
    "frame_a": pa.binary(), "frame_b": pa.binary(),    # video rows: the first frame each video starts from
    "frame_gen": pa.string(), "seed_frame": pa.int64(),  # ... or the image generator that draws it
    "parent_pair_id": pa.string(), "motion_prompt": pa.string(), "alignment_kind": pa.string(),
}
WRITTEN = {
    "image_a": pa.binary(), "image_b": pa.binary(), "video_a": pa.binary(), "video_b": pa.binary(),
    "frame_a": pa.binary(), "frame_b": pa.binary(), "cand_images": pa.list_(pa.binary()),
    "error_a": pa.string(), "error_b": pa.string(),    # why a side has no image / video / prompt
    "prompt_b": pa.string(), "edit_dimensions": NAMES,
    "ocr": pa.list_(OCR_READ), "votes": pa.list_(VOTE), "scores": pa.list_(SCORE),
    "rewards": pa.list_(WORK_REWARD), "cand_scores": pa.list_(CANDIDATE_SCORES),
    "stage_error": pa.string(),                        # the pool that failed on the row: an error record
}
WORK_COLUMNS = {**PLANNED, **WRITTEN}
PLANNED_SCHEMA = pa.schema(PLANNED)
# Columns too big to copy into the row dicts a category's decisions read (`work_rows`).
MEDIA = ("image_a", "image_b", "video_a", "video_b", "frame_a", "frame_b", "cand_images")


def work_array(name: str, values: list) -> pa.Array:
    """One work column from Python values, in its declared type (so a column of all nulls keeps it)."""
    return pa.array(values, WORK_COLUMNS[name])


def work_rows(batch: pa.Table) -> list[dict]:
    """A batch's rows as dicts, without the media columns."""
    return batch.drop_columns([c for c in MEDIA if c in batch.column_names]).to_pylist()


def check_stages(stages: list[tuple[str, type]]) -> None:
    """Raise ConfigError, in one line, unless every column each stage (name, actor class: in pipeline
    order) reads is planned or written by an earlier stage, and every column it names is a work column."""
    available, writers = set(PLANNED), {}
    for stage, actor in stages:
        named = [alt for c in (*actor.input_columns, *actor.output_columns) for alt in c.split("|")]
        unknown = [c for c in named if c not in WORK_COLUMNS]
        if unknown:
            raise ConfigError(f"pipeline: stage {stage} ({actor.__name__}) names {', '.join(unknown)}, not work columns: "
                              "declare them in schemas/work.py or fix the actor's input_columns / output_columns")
        missing = [c for c in actor.input_columns if not any(alt in available for alt in c.split("|"))]
        if missing:
            earlier = ", ".join(dict.fromkeys(writers.values())) or "none"
            raise ConfigError(f"pipeline: stage {stage} ({actor.__name__}) reads {', '.join(missing)}, which neither "
                              f"the planner nor an earlier stage (earlier: {earlier}) writes: put the stage that "
                              "writes it first in pipelines/stages.py WORKER_KINDS")
        for c in (*actor.output_columns, "stage_error"):
            available.add(c)
            writers.setdefault(c, stage)
