"""From judge votes to a label: the count of judges decides, the pooled evidence must agree.

Per judge, each order gives the log-odds that image a is better, from the two option log-probs:
log P(A) - log P(B) when a is shown first ("AB"), log P(B) - log P(A) when it is shown second
("BA"). Their mean cancels a pure position bias exactly: a judge that always prefers "A" by the same
margin scores +m and -m, so 0, no preference. A judge needs both orders; if either abstained, the
judge abstains. An answer read from text alone (a server that returned no option log-probabilities)
stands for probability `text_vote_p` (a panel setting): log-odds +/-logit(text_vote_p), so its weight
is stated, not an accident of a constant. A panel's `logit_scale` multiplies a judge's log-prob
log-odds (temperature scaling), to temper an over-confident judge before it is pooled.

The tie threshold t = logit(0.5 + tie_margin): `tie_margin` is on the probability scale and the same
t applies to each judge and to the pooled evidence. A judge's verdict is "a" if its log-odds L > t,
"b" if L < -t, else "tie".

The rule, for the judges that did not abstain:
1. Count (ViPO's majority vote): the image more judges prefer, with at least `quorum` of them. A
   count is robust to one over-confident judge, which a sum of log-odds is not.
2. Pooled evidence: S = the sum of their log-odds (judges as independent evidence, a product of
   experts). |S| <= t is a tie: the panel as a whole has no preference, whatever the count.
3. The count and S must name the same image; when they do not (two judges barely for a, one sure of
   b) the pair is undecided with reason "conflict", not a label that contradicts its own evidence.
4. Decided: confidence = sigmoid(|S|), the panel's probability that the winner is better, always
   >= 0.5 (> sigmoid(t)); agreement = the share of the voting judges that chose the winner.
Undecided reasons, first that applies: all_abstained, tie (equal counts), no_quorum, tie (|S| <= t),
conflict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.category import Label
from schemas.config import PanelConfig, RunConfig

TIE_MARGIN = PanelConfig.model_fields["tie_margin"].default
TEXT_VOTE_P = PanelConfig.model_fields["text_vote_p"].default


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 700.0), -700.0)))


def tie_threshold(tie_margin: float) -> float:
    """The log-odds t with |L| <= t a tie: a probability within `tie_margin` of 0.5."""
    return logit(0.5 + tie_margin)


def _option_log_odds_a(vote: dict, text_log_odds: float, scale: float) -> float | None:
    """log P(option "A") - log P(option "B"), times `scale`; a choice read from text alone counts as
    +/-text_log_odds; None for an abstention."""
    if vote.get("choice") is None:
        return None
    if vote.get("logprob_a") is None or vote.get("logprob_b") is None:
        return text_log_odds if vote["choice"] == "A" else -text_log_odds
    return scale * (vote["logprob_a"] - vote["logprob_b"])


@dataclass(frozen=True)
class JudgeVerdict:
    judge: str
    log_odds_a: float | None   # order-averaged log-odds that image a is better; None = abstained
    p_a: float | None          # sigmoid(log_odds_a)
    verdict: str               # "a" | "b" | "tie" | "abstain"
    position_flip: bool        # both orders named the same letter (the choice followed the position)


def judge_verdict(judge: str, votes: list[dict], tie_margin: float = TIE_MARGIN,
                  text_vote_p: float = TEXT_VOTE_P, scale: float = 1.0) -> JudgeVerdict:
    by_order = {v["order"]: v for v in votes if v["judge"] == judge}
    ab, ba = by_order.get("AB"), by_order.get("BA")
    text = logit(text_vote_p)
    lo_ab = _option_log_odds_a(ab, text, scale) if ab else None
    lo_ba = _option_log_odds_a(ba, text, scale) if ba else None
    if lo_ab is None or lo_ba is None:
        return JudgeVerdict(judge, None, None, "abstain", False)
    log_odds = 0.5 * (lo_ab - lo_ba)  # in order BA, image a is option "B"
    t = tie_threshold(tie_margin)
    verdict = "a" if log_odds > t else "b" if log_odds < -t else "tie"
    return JudgeVerdict(judge, log_odds, _sigmoid(log_odds), verdict, ab["choice"] == ba["choice"])


@dataclass(frozen=True)
class PanelLabel:
    winner: str | None         # "a" | "b" | None (undecided)
    reason: str | None         # why undecided: "tie" | "no_quorum" | "conflict" | "all_abstained"
    agreement: float | None    # share of judges with a verdict (a, b or tie) that chose the winner
    confidence: float | None   # sigmoid(|pooled log-odds|): the winner's probability, >= 0.5
    pooled_log_odds_a: float | None  # sum of the voting judges' log-odds that a is better
    verdicts: tuple[JudgeVerdict, ...]


def panel_label(votes: list[dict], judges: list[str], quorum: int, tie_margin: float = TIE_MARGIN,
                text_vote_p: float = TEXT_VOTE_P, logit_scale: dict[str, float] | None = None) -> PanelLabel:
    scales = logit_scale or {}
    verdicts = tuple(judge_verdict(j, votes, tie_margin, text_vote_p, scales.get(j, 1.0)) for j in judges)
    voting = [v for v in verdicts if v.verdict != "abstain"]
    if not voting:
        return PanelLabel(None, "all_abstained", None, None, None, verdicts)
    pooled = math.fsum(v.log_odds_a for v in voting)

    def undecided(reason: str) -> PanelLabel:
        return PanelLabel(None, reason, None, None, pooled, verdicts)

    n_a = sum(v.verdict == "a" for v in voting)
    n_b = sum(v.verdict == "b" for v in voting)
    if n_a == n_b:
        return undecided("tie")
    winner, n_win = ("a", n_a) if n_a > n_b else ("b", n_b)
    if n_win < quorum:
        return undecided("no_quorum")
    if abs(pooled) <= tie_threshold(tie_margin):
        return undecided("tie")
    if (pooled > 0) != (winner == "a"):
        return undecided("conflict")
    return PanelLabel(winner, None, n_win / len(voting), _sigmoid(abs(pooled)), pooled, verdicts)


def row_votes(row: dict) -> list[dict]:
    """A finished work row's votes (every judge that ran on it)."""
    return row.get("votes") or []


