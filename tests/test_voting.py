"""Panel aggregation: properties of order-averaged judge verdicts, the majority vote and the pooled evidence."""

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


@given(st.lists(st.tuples(st.floats(0.21, 10), st.floats(0.21, 10)), min_size=1, max_size=6))
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


# --- one rule: the count decides, the pooled evidence must agree, the confidence is the winner's ---------

def text_vote(judge, order, choice):
    """An answer read from text alone: a server that returned no option log-probabilities."""
    return {"judge": judge, "order": order, "choice": choice, "logprob_a": None, "logprob_b": None,
            "note": f"parsed from text: {choice!r}"}


def judge_at(judge, p_a):
    """Votes in both orders whose order-averaged P(a better) is exactly p_a."""
    return [vote(judge, "AB", math.log(p_a), math.log(1 - p_a)), vote(judge, "BA", math.log(1 - p_a), math.log(p_a))]


def reference_log_odds(votes, judge, text_vote_p=0.6):
    """A judge's order-averaged log-odds that a is better, re-derived here from the votes; None = abstained."""
    lo = {}
    for v in votes:
        if v["judge"] == judge:
            if v["choice"] is None:
                return None
            raw = v["logprob_a"] - v["logprob_b"] if v["logprob_a"] is not None else \
                (1 if v["choice"] == "A" else -1) * math.log(text_vote_p / (1 - text_vote_p))
            lo[v["order"]] = raw
    return 0.5 * (lo["AB"] - lo["BA"]) if len(lo) == 2 else None


# A judge answers with log-probs, in text only, or abstains, in each order.
answer = st.one_of(st.tuples(st.just("lp"), logprob, logprob), st.tuples(st.just("text"), st.sampled_from("AB")),
                   st.just(("abstain",)))


def votes_of(per_judge):
    out = []
    for j, answers in per_judge.items():
        for order, a in zip(("AB", "BA"), answers):
            if a[0] == "lp":
                out.append(vote(j, order, a[1], a[2]))
            elif a[0] == "text":
                out.append(text_vote(j, order, a[1]))
            else:
                out.append(vote(j, order, 0, 0, abstain=True))
    return out


panels = st.lists(st.tuples(answer, answer), min_size=1, max_size=5).map(
    lambda answers: {f"j{i}": a for i, a in enumerate(answers)})


@given(panels, st.integers(1, 5))
@settings(max_examples=400, deadline=None)
def test_a_decided_label_agrees_with_its_evidence(per_judge, quorum):
    judges, votes = list(per_judge), votes_of(per_judge)
    quorum = min(quorum, len(judges))
    label = panel_label(votes, judges, quorum)
    evidence = [lo for lo in (reference_log_odds(votes, j) for j in judges) if lo is not None]
    pooled = math.fsum(evidence)
    if label.winner is None:
        return
    assert label.confidence >= 0.5  # the stored confidence is the winner's probability
    assert label.confidence == pytest.approx(1 / (1 + math.exp(-abs(pooled))), rel=1e-9)
    assert (pooled > 0) == (label.winner == "a")  # the pooled evidence points at the winner
    assert label.agreement * len(evidence) >= quorum


@given(panels, st.integers(1, 5), st.floats(0, 0.3))
@settings(max_examples=400, deadline=None)
def test_count_against_evidence_is_a_conflict_and_near_zero_evidence_a_tie(per_judge, quorum, tie_margin):
    judges, votes = list(per_judge), votes_of(per_judge)
    quorum = min(quorum, len(judges))
    text_vote_p = 0.5 + tie_margin + 0.1
    label = panel_label(votes, judges, quorum, tie_margin, text_vote_p)
    t = math.log((0.5 + tie_margin) / (0.5 - tie_margin))
    evidence = {j: reference_log_odds(votes, j, text_vote_p) for j in judges}
    evidence = {j: lo for j, lo in evidence.items() if lo is not None}
    pooled = math.fsum(evidence.values())
    n_a, n_b = sum(lo > t for lo in evidence.values()), sum(lo < -t for lo in evidence.values())
    if abs(pooled) <= t:
        assert label.winner is None  # no decision on near-zero evidence, whatever the count
    if max(n_a, n_b) >= quorum and n_a != n_b and abs(pooled) > t and (pooled > 0) != (n_a > n_b):
        assert label.winner is None and label.reason == "conflict"
    if label.winner is not None:
        assert label.confidence >= 0.5 and label.winner == ("a" if n_a > n_b else "b")


@given(panels, st.integers(1, 5), st.floats(0, 0.3), st.dictionaries(st.sampled_from(["j0", "j1", "j2"]),
                                                                   st.floats(0.1, 10)))
