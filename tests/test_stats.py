"""`pairforge stats`: abstentions, position flips and undecided reasons counted from real shards."""

from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.stats import compute_stats
from schemas.pair import pair_schema, undecided_schema


def v(judge, order, choice, note=None):
    lp = {"A": (-0.1, -2.0), "B": (-2.0, -0.1), None: (None, None)}[choice]
    return {"judge": judge, "order": order, "choice": choice, "logprob_a": lp[0], "logprob_b": lp[1], "note": note}


def write(out, kind, schema, rows, category="composition"):
    path = out / kind / category / "part-r_1-00000-x-000.parquet"
    path.parent.mkdir(parents=True)
    common = {"category": category, "prompt": "p", "prompt_source": "s", "created_at": datetime.now(timezone.utc),
              "pipeline_version": "t", "config_hash": "h", "width": 8, "height": 8}
    pq.write_table(pa.Table.from_pylist([{**common, **r} for r in rows], schema=schema), path)


def test_stats_count_abstentions_flips_and_reasons(tmp_path):
    img = {"bytes": b"x", "path": None}
    write(tmp_path, "pairs", pair_schema(), [
        {"pair_id": "1", "prompt_id": "1", "image_w": img, "image_l": img, "label_source": "vlm_panel",
         "agreement": 1.0, "confidence": 0.9, "rewards": [{"model": "clip", "score_w": 2.0, "score_l": 1.0}],
         "votes": [v("j1", "AB", "A"), v("j1", "BA", "B"),                     # consistent
                   v("j2", "AB", "A"), v("j2", "BA", "A"),                     # followed the position
                   v("j3", "AB", None, "unparseable: ''"), v("j3", "BA", "B")]},
    ])
    write(tmp_path, "undecided", undecided_schema(), [
        {"pair_id": "2", "prompt_id": "2", "image_a": img, "image_b": img, "reason": "all_abstained",
         "votes": [v("j1", "AB", None, "bad image"), v("j1", "BA", None, "bad image")]},
    ])
    c = compute_stats(tmp_path)["categories"]["composition"]
    assert (c["pairs"], c["undecided"], c["votes"], c["abstentions"]) == (1, 1, 8, 3)
    assert (c["judge_verdicts"], c["position_flips"], c["position_bias_rate"]) == (2, 1, 0.5)
    assert c["undecided_reasons"] == {"all_abstained": 1} and c["agreement_histogram"] == {"1.00": 1}

    result = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 0 and "composition" in result.output and "37.5%" in result.output
    assert CliRunner().invoke(app, ["stats", str(tmp_path / "nowhere")]).exit_code == 2


def gen(name):
    return {"name": name, "model": name, "seed": 0, "steps": 1, "guidance_scale": 1.0, "params": "{}"}


def test_arena_ranks_generators_per_category_and_writes_every_pairs_gap(tmp_path):
    img = {"bytes": b"x", "path": None}
    for category, strong in (("composition", "sd"), ("text_rendering", "flux")):
        weak = "flux" if strong == "sd" else "sd"
        write(tmp_path, "pairs", pair_schema(), [
            {"pair_id": f"{category}{i}", "prompt_id": str(i), "image_w": img, "image_l": img, "label_source": "vlm_panel",
             "generator_w": gen(strong if i % 10 else weak), "generator_l": gen(weak if i % 10 else strong)}
            for i in range(30)], category=category)
    arena = compute_stats(tmp_path)["arena"]
    assert arena["pairs"] == 60 and abs(arena["leaderboard"][0]["mu"]) < 0.2  # 30 : 30 overall
    for category, strong in (("composition", "sd"), ("text_rendering", "flux")):
        board = arena["by_category"][category]
        assert board["pairs"] == 30 and board["leaderboard"][0]["generator"] == strong
        assert board["leaderboard"][0]["low"] > 0  # 27 of 30: sure of it
    gaps = pq.read_table(tmp_path / "arena" / "gaps.parquet").to_pylist()
    assert len(gaps) == 60 and all(g["gap"] > 0 for g in gaps)


def test_stats_count_decisions_by_outcome_and_flag_confidence_below_half(tmp_path):
    img = {"bytes": b"x", "path": None}
    votes = [v("j1", "AB", "A"), v("j1", "BA", "B")]
    pair = {"prompt_id": "1", "image_w": img, "image_l": img, "label_source": "vlm_panel", "agreement": 1.0, "votes": votes}
    write(tmp_path, "pairs", pair_schema(), [
        {**pair, "pair_id": "1", "confidence": 0.9},
        {**pair, "pair_id": "2", "confidence": 0.3},  # a shard from a labeler that stored the loser's probability
        {**pair, "pair_id": "3", "label_source": "ocr", "confidence": None},  # OCR labels carry no probability
    ])
    write(tmp_path, "undecided", undecided_schema(), [
        {"pair_id": f"u{i}", "prompt_id": "2", "image_a": img, "image_b": img, "reason": reason, "votes": votes}
        for i, reason in enumerate(["tie", "tie", "conflict", "no_quorum"])])
    c = compute_stats(tmp_path)["categories"]["composition"]
    assert c["decisions"] == {"decided": 3, "tie": 2, "conflict": 1, "no_quorum": 1, "all_abstained": 0}
    assert c["mean_confidence"] == 0.6 and c["confidence_below_half"] == 0.5  # over the two that store one
    totals = compute_stats(tmp_path)["totals"]
    assert totals["decisions"] == c["decisions"] and totals["confidence_below_half"] == 0.5

    result = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 0
    header, row = result.output.splitlines()[:2]
    assert header.split()[:6] == ["category", "decided", "tie", "conflict", "no_quor.", "all_abst."]
    assert row.split()[:6] == ["composition", "3", "2", "1", "1", "0"] and row.split()[-2:] == ["0.600", "50.0%"]