def label_by(panel: PanelConfig, votes: list[dict]) -> PanelLabel:
    return panel_label(votes, panel.judges, panel.quorum, panel.tie_margin, panel.text_vote_p, panel.logit_scale)


def escalates(small: PanelLabel, escalate_below: float) -> bool:
    """The cascade's rule: the large panel judges a pair unless the small panel decided it with confidence at
    least `escalate_below`. Every undecided outcome escalates: a tie, no quorum, a conflict between the count
    and the pooled evidence, all abstained."""
    return small.winner is None or small.confidence < escalate_below


def _lean(label: PanelLabel) -> str | None:
    """The image the pooled evidence favours, decided or not (None: no evidence, or exactly even)."""
    s = label.pooled_log_odds_a
    return None if not s else "a" if s > 0 else "b"


def panel_decision(row: dict, cfg: RunConfig, category: str) -> Label:
    """The label pipelines.records.build_records stores for a category labelled by its panel: the panel's
    verdict on the row's votes, or with a cascade (`categories.<name>.cascade`) the small panel's when it does
    not escalate (pipelines/cascade.py ran the large panel only on the rows that escalate), else the large
    panel's. `decided_by` names which; `cascade_small` keeps the small panel's verdict either way, for the
    small-vs-large agreement in the stats."""
    ccfg = cfg.categories[category]
    votes = row_votes(row)
    small = None
    if ccfg.cascade is not None:
        small = label_by(cfg.panels[ccfg.cascade.panel], votes)
        if not escalates(small, ccfg.cascade.escalate_below):
            return _label(small, "cascade:small", small)
    return _label(label_by(cfg.panels[ccfg.panel], votes), "panel", small)


def _label(label: PanelLabel, decided_by: str, small: PanelLabel | None) -> Label:
    summary = None if small is None else {"winner": small.winner, "lean": _lean(small), "reason": small.reason,
                                          "confidence": small.confidence}
    return Label(label.winner, "vlm_panel", label.reason, label.agreement, label.confidence, decided_by, summary)
