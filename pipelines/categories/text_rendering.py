"""text_rendering (ViPO B.1): text-centric prompts whose quoted text fits the character limits; two
generators drawn from a pool per prompt, same seed. Stage 1, OCR: an image whose OCR reads every
required span as whole tokens (`workers.ocr.read_check`) beats one with character errors. Stage 2,
when both read right or both wrong: the VLM panel with the text-rendering rubric. OCR reads and NED
are stored."""

import json

import pyarrow as pa
from pydantic import Field

from pipelines.records import derive_seed, plan_table, prompt_rows, seeded_rng, side_spec
from pipelines.voting import panel_decision
from schemas.category import Category, CategoryConfig, Label, register
from schemas.pair import OCR_READ
from workers.ocr import quoted_spans


class TextRenderingConfig(CategoryConfig):
    ocr: str | None = Field(None, description="text_rendering: name in `ocr`")
    min_text_chars: int = Field(2, ge=1, description="text_rendering: shortest text to render (characters)")
    max_text_chars: int = Field(40, ge=1, description="text_rendering: longest text to render (characters)")


class TextRendering(Category):
    name = "text_rendering"
    config = TextRenderingConfig
    rubric = (
        "Judge TEXT RENDERING only: the text the prompt asks for must appear spelled exactly, legible, complete "
        "and on the intended surface. Prefer correct spelling over style; penalise extra or garbled glyphs.")
    generators = (2, None)
    required = ("panel", "ocr")
    gold_sources = ("ocr",)  # one image reads the required text exactly, the other does not
    record_fields = (("required_text", pa.list_(pa.string())),  # the spans the image must show
                     ("ocr", pa.list_(OCR_READ)))               # both images' OCR reads
    prompt_filter = "quoted text"

    def accepts(self, row: dict, cfg) -> bool:
        ccfg = cfg.categories[self.name]
        spans = quoted_spans(row["prompt"])
        return bool(spans) and all(ccfg.min_text_chars <= len(s) <= ccfg.max_text_chars for s in spans)

    def plan(self, batch: dict, cfg):
        ccfg = cfg.categories[self.name]
        planned = []
        for r in prompt_rows(batch):
            seed = derive_seed(cfg.seed, r["prompt_id"])
            gen_a, gen_b = (str(g) for g in seeded_rng(cfg.seed, r["prompt_id"], "pool").choice(
                ccfg.generators, size=2, replace=False))
            planned.append({**r, "ocr_engine": ccfg.ocr, "required_text": quoted_spans(r["prompt"]),
                            "a": side_spec(cfg, gen_a, r["prompt"], seed), "b": side_spec(cfg, gen_b, r["prompt"], seed)})
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg) -> Label:
        """Stage 1: OCR decides when exactly one image reads right; stage 2: the panel."""
        ocr = json.loads(row["ocr"]) if row.get("ocr") else None
        if ocr and ocr["exact_a"] != ocr["exact_b"]:
            return Label("a" if ocr["exact_a"] else "b", "ocr", agreement=1.0, confidence=None)
        return panel_decision(row, cfg.panels[cfg.categories[self.name].panel])

    def record_values(self, row: dict, sides: dict[str, str]) -> dict:
        ocr = json.loads(row["ocr"]) if row.get("ocr") else None
        return {"required_text": json.loads(row["required_text"]) if row.get("required_text") else None,
                "ocr": [{"side": tag, "text": ocr[f"text_{s}"], "exact": ocr[f"exact_{s}"], "ned": ocr[f"ned_{s}"]}
                        for tag, s in sides.items()] if ocr else None}


register(TextRendering())
