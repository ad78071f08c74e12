"""The A-vs-B construction shared by composition, aesthetics and human_quality (ViPO B.1): two
generators on the same prompt and seed, or the prompt's existing image against one generator;
labelled by a VLM panel with the category's rubric. With best_of_n, N images per prompt and the
rewards choose the pair (CaPO calibration and Pareto fronts, pipelines/calibration.py)."""

from __future__ import annotations

import pyarrow as pa

from pipelines.records import Label, build_records, derive_seed, fit_image, plan_table, prompt_rows, side_spec
from pipelines.voting import panel_decision
from schemas.config import RunConfig


def accepts_ab(row: dict, cfg: RunConfig, category: str) -> bool:
    """With existing_images, only prompts that come with an image."""
    return not cfg.categories[category].existing_images or row.get("source_image") is not None


def plan_ab(batch: dict, cfg: RunConfig, category: str) -> pa.Table:
    ccfg = cfg.categories[category]
    planned = []
    for r in prompt_rows(batch):
        seed = derive_seed(cfg.seed, r["prompt_id"])
        if ccfg.best_of_n:
            planned.append({**r, "candidates": [
                side_spec(cfg, ccfg.generators[k % len(ccfg.generators)], r["prompt"],
                          derive_seed(cfg.seed, r["prompt_id"], f"candidate-{k}")) for k in range(ccfg.best_of_n)]})
            continue
        b = side_spec(cfg, ccfg.generators[-1], r["prompt"], seed)
        if ccfg.existing_images:
            image = fit_image(r["source_image"], cfg.generators[b["generator"]].width, cfg.generators[b["generator"]].height)
            planned.append({**r, "a": None, "b": b, "image_a": image})
        else:
            planned.append({**r, "a": side_spec(cfg, ccfg.generators[0], r["prompt"], seed), "b": b})
    return plan_table(cfg, category, planned)


def label_panel(rows: list[dict], cfg: RunConfig, category: str) -> pa.Table:
    """The panel's verdict, or for best-of-N rows the rewards' choice (its winner is already side a)."""
    ccfg = cfg.categories[category]
    if ccfg.best_of_n:
        return build_records(rows, cfg, lambda row: Label("a", "reward"))
    panel = cfg.panels[ccfg.panel]
    return build_records(rows, cfg, lambda row: panel_decision(row, panel))


def ab_recipe(category: str):
    """(accepts, plan, label) of an A-vs-B category, for its recipe module to expose."""
    return (lambda row, cfg: accepts_ab(row, cfg, category),
            lambda batch, cfg: plan_ab(batch, cfg, category),
            lambda rows, cfg: label_panel(rows, cfg, category))
