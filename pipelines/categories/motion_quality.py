"""motion_quality (ViPO B.2): one first frame animated twice, by two image-to-video generators on one seed,
or by one generator on two seeds, with the prompt plus a motion (pipelines/motion_prompts.py). The first
frame is the prompt's existing image (a source with `image_field`), or drawn from the prompt by an image
generator (`frame_generator`) in the same row, before the video pools.

Label (score mode, as ViPO scores each video with a VLM): each score judge gives each video a 1-10 motion
score distribution (`scores`: expected value and spread). The gap is the judges' mean of expected(a) -
expected(b); pairs whose |gap| is below `min_score_gap` (ambiguous) or above `max_score_gap` (trivial: one
video broken) are undecided, as ViPO drops the pairs with the smallest and largest score differences. The
motion signal (workers/motion.py: optical-flow magnitude, VBench dynamic degree) of both videos is stored
as evidence, not used to decide: more motion is not better motion. Its flow is Farneback, or RAFT from a
local weights file (`flow: raft`, `raft_weights`, `raft_model`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from pipelines.motion_prompts import draw_motion, with_motion
from pipelines.records import derive_seed, fit_image, plan_table, prompt_rows, side_spec
from schemas.category import Category, CategoryConfig, Label, register

MOTION = pa.struct([
    ("side", pa.string()),            # "w" / "l" in pairs, "a" / "b" in undecided rows
    ("flow_mean", pa.float64()),      # mean optical-flow magnitude, px per frame at 256 px (workers/motion.py)
    ("flow_top", pa.float64()),       # mean of each frame pair's largest 5% of magnitudes (VBench's score)
    ("dynamic", pa.bool_()),          # VBench dynamic degree: the video moves
])


class MotionQualityConfig(CategoryConfig):
    frame_generator: str | None = Field(None, description="motion_quality: image generator that draws the first "
                                                          "frame from the prompt (default: the prompt's existing image)")
    min_score_gap: float = Field(0.5, ge=0, description="motion_quality: smaller |expected-score gap| is undecided "
                                                        "(gap_too_small)")
    max_score_gap: float = Field(6.0, gt=0, description="motion_quality: larger |gap| is undecided (gap_too_large)")
    flow: Literal["farneback", "raft"] = Field("farneback", description="motion_quality: the motion signal's optical "
                                                                        "flow (raft needs raft_weights)")
    raft_weights: str | None = Field(None, description="motion_quality: a torchvision RAFT state dict file, e.g. "
                                                        "Raft_Large_Weights.C_T_V2's .pth (flow: raft)")
    raft_model: Literal["raft_large", "raft_small"] = Field("raft_large", description="motion_quality: the RAFT "
                                                                                      "architecture of raft_weights")

    @model_validator(mode="after")
    def _band_and_judges(self):
        if self.min_score_gap >= self.max_score_gap:
            raise ValueError(f"min_score_gap {self.min_score_gap} must be below max_score_gap {self.max_score_gap}")
        if not self.score_judges:
            raise ValueError("motion_quality is labelled by score judges: set score_judges")
        if self.flow == "raft" and not self.raft_weights:
            raise ValueError("flow: raft needs raft_weights (a local torchvision RAFT state dict; nothing downloads)")
        if self.raft_weights and not Path(self.raft_weights).expanduser().is_file():
            raise ValueError(f"raft_weights {self.raft_weights}: no such file")
        return self


def score_label(scores: list[dict], min_gap: float, max_gap: float) -> Label:
    """The label of a pair from its score judges' distributions (`scores` items: judge, side, expected, std).
    Judges that scored both sides count; agreement is the share of them whose own gap points to the winner;
    confidence is P(winner's score > loser's) with the judges' mean spreads as independent normal noise."""
    by_judge: dict[str, dict] = {}
    for s in scores:
        if s.get("expected") is not None:
            by_judge.setdefault(s["judge"], {})[s["side"]] = s
    both = [j for j in by_judge.values() if set(j) >= {"a", "b"}]
    if not both:
        return Label(None, "vlm_score", reason="unscored")
    gaps = [j["a"]["expected"] - j["b"]["expected"] for j in both]
    gap = sum(gaps) / len(gaps)
    if abs(gap) < min_gap:
        return Label(None, "vlm_score", reason="gap_too_small")
    if abs(gap) > max_gap:
        return Label(None, "vlm_score", reason="gap_too_large")
    spread = math.sqrt(sum(j["a"]["std"] ** 2 + j["b"]["std"] ** 2 for j in both) / len(both))
    confidence = 0.5 * (1 + math.erf(abs(gap) / (spread * math.sqrt(2)))) if spread > 0 else 1.0
    return Label("a" if gap > 0 else "b", "vlm_score", agreement=sum(g * gap > 0 for g in gaps) / len(gaps),
                 confidence=confidence)


class MotionQuality(Category):
    name = "motion_quality"
    media = "video"
    config = MotionQualityConfig
    rubric = ("Judge MOTION QUALITY only: natural, smooth and physically plausible movement with a clear amount of "
              "motion, no jitter, stutter, frozen frames, morphing or objects breaking apart. Ignore image "
              "sharpness and colour.")
    generators = (1, 2)
    record_fields = (("motion_prompt", pa.string()), ("motion", pa.list_(MOTION)))
    prompt_filter = "an existing image (or set frame_generator)"

    def accepts(self, row: dict, cfg) -> bool:
        return cfg.categories[self.name].frame_generator is not None or row.get("source_image") is not None

    def plan(self, batch: dict, cfg) -> pa.Table:
        ccfg = cfg.categories[self.name]
        gens = ccfg.generators
        g = cfg.generators[gens[0]]
        planned = []
        for r in prompt_rows(batch):
            motion, _ = draw_motion(cfg.seed, r["prompt_id"])
            prompt = with_motion(r["prompt"], motion)
            seed = derive_seed(cfg.seed, r["prompt_id"])
            # Two generators: one seed, so the models differ and nothing else; one: two seeds.
            gen_b, seed_b = (gens[1], seed) if len(gens) == 2 else (gens[0], derive_seed(cfg.seed, r["prompt_id"], "second"))
            row = {**r, "prompt": prompt, "motion_prompt": motion,
                   "a": side_spec(cfg, gens[0], prompt, seed), "b": side_spec(cfg, gen_b, prompt, seed_b)}
            if ccfg.frame_generator:
                row["frame"] = side_spec(cfg, ccfg.frame_generator, prompt, derive_seed(cfg.seed, r["prompt_id"], "frame"))
            else:
                row["frame_a"] = row["frame_b"] = fit_image(r["source_image"], g.width, g.height)
            planned.append(row)
        return plan_table(cfg, self.name, planned)

    def label(self, row: dict, cfg) -> Label:
        ccfg = cfg.categories[self.name]
        return score_label(row.get("scores") or [], ccfg.min_score_gap, ccfg.max_score_gap)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        from workers.motion import farneback_flow, raft_flow, video_motion

        ccfg = cfg.categories[self.name]
        flow = raft_flow(str(Path(ccfg.raft_weights).expanduser()), ccfg.raft_model) if ccfg.flow == "raft" \
            else farneback_flow
        return {"motion_prompt": row["motion_prompt"],
                "motion": [{"side": tag, **video_motion(row[f"video_{s}"], flow).as_dict()} for tag, s in sides.items()]}


register(MotionQuality())
