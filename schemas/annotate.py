"""The human annotation round: its settings and the answers a rater can give.

Sides are stored as the pair's own letters, never as screen positions: in a decided pair `A` is the
pipeline's winner (`image_w`) and `B` the loser (`image_l`); in an undecided pair `A`/`B` are
`image_a`/`image_b`. Which letter a rater saw on the left is drawn per rater and pair and stored with
the assignment, so the screen never tells a rater which image the pipeline preferred.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a rater can answer. `tie`: both equally good; `cant_tell`: cannot judge (broken image, unclear
# rubric); `skip`: declined. Only A/B/tie are ratings; the other two are recorded but count as missing.
CHOICES = ("A", "B", "tie", "cant_tell", "skip")
RATINGS = ("A", "B", "tie")
RATER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class AnnotateConfig(BaseModel):
    """One annotation round (a "study"), fixed when it is created in the database."""

    model_config = ConfigDict(extra="forbid")

    raters: list[str] = Field(min_length=1)
    sample: int = Field(50, ge=1, description="pairs drawn per category (decided and undecided together)")
    gold: int = Field(10, ge=0, description="gold pairs (constructed truth) shown to every rater")
    raters_per_pair: int = Field(3, ge=1, description="raters who see each sampled pair")
    seed: int = 0

    @field_validator("raters")
    @classmethod
    def _names(cls, raters: list[str]) -> list[str]:
        import re

        for r in raters:
            if not re.match(RATER_NAME, r):
                raise ValueError(f"rater name {r!r}: use letters, digits, '.', '_' or '-' (at most 64)")
        if len(set(raters)) != len(raters):
            raise ValueError("rater names repeat")
        return raters
