"""The category recipes (one module per category) and how prompts are routed to them.

A recipe module has `accepts(row, cfg)` (its prompt filter), `plan(batch, cfg)` (prompts -> working
rows of pair specs) and `label(rows, cfg)` (finished rows -> pair / undecided / error records).
"""

from __future__ import annotations

import importlib

import pyarrow as pa
import pyarrow.compute as pc

from schemas.config import CATEGORY_NEEDS, RunConfig
from schemas.pair import stable_hash

RECIPES = {category: f"pipelines.{category}" for category in CATEGORY_NEEDS}


def recipe(category: str):
    if category not in RECIPES:
        raise ValueError(f"category {category!r} has no recipe yet (have: {', '.join(RECIPES)})")
    return importlib.import_module(RECIPES[category])


def claims(category: str, cfg: RunConfig, row: dict) -> bool:
    """A category takes prompts from the sources it lists, else those whose hint names it."""
    sources = cfg.categories[category].sources
    return row["prompt_source"] in sources if sources else row.get("category_hint") == category


def route(row: dict, cfg: RunConfig) -> str | None:
    """The one category a prompt goes to: among the categories that claim it and whose filter accepts
    it, a stable pick by prompt id (so a prompt is never reused across categories, and a re-run routes
    it the same way)."""
    takers = [c for c in cfg.categories if claims(c, cfg, row) and recipe(c).accepts(row, cfg)]
    if not takers:
        return None
    return takers[int(stable_hash("route", row["prompt_id"]), 16) % len(takers)]


def route_batch(batch: pa.Table, cfg: RunConfig) -> pa.Table:
    rows = batch.drop_columns(["source_image"]).to_pylist()
    has_image = pc.is_valid(batch.column("source_image")).to_pylist()
    for row, image in zip(rows, has_image):  # filters see whether an image exists, without copying its bytes
        row["source_image"] = b"" if image else None
    return batch.append_column("category", pa.array([route(r, cfg) for r in rows], pa.string()))
