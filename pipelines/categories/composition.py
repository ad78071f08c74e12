"""composition (ViPO B.1): generator A vs generator B on the same prompt and seed (or the prompt's
existing image vs a generator, or best-of-N by rewards); a panel of VLM judges compares layout, counts,
relative positions and framing; majority vote."""

from pipelines.categories.ab import ABCategory
from schemas.category import register


class Composition(ABCategory):
    name = "composition"
    rubric = (
        "Judge COMPOSITION only: layout and spatial arrangement, the count and relative position of the objects "
        "the prompt asks for, framing, balance, depth and foreground/background separation. Ignore small "
        "differences in colour grading or texture detail.")


register(Composition())
