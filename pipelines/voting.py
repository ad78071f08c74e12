"""From judge votes to a label: order-averaged per-judge preferences, then a panel majority.

Per judge, each order gives the log-odds that image a is better, from the two option log-probs:
log P(A) - log P(B) when a is shown first ("AB"), log P(B) - log P(A) when it is shown second
("BA"). Their mean cancels a pure position bias exactly: a judge that always prefers "A" by the same
margin scores +m and -m, so 0, no preference. A judge needs both orders; if either abstained, the
judge abstains. Its probability that a is better is p_a = sigmoid(mean log-odds).

The panel picks image a or b when at least `quorum` judges prefer it and more prefer it than the
other; otherwise the pair is undecided (tie, no_quorum, all_abstained) and written as such.
Confidence treats judges as independent evidence (a product of experts): sigmoid of the sum of the
judges' log-odds for the winner. A unanimous panel is therefore at least as confident as each judge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from pipelines.records import Label
from schemas.config import PanelConfig

TEXT_VOTE_LOG_ODDS = 1.0


def _option_log_odds_a(vote: dict) -> float | None:
    """log P(option "A") - log P(option "B"); a choice read from text alone (a server that returned no
    option log-probabilities) counts as +/-TEXT_VOTE_LOG_ODDS; None for an abstention."""
    if vote.get("choice") is None:
        return None
    if vote.get("logprob_a") is None or vote.get("logprob_b") is None:
        return TEXT_VOTE_LOG_ODDS if vote["choice"] == "A" else -TEXT_VOTE_LOG_ODDS
    return vote["logprob_a"] - vote["logprob_b"]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 700.0), -700.0)))


@dataclass(frozen=True)
class JudgeVerdict:
    judge: str
    log_odds_a: float | None   # order-averaged log-odds that image a is better; None = abstained
    p_a: float | None          # sigmoid(log_odds_a)
    verdict: str               # "a" | "b" | "tie" | "abstain"
    position_flip: bool        # both orders named the same letter (the choice followed the position)


def judge_verdict(judge: str, votes: list[dict], tie_margin: float = 0.0) -> JudgeVerdict:
    by_order = {v["order"]: v for v in votes if v["judge"] == judge}
    ab, ba = by_order.get("AB"), by_order.get("BA")
    lo_ab = _option_log_odds_a(ab) if ab else None
    lo_ba = _option_log_odds_a(ba) if ba else None
    if lo_ab is None or lo_ba is None:
        return JudgeVerdict(judge, None, None, "abstain", False)
    log_odds = 0.5 * (lo_ab - lo_ba)  # in order BA, image a is option "B"
    p_a = _sigmoid(log_odds)
    if log_odds == 0.0:
        verdict = "tie"
    elif p_a > 0.5 + tie_margin:
        verdict = "a"
    elif p_a < 0.5 - tie_margin:
        verdict = "b"
    else:
        verdict = "tie"
    return JudgeVerdict(judge, log_odds, p_a, verdict, ab["choice"] == ba["choice"])


@dataclass(frozen=True)
class PanelLabel:
    winner: str | None         # "a" | "b" | None (undecided)
    reason: str | None         # why undecided: "tie" | "no_quorum" | "all_abstained"
    agreement: float | None    # share of judges with a verdict (a, b or tie) that chose the winner
    confidence: float | None   # sigmoid(sum of the judges' log-odds for the winner)
    verdicts: tuple[JudgeVerdict, ...]


def panel_label(votes: list[dict], judges: list[str], quorum: int, tie_margin: float = 0.0) -> PanelLabel:
    verdicts = tuple(judge_verdict(j, votes, tie_margin) for j in judges)
    voting = [v for v in verdicts if v.verdict != "abstain"]
    if not voting:
        return PanelLabel(None, "all_abstained", None, None, verdicts)
    n_a = sum(v.verdict == "a" for v in voting)
    n_b = sum(v.verdict == "b" for v in voting)
    if n_a == n_b:
        return PanelLabel(None, "tie", None, None, verdicts)
    winner, n_win = ("a", n_a) if n_a > n_b else ("b", n_b)
    if n_win < quorum:
        return PanelLabel(None, "no_quorum", None, None, verdicts)
    log_odds = sum(v.log_odds_a for v in voting)
    confidence = _sigmoid(log_odds if winner == "a" else -log_odds)
    return PanelLabel(winner, None, n_win / len(voting), confidence, verdicts)


def panel_decision(row: dict, panel: PanelConfig) -> Label:
    """The label pipelines.records.build_records stores: the panel's verdict on the row's `votes` JSON."""
    label = panel_label(json.loads(row.get("votes") or "[]"), panel.judges, panel.quorum, panel.tie_margin)
    return Label(label.winner, "vlm_panel", label.reason, label.agreement, label.confidence)
