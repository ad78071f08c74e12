"""Panel aggregation: properties of order-averaged judge verdicts and the majority vote."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.voting import judge_verdict, panel_label

logprob = st.floats(min_value=-30, max_value=0, allow_nan=False)


def vote(judge, order, lp_a, lp_b, abstain=False):
    choice = None if abstain else ("A" if lp_a >= lp_b else "B")
    return {"judge": judge, "order": order, "choice": choice, "logprob_a": None if abstain else lp_a,
            "logprob_b": None if abstain else lp_b, "note": "x" if abstain else None}


def swapped(votes):
    """The same judgements with images a and b exchanged: order AB becomes BA and vice versa."""
    flip = {"AB": "BA", "BA": "AB"}
    return [{**v, "order": flip[v["order"]]} for v in votes]


judge_votes = st.tuples(logprob, logprob, logprob, logprob)


@given(st.lists(judge_votes, min_size=1, max_size=5), st.integers(1, 5))
@settings(max_examples=200, deadline=None)
def test_label_is_symmetric_under_swapping_a_and_b(per_judge, quorum):
    judges = [f"j{i}" for i in range(len(per_judge))]
    quorum = min(quorum, len(judges))
    votes = [v for j, (a1, b1, a2, b2) in zip(judges, per_judge)
             for v in (vote(j, "AB", a1, b1), vote(j, "BA", a2, b2))]
    label, mirrored = panel_label(votes, judges, quorum), panel_label(swapped(votes), judges, quorum)
    assert {"a": "b", "b": "a", None: None}[label.winner] == mirrored.winner
    assert label.reason == mirrored.reason
    if label.winner:
        assert label.confidence == pytest.approx(mirrored.confidence, abs=1e-9)
        assert label.agreement == mirrored.agreement


@given(st.floats(min_value=0, max_value=30), logprob)
def test_a_judge_that_always_answers_A_has_no_preference(margin, base):
    # "A" is preferred by the same margin whichever image is shown first: pure position bias.
    votes = [vote("j", "AB", base, base - margin), vote("j", "BA", base, base - margin)]
    v = judge_verdict("j", votes)
    assert v.log_odds_a == 0.0 and v.p_a == 0.5 and v.verdict == "tie"
    assert v.position_flip or margin == 0
    label = panel_label(votes, ["j"], quorum=1)
    assert label.winner is None and label.reason == "tie"


@given(st.lists(st.tuples(st.floats(0.01, 10), st.floats(0.01, 10)), min_size=1, max_size=6))
def test_unanimous_panel_is_at_least_as_confident_as_each_judge(margins):
    judges = [f"j{i}" for i in range(len(margins))]
    # every judge prefers image a: "A" in order AB, "B" in order BA
    votes = [v for j, (m1, m2) in zip(judges, margins) for v in (vote(j, "AB", 0.0, -m1), vote(j, "BA", -m2, 0.0))]
    label = panel_label(votes, judges, quorum=len(judges))
    assert label.winner == "a" and label.agreement == 1.0
    for j in judges:
        assert label.confidence >= judge_verdict(j, votes).p_a - 1e-12


def test_abstentions_are_recorded_not_coerced():
    both = [vote("j1", "AB", -0.1, -2.0), vote("j1", "BA", -2.0, -0.1)]
    one_order_missing = [vote("j2", "AB", -0.1, -2.0), vote("j2", "BA", 0, 0, abstain=True)]
    assert judge_verdict("j2", one_order_missing).verdict == "abstain"
    label = panel_label(both + one_order_missing, ["j1", "j2", "j3"], quorum=1)
    assert label.winner == "a" and label.agreement == 1.0  # abstainers do not dilute agreement
    label = panel_label(both + one_order_missing, ["j1", "j2", "j3"], quorum=2)
    assert label.winner is None and label.reason == "no_quorum"
    nobody = panel_label([vote("j1", "AB", 0, 0, abstain=True)], ["j1", "j2"], quorum=1)
    assert nobody.winner is None and nobody.reason == "all_abstained" and nobody.confidence is None


def test_split_panel_is_a_tie_and_majority_wins():
    pro_a = lambda j: [vote(j, "AB", -0.1, -3.0), vote(j, "BA", -3.0, -0.1)]  # noqa: E731
    pro_b = lambda j: [vote(j, "AB", -3.0, -0.1), vote(j, "BA", -0.1, -3.0)]  # noqa: E731
    assert panel_label(pro_a("x") + pro_b("y"), ["x", "y"], 1).reason == "tie"
    label = panel_label(pro_a("x") + pro_b("y") + pro_b("z"), ["x", "y", "z"], 2)
    assert label.winner == "b" and label.agreement == pytest.approx(2 / 3)
    assert 0.5 < label.confidence < 1.0
    assert math.isfinite(label.confidence)
