"""human_quality (ViPO B.1): human-centric prompts; an existing or pool image against a counterpart
generator on the same prompt; VLM judges with the anatomy rubric (hands, faces, limbs, poses)."""

import re

from pipelines.categories.ab import ABCategory
from schemas.category import register

_HUMAN = re.compile(
    r"\b(person|people|man|men|woman|women|boy|boys|girl|girls|child|children|kid|kids|baby|toddler|teen\w*|"
    r"couple|family|friends|crowd|portrait|face|faces|hands?|fingers|dancer\w*|athlete\w*|player\w*|chef|"
    r"musician\w*|student\w*|worker\w*|grandm\w+|grandp\w+|mother|father|daughter|son|bride|groom|"
    r"climber\w*|runner\w*|surfer\w*|skater\w*|gymnast\w*|violinist\w*|guitarist\w*|pianist\w*|drummer\w*|"
    r"vendor\w*|farmer\w*|fisherm[ae]n|doctor\w*|nurse\w*|teacher\w*|artist\w*|potter\w*|baker\w*|"
    r"he|she|his|her|their|they|someone|human\w*|figure\w*|adult\w*|elderly|actor\w*|actress\w*|twins)\b",
    re.IGNORECASE)


class HumanQuality(ABCategory):
    name = "human_quality"
    rubric = (
        "Judge HUMAN ANATOMY only: natural faces, eyes, hands with the right number of fingers, plausible limbs, "
        "poses and proportions, and no merged or missing body parts.")
    prompt_filter = "people"

    def accepts(self, row: dict, cfg) -> bool:
        """Human-centric prompts only (people, body parts, occupations)."""
        return bool(_HUMAN.search(row["prompt"])) and super().accepts(row, cfg)


register(HumanQuality())
