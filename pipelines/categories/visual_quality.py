"""visual_quality (ViPO B.2): image pairs whose panel was unanimous, each image animated with one shared
motion prompt (the pair's prompt plus a motion), by one image-to-video generator with one seed; the
label is inherited from the image pair (`label_source: inherited`, `parent_pair_id`): the video of the
better image wins.

Unanimous: a panel label (`vlm_panel`) with agreement 1 and no abstaining vote, i.e. every judge of the
panel chose the same image in both orders' average. The parent pairs come from `parents_from` or the
run's own output (pipelines/run.py runs this category after the image categories)."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from pipelines.motion_prompts import draw_motion, with_motion
from pipelines.records import derive_seed, fit_image, plan_table, prompt_rows, side_spec
from schemas.category import Category, DerivedConfig, Label, register, registered


class VisualQualityConfig(DerivedConfig):
    parents: list[str] | None = Field(None, description="visual_quality: image categories whose unanimous panel pairs "
                                                        "are animated (default: every image category)")


def unanimous(parent: dict) -> bool:
    votes = list(parent["votes"]) if parent["votes"] is not None else []
    return (parent["label_source"] == "vlm_panel" and parent["agreement"] == 1.0 and bool(votes)
            and all(v["choice"] is not None for v in votes))


def frames_of(parent: dict, cfg, generator: str) -> dict[str, bytes]:
    """A parent pair's winner and loser images, fitted to the video generator's size."""
    g = cfg.generators[generator]
    return {tag: fit_image(parent[f"image_{tag}"]["bytes"], g.width, g.height) for tag in "wl"}


class VisualQuality(Category):
    name = "visual_quality"
    media = "video"
    derived = True
    config = VisualQualityConfig
    rubric = ("Judge VISUAL QUALITY only: sharp, clean frames without artifacts, blur or distortion, stable over "
              "time without flicker or warping. Ignore how much or how well things move.")
    generators = (1, 1)
    record_fields = (("parent_pair_id", pa.string()),  # the image pair a derived video pair animates
                     ("motion_prompt", pa.string()))   # the motion added to the scene description

    def parent_categories(self, cfg) -> list[str]:
        return cfg.categories[self.name].parents or [n for n, c in registered().items() if c.media == "image"]

    def plan(self, batch: dict, cfg) -> pa.Table:
        (generator,) = cfg.categories[self.name].generators
        planned = []
        for parent in filter(unanimous, prompt_rows(batch)):
            motion, _ = draw_motion(cfg.seed, parent["pair_id"])
            prompt = with_motion(parent["prompt"], motion)
            seed = derive_seed(cfg.seed, parent["pair_id"], "video")
            frames = frames_of(parent, cfg, generator)
            planned.append({"prompt": prompt, "prompt_id": parent["prompt_id"], "prompt_source": parent["prompt_source"],
                            "parent_pair_id": parent["pair_id"], "motion_prompt": motion,
                            "frame_a": frames["w"], "frame_b": frames["l"],
                            "a": side_spec(cfg, generator, prompt, seed), "b": side_spec(cfg, generator, prompt, seed)})
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg) -> Label:
        """Side a animates the parent's winner (see `plan`)."""
        return Label("a", "inherited", agreement=1.0)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        return {"parent_pair_id": row["parent_pair_id"], "motion_prompt": row["motion_prompt"]}


register(VisualQuality())
