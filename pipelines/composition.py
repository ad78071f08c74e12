"""composition (ViPO B.1): generator A vs generator B on the same prompt and seed; a panel of VLM
judges compares layout, counts, relative positions and framing; majority vote."""

from __future__ import annotations

from pipelines.records import build_records, derive_seed, plan_columns, side_spec
from pipelines.voting import panel_decider
from schemas.config import RunConfig

CATEGORY = "composition"
LABEL_SOURCE = "vlm_panel"


def plan(batch: dict, cfg: RunConfig) -> dict:
    gen_a, gen_b = cfg.categories[CATEGORY].generators
    sides = []
    for prompt, prompt_id in zip(batch["prompt"], batch["prompt_id"]):
        seed = derive_seed(cfg.seed, prompt_id)
        sides.append((side_spec(cfg, gen_a, prompt, seed), side_spec(cfg, gen_b, prompt, seed)))
    return plan_columns(batch, cfg, CATEGORY, sides)


def label(rows: list[dict], cfg: RunConfig):
    return build_records(rows, cfg, LABEL_SOURCE, panel_decider(cfg.panels[cfg.categories[CATEGORY].panel]))
