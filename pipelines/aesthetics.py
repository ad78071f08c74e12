"""aesthetics (ViPO B.1): an existing image from a source dataset (Parquet or WebDataset, via a prompt
source with `image_field`) or generator A, against generator B on the same prompt; a panel of VLM
judges compares visual appeal, lighting, colour and polish; majority vote."""

from pipelines.ab_pairs import accepts_ab, label_panel, plan_ab

CATEGORY = "aesthetics"


def accepts(row: dict, cfg) -> bool:
    return accepts_ab(row, cfg, CATEGORY)


def plan(batch: dict, cfg):
    return plan_ab(batch, cfg, CATEGORY)


def label(rows: list[dict], cfg):
    return label_panel(rows, cfg, CATEGORY)
