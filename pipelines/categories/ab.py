"""The A-vs-B construction shared by composition, aesthetics and human_quality (ViPO B.1): two
generators on the same prompt and seed, or the prompt's existing image against one generator;
labelled by a VLM panel with the category's rubric. With best_of_n, N images per prompt and the
rewards choose the pair (CaPO calibration and Pareto fronts, pipelines/calibration.py).

A new A-vs-B image category subclasses `ABCategory` with a name and a rubric (and, if it filters
prompts, `accepts`)."""

from __future__ import annotations

import pyarrow as pa

from pipelines.records import derive_seed, fit_image, plan_table, prompt_rows, side_spec
from pipelines.voting import panel_decision
from schemas.category import Category, Label
from schemas.config import RunConfig


class ABCategory(Category):
    generators = (2, 2)
    existing_images = True
    best_of_n = True
    required = ("panel",)

    def accepts(self, row: dict, cfg: RunConfig) -> bool:
        """With existing_images, only prompts that come with an image."""
        return not cfg.categories[self.name].existing_images or row.get("source_image") is not None

    def plan(self, batch: dict, cfg: RunConfig) -> pa.Table:
        ccfg = cfg.categories[self.name]
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
                g = cfg.generators[b["generator"]]
                planned.append({**r, "a": None, "b": b, "image_a": fit_image(r["source_image"], g.width, g.height)})
            else:
                planned.append({**r, "a": side_spec(cfg, ccfg.generators[0], r["prompt"], seed), "b": b})
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg: RunConfig) -> Label:
        """The panel's verdict, or for best-of-N rows the rewards' choice (its winner is already side a)."""
        ccfg = cfg.categories[self.name]
        if ccfg.best_of_n:
            return Label("a", "reward")
        return panel_decision(row, cfg, self.name)
