"""composition (ViPO B.1): generator A vs generator B on the same prompt and seed (or the prompt's
existing image vs a generator); a panel of VLM judges compares layout, counts, relative positions and
framing; majority vote."""

from pipelines.ab_pairs import accepts_ab, label_panel, plan_ab

CATEGORY = "composition"


def accepts(row: dict, cfg) -> bool:
    return accepts_ab(row, cfg, CATEGORY)


def plan(batch: dict, cfg):
    return plan_ab(batch, cfg, CATEGORY)


def label(rows: list[dict], cfg):
    return label_panel(rows, cfg, CATEGORY)
