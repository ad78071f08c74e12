"""aesthetics (ViPO B.1): an existing image from a source dataset (Parquet or WebDataset, via a prompt
source with `image_field`) or generator A, against generator B on the same prompt; a panel of VLM
judges compares visual appeal, lighting, colour and polish; majority vote."""

from pipelines.categories.ab import ABCategory
from schemas.category import register


class Aesthetics(ABCategory):
    name = "aesthetics"
    rubric = (
        "Judge AESTHETICS only: overall visual appeal, lighting, colour harmony, detail and polish, and freedom "
        "from artifacts, blur or distortion. Do not reward the image for matching the prompt more closely.")


register(Aesthetics())
