"""The judge cascade: the escalation rule, its config checks, and a real run on local Ray with tiny judges
in which only the pairs the small panel is unsure of reach the large panel."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DECISIVE_PANELS, small_run_config

from pipelines.cascade import escalation_gate, order_judges
from pipelines.voting import PanelLabel, escalates, label_by, panel_decision
from schemas.config import ConfigError, RunConfig
from schemas.pair import VOTE

SMALL, LARGE = ["qwen2-vl-a"], ["qwen2-vl-a", "qwen2.5-vl-b", "qwen2-vl-c"]


def vote(judge, order, lp_a, lp_b):
    return {"judge": judge, "order": order, "choice": "A" if lp_a >= lp_b else "B", "logprob_a": lp_a,
            "logprob_b": lp_b, "note": None}


def prefers_a(judge, margin):
    """Votes of a judge whose order-averaged log-odds that image a is better are `margin`."""
    return [vote(judge, "AB", 0.0, -margin), vote(judge, "BA", -margin, 0.0)]


def label(winner, confidence, reason=None):
    return PanelLabel(winner, reason, None, confidence, None, ())


@pytest.mark.parametrize("small,threshold,escalated", [
    (label("a", 0.95), 0.8, False),          # confident enough: the small panel decides
    (label("b", 0.8), 0.8, False),           # at the threshold: still decided
    (label("a", 0.79), 0.8, True),           # decided, but below the threshold
    (label(None, None, "tie"), 0.6, True),   # every undecided outcome escalates
    (label(None, None, "conflict"), 0.6, True),
    (label(None, None, "no_quorum"), 0.6, True),
    (label(None, None, "all_abstained"), 0.6, True),
])
def test_escalation_rule(small, threshold, escalated):
    assert escalates(small, threshold) is escalated


def cascade_config(tmp_path, escalate_below=0.8, **overrides):
    return small_run_config(tmp_path, overrides={
        **DECISIVE_PANELS, ("categories", "composition", "rewards"): [],
        ("categories", "composition", "cascade"): {"panel": "anatomy", "escalate_below": escalate_below},
        **overrides})


def test_decision_records_the_deciding_panel_and_the_small_verdict(tmp_path):
    cfg = cascade_config(tmp_path)
    unsure = {"votes": prefers_a("qwen2-vl-a", 0.001) + prefers_a("qwen2.5-vl-b", 0.001)
                       + prefers_a("qwen2-vl-c", -0.002)}
    sure = {"votes": prefers_a("qwen2-vl-a", 0.003)}  # x1000: 3 nats, p = 0.95
    decided = panel_decision(sure, cfg, "composition")
    assert (decided.winner, decided.decided_by) == ("a", "cascade:small") and decided.confidence > 0.95
    assert decided.cascade_small == {"winner": "a", "lean": "a", "reason": None, "confidence": decided.confidence}
    escalated = panel_decision(unsure, cfg, "composition")  # small: 1 nat, p = 0.73 < 0.8
    assert escalated.decided_by == "panel" and escalated.cascade_small["winner"] == "a"
    assert escalated.cascade_small["confidence"] < 0.8
    plain = panel_decision(sure, small_run_config(tmp_path, overrides=DECISIVE_PANELS), "composition")
    assert plain.decided_by == "panel" and plain.cascade_small is None


def test_gate_adds_the_large_panel_only_to_rows_it_escalates(tmp_path):
    cfg = cascade_config(tmp_path)
    batch = pa.table({
        "category": ["composition"] * 4, "judges": [["qwen2-vl-a"]] * 3 + [[]],
        "votes": pa.array([prefers_a("qwen2-vl-a", 0.003), prefers_a("qwen2-vl-a", 0.0005), None, None], pa.list_(VOTE)),
        "stage_error": pa.nulls(4, pa.string())})
    assert escalation_gate(batch, cfg).column("judges").to_pylist() == [
        ["qwen2-vl-a"], LARGE, LARGE, []]  # decided; unsure; no votes (abstained); not judged


@pytest.mark.parametrize("cascade,error", [
    ({"panel": "nope"}, "composition.cascade.panel: unknown panel 'nope'"),
    ({"panel": "main"}, "the small panel is the category's own panel"),
    ({"panel": "anatomy", "escalate_below": 0.4}, "escalate_below"),
])
def test_bad_cascade_config_names_the_key(tmp_path, cascade, error):
    with pytest.raises(Exception, match=error):
        small_run_config(tmp_path, overrides={("categories", "composition", "cascade"): cascade})


def test_a_judge_needed_on_both_sides_of_the_gate_is_refused(tmp_path):
    # composition's small panel `tiny` runs qwen2.5-vl-b before the gate; aesthetics needs it (in `main`) after.
    with pytest.raises((ValueError, ConfigError), match="judges after the cascade's gate here, but before it as a small"):
        small_run_config(tmp_path, categories=("composition", "aesthetics"), overrides={
            ("panels", "tiny"): {"judges": ["qwen2.5-vl-b"], "quorum": 1},
            ("categories", "composition", "cascade"): {"panel": "tiny"},
            ("categories", "aesthetics", "cascade"): {"panel": "anatomy"}})


def test_small_judges_run_first(tmp_path):
    cfg = small_run_config(tmp_path, overrides={("panels", "tiny"): {"judges": ["qwen2-vl-c"], "quorum": 1},
                                                ("categories", "composition", "cascade"): {"panel": "tiny"}})
    assert isinstance(cfg, RunConfig)
    assert order_judges(cfg, LARGE) == ["qwen2-vl-c", "qwen2-vl-a", "qwen2.5-vl-b"]


def test_only_uncertain_pairs_reach_the_large_panel(ray_session, tmp_path):
    """A real run: 8 composition pairs, the one-judge `anatomy` panel first, `main` for the pairs it is unsure
    of. The large panel's other judges vote on exactly the escalated pairs (their pools ran no model on the
    rest), each label names its deciding panel, and the stats count the escalations and the agreement."""
    from pipelines.run import run

    cfg = cascade_config(tmp_path, escalate_below=ESCALATE_BELOW)
    report = run(cfg)
    out = tmp_path / "out"
    rows = [r for kind in ("pairs", "undecided") for f in sorted((out / kind).rglob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 8
    escalated = 0
    for r in rows:
        small = label_by(cfg.panels["anatomy"], r["votes"])
        judges = Counter(v["judge"] for v in r["votes"])
        if escalates(small, ESCALATE_BELOW):
            escalated += 1
            assert r["decided_by"] == "panel"
            assert judges == {j: 2 for j in LARGE}  # the shared judge's votes serve both panels: no second call
            big = label_by(cfg.panels["main"], r["votes"])
            assert r.get("reason") == big.reason and (r.get("confidence") or None) == big.confidence
        else:
            assert r["decided_by"] == "cascade:small" and r["confidence"] == small.confidence >= ESCALATE_BELOW
            assert judges == {"qwen2-vl-a": 2}  # the large judges never saw it
        assert r["cascade_small"]["confidence"] == small.confidence
    assert 0 < escalated < 8, "the test needs both outcomes: move ESCALATE_BELOW"
    c = report["categories"]["composition"]["cascade"]
    assert (c["labelled"], c["escalated"], c["escalated_share"]) == (8, escalated, round(escalated / 8, 4))
    large_decided = [r for r in rows if r["decided_by"] == "panel" and r.get("reason") is None]
    assert c["large_decided"] == len(large_decided)
    if large_decided:
        agree = sum(r["cascade_small"]["lean"] == "w" for r in large_decided)
        assert c["small_agreement"] == round(agree / len(large_decided), 4)
    from pipelines.stats import format_stats

    assert f"composition cascade: {escalated} of 8 escalated to the large panel" in format_stats(report)
    # The calls the cascade saved: two votes per judge call, the small judge on every pair, the two large-only
    # judges on the escalated ones.
    assert report["categories"]["composition"]["votes"] == 2 * 8 + 2 * 2 * escalated


ESCALATE_BELOW = 0.64  # the small panel's confidences here run 0.56-0.67: six pairs escalate, two do not


def test_stats_count_escalations_and_small_vs_large_agreement(tmp_path):
    from datetime import datetime, timezone

    from pipelines.stats import compute_stats
    from schemas.pair import pair_schema, undecided_schema

    def small(winner, lean, confidence=None, reason=None):
        return {"winner": winner, "lean": lean, "reason": reason, "confidence": confidence}

    common = {"prompt": "p", "prompt_source": "s", "created_at": datetime.now(timezone.utc), "pipeline_version": "t",
              "config_hash": "h", "width": 8, "height": 8, "votes": []}
    shards = {("pairs", "composition"): [
        {"label_source": "vlm_panel", "decided_by": "cascade:small", "cascade_small": small("w", "w", 0.9)},
        {"label_source": "vlm_panel", "decided_by": "panel", "cascade_small": small(None, "w", reason="tie")},
        {"label_source": "vlm_panel", "decided_by": "panel", "cascade_small": small("l", "l", 0.6)},  # overruled
    ], ("undecided", "composition"): [
        {"reason": "tie", "decided_by": "panel", "cascade_small": small(None, "a", reason="no_quorum")},
    ], ("pairs", "aesthetics"): [  # no cascade: a plain panel label
        {"label_source": "vlm_panel", "decided_by": "panel", "cascade_small": None},
        {"label_source": "ocr", "decided_by": None, "cascade_small": None},
    ]}
    for (kind, category), rows in shards.items():
        path = tmp_path / kind / category / "part-r_1-00000-x-000.parquet"
        path.parent.mkdir(parents=True)
        schema = pair_schema() if kind == "pairs" else undecided_schema()
        pq.write_table(pa.Table.from_pylist([{**common, "category": category, "pair_id": f"{category}{i}",
                                              "prompt_id": str(i), **r} for i, r in enumerate(rows)], schema=schema), path)
    report = compute_stats(tmp_path)
    assert report["categories"]["composition"]["cascade"] == {
        "labelled": 4, "escalated": 3, "escalated_share": 0.75, "large_decided": 2, "small_agreement": 0.5,
        "small_decided": 1, "small_decided_agreement": 0.0}
    assert report["categories"]["aesthetics"]["cascade"] is None
