"""video_text_alignment (ViPO B.2), from the run's (or `parents_from`'s) alignment pairs, two constructions:

- spatial: the alignment pair's two images (original vs perturbed prompt), each animated with one shared
  motion: side a from the original prompt plus the motion, side b from the perturbed prompt plus the same
  motion, one generator and seed. ViPO gives both sides only the shared motion prompt; here each video is
  also told its own image's description, so the loser is a faithful video of the wrong content rather
  than a video pulled between its image and the winner's text.
- temporal: the alignment pair's winner image animated twice, with a motion and with the same motion's
  verb or direction changed (pipelines/motion_prompts.py), one generator and seed.

In both the video made from the pair's prompt wins by construction; the record keeps both prompts (`prompt`,
`prompt_l`), the motion, the construction (`alignment_kind`) and the parent pair."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from pipelines.categories.visual_quality import frames_of
from pipelines.motion_prompts import draw_motion, with_motion
from pipelines.records import derive_seed, plan_table, prompt_rows, side_spec
from schemas.category import Category, DerivedConfig, Label, register


class VideoTextAlignmentConfig(DerivedConfig):
    kinds: list[Literal["spatial", "temporal"]] = Field(
        ["spatial", "temporal"], min_length=1, description="video_text_alignment: constructions, one pair each per "
                                                           "alignment pair")


class VideoTextAlignment(Category):
    name = "video_text_alignment"
    media = "video"
    derived = True
    config = VideoTextAlignmentConfig
    rubric = ("Judge VIDEO-TEXT ALIGNMENT only: which video shows the objects, attributes and relations the prompt "
              "describes and performs the motion it describes, in the direction and order it says. Ignore visual "
              "quality.")
    generators = (1, 1)
    record_fields = (("parent_pair_id", pa.string()), ("motion_prompt", pa.string()),
                     ("alignment_kind", pa.string()))  # spatial | temporal

    def parent_categories(self, cfg) -> list[str]:
        return ["alignment"]

    def plan(self, batch: dict, cfg) -> pa.Table:
        ccfg = cfg.categories[self.name]
        (generator,) = ccfg.generators
        planned = []
        for parent in prompt_rows(batch):
            if parent["label_source"] != "construction" or parent["prompt_l"] is None:
                continue
            motion, changed = draw_motion(cfg.seed, parent["pair_id"])
            frames = frames_of(parent, cfg, generator)
            seed = derive_seed(cfg.seed, parent["pair_id"], "video")
            common = {"prompt_id": parent["prompt_id"], "prompt_source": parent["prompt_source"],
                      "parent_pair_id": parent["pair_id"], "motion_prompt": motion}
            prompt = with_motion(parent["prompt"], motion)
            if "spatial" in ccfg.kinds:
                planned.append({**common, "prompt": prompt, "alignment_kind": "spatial",
                                "frame_a": frames["w"], "frame_b": frames["l"],
                                "a": side_spec(cfg, generator, prompt, seed),
                                "b": side_spec(cfg, generator, with_motion(parent["prompt_l"], motion), seed)})
            if "temporal" in ccfg.kinds:
                planned.append({**common, "prompt": prompt, "alignment_kind": "temporal",
                                "frame_a": frames["w"], "frame_b": frames["w"],
                                "a": side_spec(cfg, generator, prompt, seed),
                                "b": side_spec(cfg, generator, with_motion(parent["prompt"], changed), seed)})
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg) -> Label:
        return Label("a", "construction", agreement=1.0, confidence=1.0)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        return {k: row[k] for k in ("parent_pair_id", "motion_prompt", "alignment_kind")}


register(VideoTextAlignment())
