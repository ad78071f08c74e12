"""`pairforge stats`: abstentions, position flips and undecided reasons counted from real shards."""

import tracemalloc
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
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
    assert c["decisions"] == {"decided": 3, "tie": 2, "conflict": 1, "no_quorum": 1, "all_abstained": 0,
                              "gap_too_small": 0, "gap_too_large": 0, "unscored": 0}  # score-labelled (video) reasons
    assert c["mean_confidence"] == 0.6 and c["confidence_below_half"] == 0.5  # over the two that store one
    totals = compute_stats(tmp_path)["totals"]
    assert totals["decisions"] == c["decisions"] and totals["confidence_below_half"] == 0.5

    result = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 0
    header, row = result.output.splitlines()[:2]
    assert header.split()[:6] == ["category", "decided", "tie", "conflict", "no_quor.", "all_abst."]
    assert row.split()[:6] == ["composition", "3", "2", "1", "1", "0"] and row.split()[-2:] == ["0.600", "50.0%"]


def existing(source):
    return {"name": "existing", "model": source, "seed": 0, "steps": 0, "guidance_scale": 0.0, "params": "{}"}


QUALITY = {"sd": 0.0, "flux": 0.4, "existing": -0.3}  # mean quality of each side's population; spread 0.9 for all
MATCHES = {"composition": [("sd", "flux")], "aesthetics": [("existing", "sd"), ("existing", "flux")],
           "alignment": [("sd", "sd"), ("flux", "flux")]}  # alignment: one generator, original vs perturbed prompt


def simulate_output(out, n_per_category, rng):
    """Decided pairs drawn from the Arena's generative model: each image's quality ~ N(QUALITY[side], 0.9^2),
    the better image wins. Returns {pair_id: (winner participant, loser participant, q_w - q_l)}."""
    truth, name = {}, {"sd": "sd", "flux": "flux", "existing": "existing:web"}
    record = {"sd": gen("sd"), "flux": gen("flux"), "existing": existing("web")}
    for category, matches in MATCHES.items():
        rows = []
        for i in range(n_per_category):
            a, b = matches[rng.integers(len(matches))]
            qa, qb = rng.normal(QUALITY[a], 0.9), rng.normal(QUALITY[b], 0.9)
            w, lo = (a, b) if qa > qb else (b, a)
            truth[f"{category}{i}"] = (name[w], name[lo], abs(qa - qb))
            rows.append({"pair_id": f"{category}{i}", "prompt_id": str(i), "label_source": "vlm_panel",
                         "generator_w": record[w], "generator_l": record[lo]})
        write(out, "pairs", pair_schema(), rows, category=category)
    return truth


def test_every_decided_pair_gets_the_generative_models_gap(tmp_path):
    """Generators, a prompt source's existing images and same-generator (alignment) pairs: every decided pair
    gets a gap, and the stored gap of each (winner, loser) is the Monte Carlo mean of q_w - q_l over the
    simulated pairs with that outcome, in the Arena's unit (spreads' geometric mean 1/sqrt(2))."""
    truth = simulate_output(tmp_path, 20_000, np.random.default_rng(0))
    arena = compute_stats(tmp_path)["arena"]
    assert arena["gaps"] == len(truth) and arena["pairs"] == 40_000 and arena["spreads"] == "common"
    assert {r["generator"] for r in arena["leaderboard"]} == {"sd", "flux", "existing:web"}
    stored = pq.read_table(tmp_path / "arena" / "gaps.parquet").to_pylist()
    assert sorted(g["pair_id"] for g in stored) == sorted(truth)
    by_outcome, simulated = defaultdict(set), defaultdict(list)
    for g in stored:
        w, lo, d = truth[g["pair_id"]]
        assert (g["winner"], g["loser"]) == (w, lo)
        by_outcome[w, lo].add(g["gap"])
        simulated[w, lo].append(d * np.sqrt(0.5) / 0.9)
    assert len(by_outcome) == 8  # 3 cross-generator matches both ways, 2 same-generator
    for outcome, gaps in by_outcome.items():
        assert len(gaps) == 1 and gaps.pop() == pytest.approx(np.mean(simulated[outcome]), rel=0.04), outcome


def test_stats_memory_does_not_grow_with_the_number_of_pairs(tmp_path, monkeypatch):
    """Peak Python heap (numpy included) during `compute_stats`, Arena fit and gap file included, for 4x the
    pairs: flat, since everything is counted per batch and the gaps are written batch by batch (small
    batches here, so that small files show it)."""
    import pipelines.stats

    monkeypatch.setattr(pipelines.stats, "_BATCH", 1024)
    peaks = []
    for n in (2_500, 5_000, 20_000):
        out = tmp_path / str(n)
        simulate_output(out, n, np.random.default_rng(n))
        tracemalloc.start()
        report = compute_stats(out)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert report["arena"]["gaps"] == 3 * n
    # The first size only warms up imports and caches. Then: under 2 bytes per added pair (pyarrow's and
    # numpy's per-batch buffers and caches), where one Python tuple per pair would take ~250.
    assert peaks[2] - peaks[1] < 2 * 3 * (20_000 - 5_000), peaks
