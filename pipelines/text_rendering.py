"""text_rendering (ViPO B.1): text-centric prompts whose quoted text fits the character limits; two
generators drawn from a pool per prompt, same seed. Stage 1, OCR: an image whose OCR reads every
required span as whole tokens (`workers.ocr.read_check`) beats one with character errors. Stage 2,
when both read right or both wrong: the VLM panel with the text-rendering rubric. OCR reads and NED
are stored."""

import json

from pipelines.records import Label, build_records, derive_seed, plan_table, prompt_rows, seeded_rng, side_spec
from pipelines.voting import panel_decision
from workers.ocr import quoted_spans

CATEGORY = "text_rendering"


def accepts(row: dict, cfg) -> bool:
    ccfg = cfg.categories[CATEGORY]
    spans = quoted_spans(row["prompt"])
    return bool(spans) and all(ccfg.min_text_chars <= len(s) <= ccfg.max_text_chars for s in spans)


def plan(batch: dict, cfg):
    ccfg = cfg.categories[CATEGORY]
    planned = []
    for r in prompt_rows(batch):
        seed = derive_seed(cfg.seed, r["prompt_id"])
        gen_a, gen_b = (str(g) for g in seeded_rng(cfg.seed, r["prompt_id"], "pool").choice(
            ccfg.generators, size=2, replace=False))
        planned.append({**r, "ocr_engine": ccfg.ocr, "required_text": quoted_spans(r["prompt"]),
                        "a": side_spec(cfg, gen_a, r["prompt"], seed), "b": side_spec(cfg, gen_b, r["prompt"], seed)})
    return plan_table(cfg, CATEGORY, planned)


def label(rows: list[dict], cfg):
    panel = cfg.panels[cfg.categories[CATEGORY].panel]

    def decide(row: dict) -> Label:
        ocr = json.loads(row["ocr"]) if row.get("ocr") else None
        if ocr and ocr["exact_a"] != ocr["exact_b"]:
            winner = "a" if ocr["exact_a"] else "b"
            return Label(winner, "ocr", agreement=1.0, confidence=None)
        return panel_decision(row, panel)

    return build_records(rows, cfg, decide)
