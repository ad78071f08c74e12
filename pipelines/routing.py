"""How prompts are routed to the run's categories (schemas/category.py; the built-ins in
pipelines/categories/)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas.category import Category, get_category
from schemas.config import RunConfig
from schemas.pair import stable_hash


def run_categories(cfg: RunConfig) -> dict[str, Category]:
    """The run's category objects by name, read from the registry on the driver and passed to the stages
    that need them (a worker's registry may lack a category defined in the driver's session)."""
    return {name: get_category(name) for name in cfg.categories}


def claims(category: str, cfg: RunConfig, row: dict) -> bool:
    """A category takes prompts from the sources it lists, else those whose hint names it."""
    sources = cfg.categories[category].sources
    return row["prompt_source"] in sources if sources else row.get("category_hint") == category


def route(row: dict, cfg: RunConfig, categories: dict[str, Category]) -> str | None:
    """The one category a prompt goes to: among the categories that claim it and whose filter accepts
    it (derived categories take pairs, not prompts), a stable pick by prompt id (so a prompt is never
    reused across categories, and a re-run routes it the same way)."""
    takers = [c for c in cfg.categories
              if not categories[c].derived and claims(c, cfg, row) and categories[c].accepts(row, cfg)]
    if not takers:
        return None
    return takers[int(stable_hash("route", row["prompt_id"]), 16) % len(takers)]


def route_batch(batch: pa.Table, cfg: RunConfig, categories: dict[str, Category]) -> pa.Table:
    rows = batch.drop_columns(["source_image"]).to_pylist()
    has_image = pc.is_valid(batch.column("source_image")).to_pylist()
    for row, image in zip(rows, has_image):  # filters see whether an image exists, without copying its bytes
        row["source_image"] = b"" if image else None
    return batch.append_column("category", pa.array([route(r, cfg, categories) for r in rows], pa.string()))
