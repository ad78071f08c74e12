"""Score judges: the 1-10 distribution checked against the two-token answer model it claims, its storage
per pair (winner/loser sides) and its summary in `pairforge stats`. The real backends' agreement is
tested in test_vllm.py (engine, transformers and an OpenAI-compatible server) and test_judge.py."""

import io
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, small_run_config
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from pipelines.categories.composition import Composition
from pipelines.cli import app
from pipelines.records import build_records, row_schema
from pipelines.stats import compute_stats
from schemas.category import Label
from schemas.config import ConfigError, load_run_config
from schemas.pair import pair_schema, undecided_schema
from workers.judge import score_distribution
from workers.judge_backends import OptionResult

TOKENS = [str(d) for d in range(10)] + ["<end>", "x"]


class TwoTokenAnswers:
    """Not a model: a stand-in for the backend contract with explicit next-token distributions, the
    first over TOKENS at the answer position, the second after the answer "1". `renormalise` reports the
    first call as vLLM's guided choice does over HTTP (renormalised over the options asked for)."""

    special_tokens: list[str] = []

    def __init__(self, first: np.ndarray, after_one: np.ndarray, renormalise: bool = False):
        self.first, self.after_one, self.renormalise = first, after_one, renormalise

    def is_single_token(self, text: str) -> bool:
        return len(text) == 1

    def option_logprobs(self, requests, options, prefix=""):
        dist = self.after_one if prefix == "1" else self.first
        with np.errstate(divide="ignore"):
            lp = np.log([dist[TOKENS.index(o)] for o in options])
        masked = self.renormalise and not prefix
        if masked:
            lp = lp - np.logaddexp.reduce(lp)
        return [OptionResult(lp, renormalised=masked) for _ in requests]


def sample_scores(first: np.ndarray, after_one: np.ndarray, n: int, rng) -> np.ndarray:
    """Answers drawn token by token; "1" then "0" reads 10, "1" then anything else reads 1, a digit 2-9
    reads itself, anything else is not a score (0)."""
    t1 = rng.choice(len(TOKENS), size=n, p=first)
    t2 = rng.choice(len(TOKENS), size=n, p=after_one)
    return np.where(t1 == 1, np.where(t2 == 0, 10, 1), np.where((t1 >= 2) & (t1 <= 9), t1, 0))


distribution = st.lists(st.floats(0.0, 1.0), min_size=len(TOKENS), max_size=len(TOKENS)).map(
    lambda w: (np.array(w) + 1e-3) / (np.sum(w) + 1e-3 * len(TOKENS)))


@settings(max_examples=25, deadline=None)
@given(first=distribution, after_one=distribution, seed=st.integers(0, 2**31))
def test_score_distribution_matches_sampled_two_token_answers(first, after_one, seed):
    raw, = score_distribution(TwoTokenAnswers(first, after_one), [None])
    draws = sample_scores(first, after_one, 40_000, np.random.default_rng(seed))
    valid = draws[draws > 0]
    if len(valid) < 2_000:
        return
    empirical = np.bincount(valid, minlength=11)[1:] / len(valid)
    stderr = np.sqrt(np.array(raw["probs"]) * (1 - np.array(raw["probs"])) / len(valid))
    assert np.all(np.abs(empirical - raw["probs"]) <= 5 * stderr + 2e-3)
    assert raw["expected"] == pytest.approx(valid.mean(), abs=5 * valid.std() / np.sqrt(len(valid)) + 1e-3)
    assert raw["mass"] == pytest.approx(first[1:10].sum(), rel=1e-6)

    # The endpoint's first call comes renormalised over "1".."9": the same distribution, no mass.
    masked, = score_distribution(TwoTokenAnswers(first, after_one, renormalise=True), [None])
    assert np.allclose(masked["probs"], raw["probs"], atol=1e-6) and masked["mass"] is None


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def score(judge, side, expected, std=1.0):
    probs = [0.1] * 10
    return {"judge": judge, "side": side, "expected": expected, "std": std, "mass": 0.5, "probs": probs, "note": None}


class Decided(Composition):
    """composition with a fixed verdict."""

    def __init__(self, winner: str | None):
        self.winner = winner

    def label(self, row, cfg) -> Label:
        return Label(self.winner, "vlm_panel", reason="tie")


