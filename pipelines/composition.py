"""composition (ViPO B.1): generator A vs generator B on the same prompt and seed (or the prompt's
existing image vs a generator, or best-of-N by rewards); a panel of VLM judges compares layout, counts,
relative positions and framing; majority vote."""

from pipelines.ab_pairs import ab_recipe

CATEGORY = "composition"
accepts, plan, label = ab_recipe(CATEGORY)
