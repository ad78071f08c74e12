"""alignment (ViPO B.1): the prompt (or a caption) against a grounded perturbation of 1, 2 or 3 of 25
dimensions (P = 0.7 / 0.2 / 0.1); the same generator and seed draw both; the original wins by
construction. The perturbed prompt and the dimensions it changed are stored with the pair.

The lexicon perturber (pipelines/perturb.py) edits at planning time; the LLM perturber
(workers/perturber.py) is a worker pool that fills in `prompt_b` before generation."""

import pyarrow as pa
from pydantic import Field

from pipelines.perturb import draw_num_dimensions, perturb_lexicon
from pipelines.records import derive_seed, plan_table, prompt_rows, seeded_rng, side_spec
from schemas.category import Category, CategoryConfig, Label, register


class AlignmentConfig(CategoryConfig):
    perturber: str | None = Field(None, description="alignment: name in `perturbers`")


class Alignment(Category):
    name = "alignment"
    config = AlignmentConfig
    rubric = (
        "Judge TEXT-IMAGE ALIGNMENT only: which image shows every object, attribute, count, relation, action "
        "and style the prompt describes, with nothing contradicting it. Ignore aesthetics.")
    generators = (1, 1)
    required = ("perturber",)
    gold_sources = ("construction",)  # the image of the original prompt wins over the perturbed one's
    record_fields = (("edit_dimensions", pa.list_(pa.string())),)  # the dimensions the loser's prompt changed

    def plan(self, batch: dict, cfg):
        ccfg = cfg.categories[self.name]
        perturber = cfg.perturbers[ccfg.perturber]
        (generator,) = ccfg.generators
        planned = []
        for r in prompt_rows(batch):
            seed = derive_seed(cfg.seed, r["prompt_id"])
            rng = seeded_rng(cfg.seed, r["prompt_id"], "perturb")
            k = draw_num_dimensions(rng, perturber.dimension_probs)
            extra = {"perturber": ccfg.perturber, "edit_k": k, "judged": False}
            if perturber.kind == "lexicon":
                edited, dims = perturb_lexicon(r["prompt"], k, rng)
                extra.update(edit_dimensions=dims)
            else:
                edited = None  # written by the perturber pool
            planned.append({**r, **extra, "a": side_spec(cfg, generator, r["prompt"], seed),
                            "b": side_spec(cfg, generator, edited, seed)})
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg) -> Label:
        return Label("a", "construction", agreement=1.0, confidence=1.0)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        return {"edit_dimensions": row.get("edit_dimensions")}


register(Alignment())