def test_scores_are_stored_with_the_winner_and_loser_sides(tmp_path):
    cfg = small_run_config(tmp_path, n_prompts=1)
    row = {"pair_id": "p", "category": "composition", "prompt": "a cat", "prompt_id": "i", "prompt_source": "s",
           "gen_a": "sd", "gen_b": "flux", "seed_a": 1, "seed_b": 1, "prompt_a": "a cat", "prompt_b": "a cat",
           "image_a": png(0), "image_b": png(1), "scores": [score("j", "a", 3.0), score("j", "b", 7.0)]}
    for winner, kind, tags in (("b", "pairs", {"a": "l", "b": "w"}), ("a", "pairs", {"a": "w", "b": "l"}),
                               (None, "undecided", {"a": "a", "b": "b"})):
        record = build_records([row], cfg, Decided(winner), row_schema()).to_pylist()[0]
        assert record["_kind"] == kind
        assert {s["side"]: s["expected"] for s in record["scores"]} == {tags["a"]: 3.0, tags["b"]: 7.0}


def write(out, kind, schema, rows, category):
    path = out / kind / category / "part-r_1-00000-x-000.parquet"
    path.parent.mkdir(parents=True)
    common = {"category": category, "prompt": "p", "prompt_source": "s", "created_at": datetime.now(timezone.utc),
              "pipeline_version": "t", "config_hash": "h", "width": 8, "height": 8, "prompt_id": "i"}
    pq.write_table(pa.Table.from_pylist([{**common, **r} for r in rows], schema=schema), path)


def test_stats_compare_winner_and_loser_scores_per_category(tmp_path):
    img = {"bytes": b"x", "path": None}
    write(tmp_path, "pairs", pair_schema(), [
        {"pair_id": "1", "image_w": img, "image_l": img, "label_source": "vlm_panel",
         "scores": [score("j", "w", 8.0, 1.0), score("j", "l", 4.0, 2.0),      # agrees
                    score("k", "w", 5.0, 1.0), score("k", "l", 6.0, 1.0)]},    # disagrees
        {"pair_id": "2", "image_w": img, "image_l": img, "label_source": "ocr",
         "scores": [score("j", "w", 7.0, 3.0), {**score("j", "l", None), "expected": None, "note": "unreadable"}]},
    ], "human_quality")
    write(tmp_path, "undecided", undecided_schema(), [
        {"pair_id": "3", "image_a": img, "image_b": img, "reason": "tie", "scores": [score("j", "a", 9.0)]}],
        "human_quality")
    write(tmp_path, "pairs", pair_schema(), [{"pair_id": "4", "image_w": img, "image_l": img,
                                               "label_source": "vlm_panel"}], "composition")
    report = compute_stats(tmp_path)
    assert report["categories"]["human_quality"]["scores"] == {
        "scored": 2, "mean_expected_w": 6.5, "mean_expected_l": 5.0, "agrees_with_label": 0.5, "mean_std": 1.25}
    assert report["categories"]["composition"]["scores"] is None
    result = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert "human_quality scores: winners 6.50 vs losers 5.00, higher for the winner in 50.0% of 2" in result.output


def test_stats_read_shards_written_before_scores_existed(tmp_path):
    img = {"bytes": b"x", "path": None}
    old = pa.schema([f for f in pair_schema() if f.name != "scores"])
    write(tmp_path, "pairs", old, [{"pair_id": "1", "image_w": img, "image_l": img, "label_source": "ocr"}], "text_rendering")
    assert compute_stats(tmp_path)["categories"]["text_rendering"]["pairs"] == 1


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["categories"]["human_quality"].update(score_judges=["nobody"]), "unknown judge 'nobody'"),
    (lambda c: c["categories"]["composition"].update(best_of_n=4, score_judges=["qwen2-vl-a"]), "not with best_of_n"),
    (lambda c: c["judges"]["qwen2-vl-a"].update(backend="openai", endpoint="http://h/v1", min_option_mass=0.1),
     "min_option_mass: not observable"),
])
def test_score_judge_config_errors_name_the_key(tmp_path, mutate, expected):
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=expected):
        load_run_config(path)
