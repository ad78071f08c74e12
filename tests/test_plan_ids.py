"""Pair ids, plans and record schemas do not change by accident: every category's work rows for the bundled
prompts, and the pair / undecided schemas, against fixtures recorded before the category-plugin refactor
(issue 12). A change that means to change them (a new spec field, a new seed rule, a new column)
re-records them: `python tests/test_plan_ids.py`, and says so: new pair ids make every output's finished
pairs planned again, and a new schema makes old and new shards differ. (The work rows' name lists and JSON
strings became typed Arrow lists, schemas/work.py: the fixture was re-encoded from the old strings, not
re-recorded.)"""

import json
import sys
from pathlib import Path

import numpy as np
from helpers import REPO, small_run_config

FIXTURE = Path(__file__).parent / "data" / "plan_ids.json"
SCHEMAS = Path(__file__).parent / "data" / "record_schemas.txt"
VARIANTS = {  # name: (category, config overrides)
    "composition": ("composition", {}),
    "composition-best-of-3": ("composition", {("categories", "composition", "best_of_n"): 3,
                                              ("categories", "composition", "score_judges"): []}),
    "aesthetics": ("aesthetics", {}),
    "human_quality": ("human_quality", {}),
    "alignment": ("alignment", {}),
    "text_rendering": ("text_rendering", {}),
}
KEEP = ("pair_id", "category", "gen_a", "gen_b", "prompt_a", "prompt_b", "seed_a", "seed_b", "judges", "score_judges",
        "reward_models", "perturber", "edit_k", "edit_dimensions", "ocr_engine", "required_text", "cand_gens", "cand_seeds")


def planned(tmp_path: Path) -> dict:
    from schemas.category import get_category
    from schemas.pair import make_prompt_id

    prompts = [json.loads(line) for line in (REPO / "prompts/pairforge-v1.jsonl").read_text().splitlines()]
    out = {}
    for name, (category, overrides) in VARIANTS.items():
        cfg = small_run_config(tmp_path, categories=(category,), overrides=overrides)
        texts = [p["prompt"] for p in prompts if p["category"] == category][:4]
        batch = {"prompt": np.array(texts, dtype=object), "prompt_source": np.array(["test"] * len(texts), dtype=object),
                 "prompt_id": np.array([make_prompt_id("test", t) for t in texts], dtype=object)}
        out[name] = [{k: r[k] for k in KEEP} for r in get_category(category).plan(batch, cfg).to_pylist()]
    return out


def test_plans_and_pair_ids_match_the_fixture(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    got = json.loads(json.dumps(planned(tmp_path)))
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == expected[name], name


def record_schemas() -> str:
    from schemas.pair import pair_schema, undecided_schema

    return "".join(f"# {kind}\n{schema.to_string(show_schema_metadata=True)}\n"
                   for kind, schema in (("pairs", pair_schema()), ("undecided", undecided_schema())))


def test_record_schemas_match_the_fixture():
    assert record_schemas() == SCHEMAS.read_text()


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(REPO))
    FIXTURE.write_text(json.dumps(planned(Path(tempfile.mkdtemp())), indent=1) + "\n")
    SCHEMAS.write_text(record_schemas())
    print(f"recorded {FIXTURE} and {SCHEMAS}")
