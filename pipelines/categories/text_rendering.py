"""text_rendering (ViPO B.1): text-centric prompts whose quoted text fits the character limits; two
generators drawn from a pool per prompt, same seed. Stage 1, OCR: an image whose OCR reads every
required span as whole tokens (`workers.ocr.read_check`) beats one with character errors. Stage 2,
when both read right or both wrong: the VLM panel with the text-rendering rubric. OCR reads and NED
are stored."""

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

    @staticmethod
    def ocr_winner(row: dict) -> str | None:
        """Stage 1: the side whose image alone reads every required span right (the OCR pool's `ocr`
        reads, sides "a" and "b"), or None when both or neither do, or nothing was read."""
        reads = {o["side"]: o["exact"] for o in row.get("ocr") or []}
        if len(reads) < 2 or reads["a"] == reads["b"]:
            return None
        return "a" if reads["a"] else "b"

    def wants_panel(self, row: dict) -> bool:
        return self.ocr_winner(row) is None  # OCR decided it: the panel's votes would not be used

    def label(self, row: dict, cfg) -> Label:
        """Stage 1: OCR decides when exactly one image reads right; stage 2: the panel."""
        winner = self.ocr_winner(row)
        if winner:
            return Label(winner, "ocr", agreement=1.0, confidence=None)
        return panel_decision(row, cfg, self.name)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        reads = {o["side"]: o for o in row.get("ocr") or []}
        return {"required_text": row.get("required_text"),
                "ocr": [{**reads[s], "side": tag} for tag, s in sides.items()] if reads else None}


register(TextRendering())
