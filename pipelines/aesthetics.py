"""aesthetics (ViPO B.1): an existing image from a source dataset (Parquet or WebDataset, via a prompt
source with `image_field`) or generator A, against generator B on the same prompt; a panel of VLM
judges compares visual appeal, lighting, colour and polish; majority vote."""

from pipelines.ab_pairs import ab_recipe

CATEGORY = "aesthetics"
accepts, plan, label = ab_recipe(CATEGORY)
