"""Adding a category is one new file: an A-vs-B image category defined here, with its own config field,
prompt filter, rubric and record field, registered and run end to end on real local Ray with no other
file of pairforge changed."""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import DECISIVE_PANELS, REPO, small_run_config
from pydantic import Field
from ray import cloudpickle

from pipelines.categories.ab import ABCategory
from schemas.category import CategoryConfig, register, registered, unregister
from schemas.config import ConfigError, load_run_config


class LightingConfig(CategoryConfig):
    min_words: int = Field(3, ge=1, description="lighting: shortest prompt to take (words)")


class Lighting(ABCategory):
    """Two generators on the same prompt and seed, judged on lighting by the run's panel."""

    name = "lighting"
    config = LightingConfig
    rubric = ("Judge LIGHTING only: a plausible light source, consistent shadows and highlights, and exposure "
              "that keeps detail in the darks and the brights. Ignore composition and the prompt's content.")
    record_fields = (("prompt_words", pa.int32()),)
    prompt_filter = "prompts of min_words words or more"

    def accepts(self, row: dict, cfg) -> bool:
        return len(row["prompt"].split()) >= cfg.categories[self.name].min_words and super().accepts(row, cfg)

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        return {"prompt_words": len(row["prompt"].split())}


# Ray's workers cannot import this test module (tests/ is not on their path), so its classes travel by
# value; a category in an installed package, or defined in a notebook, needs nothing like this.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MIN_WORDS = 20


@pytest.fixture
def lighting():
    register(Lighting())
    yield
    unregister("lighting")  # the record schemas follow the registry: leave it as the other tests expect


def lighting_config(tmp_path: Path, **category):
    return small_run_config(tmp_path, n_prompts=6, overrides={**DECISIVE_PANELS, ("categories",): {"lighting": {
        "generators": ["sd", "flux"], "panel": "main", "sources": ["test"], "min_words": MIN_WORDS, **category}}})


def test_a_registered_category_runs_end_to_end(lighting, ray_session, tmp_path):
    from pipelines.run import run
    from pipelines.store import shard_files
    from schemas.pair import pair_schema, undecided_schema

    cfg = lighting_config(tmp_path)
    assert isinstance(cfg.categories["lighting"], LightingConfig) and cfg.categories["lighting"].min_words == MIN_WORDS
    report = run(cfg)
    out = Path(cfg.output.path)
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    taken = sum(len(p.split()) >= MIN_WORDS for p in prompts)
    assert 0 < taken < len(prompts)  # the category's own filter, with its own config field, chose the prompts

    files = {kind: shard_files(out, kind) for kind in ("pairs", "undecided", "errors")}
    assert not files["errors"]
    assert all(f.parent == out / kind / "lighting" for kind in ("pairs", "undecided") for f in files[kind])
    rows = {kind: [r for f in files[kind] for r in pq.read_table(f).to_pylist()] for kind in ("pairs", "undecided")}
    assert len(rows["pairs"]) + len(rows["undecided"]) == taken and rows["pairs"]
    for kind, schema in (("pairs", pair_schema()), ("undecided", undecided_schema())):
        assert schema.field("prompt_words").type == pa.int32()
        for f in files[kind]:
            assert pq.read_schema(f).remove_metadata() == schema.remove_metadata()
    for r in rows["pairs"] + rows["undecided"]:
        assert r["category"] == "lighting" and r["prompt_words"] == len(r["prompt"].split()) >= MIN_WORDS
        assert len(r["votes"]) == 2 * len(cfg.panels["main"].judges)  # the panel judged it (with its rubric)
        assert r["edit_dimensions"] is None and r["ocr"] is None  # the other categories' fields stay null
    for r in rows["pairs"]:
        assert r["label_source"] == "vlm_panel" and {r["generator_w"]["name"], r["generator_l"]["name"]} == {"sd", "flux"}
    assert report["categories"]["lighting"]["pairs"] == len(rows["pairs"])


def test_its_config_is_validated_by_its_own_model(lighting, tmp_path):
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    data["categories"] = {"lighting": {"generators": ["sd", "flux"], "panel": "main", "min_words": 0, "glow": 1}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert "categories.lighting.min_words: Input should be greater than or equal to 1" in str(err.value)
    assert "categories.lighting.glow: Extra inputs are not permitted" in str(err.value)
    data["categories"]["lighting"] = {"generators": ["sd"], "panel": "main"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="categories.lighting.generators: lighting needs 2 generator"):
        load_run_config(path)


def test_unregistered_it_is_unknown_and_leaves_the_schema_as_before(tmp_path):
    from schemas.pair import pair_schema

    assert "lighting" not in registered() and "prompt_words" not in pair_schema().names
    with pytest.raises(Exception, match="unknown category 'lighting'"):
        lighting_config(tmp_path)
