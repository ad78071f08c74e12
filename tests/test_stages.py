"""The worker pools come from one table of worker kinds (pipelines/stages.py), and the work columns their
actors declare (schemas/work.py) are checked when the pipeline is built: a misconfigured stage list fails
in one line, before Ray starts or any model is resolved or loaded."""

import dataclasses

import pytest
from helpers import small_run_config

import pipelines.run
import pipelines.stages
from pipelines.stages import WORKER_KINDS, model_refs, pool_specs, stage_list
from schemas.config import ConfigError
from workers.ocr import OcrReader

FIVE = ("composition", "aesthetics", "alignment", "text_rendering", "human_quality")


def five_categories(tmp_path, **dotted):
    """The demo's five image categories; alignment with an LLM perturber behind an endpoint (nothing loads)."""
    return small_run_config(tmp_path, categories=FIVE, overrides={
        ("perturbers", "llm"): {"kind": "llm", "model": "served-llm", "backend": "openai", "endpoint": "http://h:1/v1"},
        ("categories", "alignment", "perturber"): "llm"}, **dotted)


def test_pools_in_pipeline_order_with_their_models(tmp_path):
    cfg = five_categories(tmp_path)
    stages = [f"{kind.stage}:{name}" for kind, name, _ in stage_list(cfg)]
    assert stages == ["perturber:llm", "generator:sd", "generator:flux", "ocr:rapid", "judge:qwen2-vl-a",
                      "judge:qwen2.5-vl-b", "judge:qwen2-vl-c", "reward:clip", "reward:pickscore", "reward:hpsv2",
                      "reward:aesthetic"]
    # An endpoint's model is a served name, not a ref to resolve; reward checkpoints are refs.
    assert model_refs(cfg) == ["tiny:sd", "tiny:flux", "tiny:qwen2-vl-a", "tiny:qwen2.5-vl-b", "tiny:qwen2-vl-c",
                               "tiny:clip", "tiny:pickscore", "tiny:clip", "tiny:hpsv2", "tiny:clip", "tiny:aesthetic"]
    specs = {stage: kwargs for _, stage, _, kwargs in pool_specs(cfg, {r: f"/m/{r}" for r in model_refs(cfg)}, "n0")}
    assert specs["perturber:llm"]["model_path"] == "served-llm" and specs["perturber:llm"]["nonce"] == "n0"
    assert specs["reward:hpsv2"]["checkpoint_path"] == "/m/tiny:hpsv2"
    assert set(specs["judge:qwen2-vl-a"]["categories"]) == set(FIVE)
    # A model no category of the run uses gets no pool (paddle is configured, rapid is used).
    assert "ocr:paddle" not in specs and "generator:sd" in specs


def test_a_misordered_stage_list_fails_before_any_model_loads(tmp_path, monkeypatch):
    """Judges before the generators: they would read images nothing has drawn yet. The run stops in one line
    naming the stage and the column, before Ray starts or a model ref is resolved."""
    judges = next(k for k in WORKER_KINDS if k.stage == "judge")
    monkeypatch.setattr(pipelines.stages, "WORKER_KINDS", (judges, *(k for k in WORKER_KINDS if k is not judges)))

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pipeline check must fail before this")

    monkeypatch.setattr(pipelines.run, "init_ray", must_not_run)
    monkeypatch.setattr(pipelines.run, "resolve_model_ref", must_not_run)
    cfg = small_run_config(tmp_path)
    with pytest.raises(ConfigError) as e:
        pipelines.run.run(cfg)
    assert str(e.value) == ("pipeline: stage judge:qwen2-vl-a (VLMJudge) reads image_b|video_b, which neither the "
                            "planner nor an earlier stage (earlier: none) writes: put the stage that writes it first "
                            "in pipelines/stages.py WORKER_KINDS")
    assert not (tmp_path / "out" / "pairs").exists()


def test_an_actor_that_names_an_unknown_column_fails(tmp_path, monkeypatch):
    class TypoReader(OcrReader):
        input_columns = ("ocr_engine", "required_txt", "image_a", "image_b")

    kinds = tuple(dataclasses.replace(k, actor=TypoReader) if k.stage == "ocr" else k for k in WORKER_KINDS)
    monkeypatch.setattr(pipelines.stages, "WORKER_KINDS", kinds)
    with pytest.raises(ConfigError, match=r"^pipeline: stage ocr:rapid \(TypoReader\) names required_txt, not work "
                                          r"columns: declare them in schemas/work.py"):
        stage_list(five_categories(tmp_path))