@settings(max_examples=300, deadline=None)
def test_every_outcome_is_symmetric_under_swapping_a_and_b(per_judge, quorum, tie_margin, scales):
    judges, votes = list(per_judge), votes_of(per_judge)
    quorum, scales = min(quorum, len(judges)), {j: s for j, s in scales.items() if j in per_judge}
    args = (judges, quorum, tie_margin, 0.5 + tie_margin + 0.1, scales)
    label, mirrored = panel_label(votes, *args), panel_label(swapped(votes), *args)
    assert {"a": "b", "b": "a", None: None}[label.winner] == mirrored.winner and label.reason == mirrored.reason
    if label.winner:
        assert label.confidence == pytest.approx(mirrored.confidence, rel=1e-12)
        assert label.agreement == mirrored.agreement


def test_the_issue_counterexample_is_a_conflict_not_a_confident_loser():
    # Two judges at p = 0.55 for a, one at p = 0.01 (sure of b): the count says a, the evidence b.
    votes = judge_at("j1", 0.55) + judge_at("j2", 0.55) + judge_at("j3", 0.01)
    for tie_margin in (0.0, 0.025):
        label = panel_label(votes, ["j1", "j2", "j3"], 2, tie_margin)
        assert (label.winner, label.reason, label.confidence) == (None, "conflict", None)
    # The same judges with the sure one on the majority's side: decided, with the pooled confidence.
    label = panel_label(judge_at("j1", 0.55) + judge_at("j2", 0.55) + judge_at("j3", 0.99), ["j1", "j2", "j3"], 2)
    assert label.winner == "a" and label.confidence == pytest.approx(1 / (1 + (0.45 / 0.55) ** 2 * 0.01 / 0.99))


def test_near_zero_pooled_evidence_is_a_tie_by_default():
    # The demo's tiny random judges: 0.25-0.6 nats for whichever letter comes first, ~1e-3 nats of image preference.
    demo = [v for j, first, image in (("a", 0.26, 4e-4), ("b", 0.35, -5e-4), ("c", 0.55, 1.5e-3))
            for v in (vote(j, "AB", 0.0, -(first + image)), vote(j, "BA", 0.0, -(first - image)))]
    label = panel_label(demo, ["a", "b", "c"], 2)
    assert label.winner is None and label.reason == "tie"
    # Two judges just past the margin for a, one a little further for b: the count says a, the pooled
    # evidence (+0.013 nats) nothing.
    near = judge_at("x", 0.53) + judge_at("y", 0.53) + judge_at("z", 1 - 0.53 * 1.05)
    label = panel_label(near, ["x", "y", "z"], 2)
    assert label.winner is None and label.reason == "tie"


@given(st.floats(0.55, 0.99), st.sampled_from([("A", "B", "a"), ("B", "A", "b")]))
def test_text_only_answers_count_at_the_stated_probability(text_vote_p, choices):
    first, second, image = choices
    votes = [text_vote("t", "AB", first), text_vote("t", "BA", second)]
    v = judge_verdict("t", votes, tie_margin=0.025, text_vote_p=text_vote_p)
    assert v.verdict == image
    assert v.p_a == pytest.approx(text_vote_p if image == "a" else 1 - text_vote_p)
    # Following the position in text ("A" twice) is no preference, as with log-probs.
    assert judge_verdict("t", [text_vote("t", "AB", "A"), text_vote("t", "BA", "A")], 0.025, text_vote_p).verdict == "tie"


def test_text_only_answers_do_not_outweigh_log_prob_evidence_by_accident():
    # Two judges answer "a" in text only, one reads p = 0.9 for b from its log-probs: the count says a,
    # the stated weight of a text answer (p = 0.6 each) does not beat a 0.9 read: a conflict.
    votes = [text_vote("t1", "AB", "A"), text_vote("t1", "BA", "B"), text_vote("t2", "AB", "A"),
             text_vote("t2", "BA", "B")] + judge_at("lp", 0.1)
    label = panel_label(votes, ["t1", "t2", "lp"], 2)
    assert (label.winner, label.reason) == (None, "conflict")
    # Stated as surer (p = 0.95 each), the same answers outweigh it and the pair is decided.
    label = panel_label(votes, ["t1", "t2", "lp"], 2, text_vote_p=0.95)
    assert label.winner == "a" and label.confidence == pytest.approx(1 / (1 + (0.05 / 0.95) ** 2 * 9))


def test_logit_scale_tempers_a_judge_but_not_a_text_answer():
    votes = judge_at("sure", 0.999) + [text_vote("t", "AB", "B"), text_vote("t", "BA", "A")]
    assert judge_verdict("sure", votes, scale=0.5).log_odds_a == pytest.approx(0.5 * math.log(999))
    assert judge_verdict("t", votes, scale=0.5).log_odds_a == pytest.approx(-math.log(1.5))


def test_panel_settings_that_cannot_work_fail_with_the_key():
    from pydantic import ValidationError

    from schemas.config import PanelConfig

    with pytest.raises(ValidationError, match="text_vote_p 0.52 is within tie_margin 0.025"):
        PanelConfig(judges=["a"], quorum=1, text_vote_p=0.52)
    with pytest.raises(ValidationError, match="logit_scale names b, not in this panel"):
        PanelConfig(judges=["a"], quorum=1, logit_scale={"b": 2.0})
