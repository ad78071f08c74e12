"""VLM judges (Qwen2-VL / Qwen2.5-VL class) on any backend of workers/judge_backends.py.

Pairwise mode: both image orders, the choice read from the log-probabilities of the option tokens
"A" and "B" at the answer position (the answer is constrained to those tokens). A vote abstains,
with a note, when the option log-probabilities are missing or non-finite and no option can be read
from the answer text, or when they carry less than `min_option_mass` of the model's full
next-token distribution (it was not answering the question). Abstentions are never coerced.

Score mode (Z-Reward style): a 1-10 rubric score read as a distribution from the score tokens'
log-probabilities; "10" is two tokens for most tokenizers, so P(10) = P("1") P("0" | "1") and
P(1) = P("1") (1 - P("0" | "1")), from a second call with the answer prefix "1".
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa

from schemas.config import JudgeConfig
from workers.judge_backends import OptionResult, make_backend
from workers.rubrics import OPTIONS, pairwise_messages, parse_choice, sanitize_untrusted, score_messages
from workers.runtime import column, decode_image, setup_worker, with_columns

SCORES = [str(s) for s in range(1, 11)]


def vote_from_result(judge: str, order: str, result: OptionResult, min_option_mass: float) -> dict:
    """One vote record from a backend's answer for one order."""
    lp_a, lp_b = (float(x) for x in result.logprobs)
    finite = math.isfinite(lp_a) and math.isfinite(lp_b)
    vote = {"judge": judge, "order": order, "choice": None, "logprob_a": lp_a if finite else None,
            "logprob_b": lp_b if finite else None, "note": None}
    if finite:
        mass = math.exp(lp_a) + math.exp(lp_b)
        if mass < min_option_mass:
            vote["note"] = f"option mass {mass:.3g} < {min_option_mass}"
        else:
            vote["choice"] = OPTIONS[0] if lp_a >= lp_b else OPTIONS[1]
        return vote
    vote["choice"] = parse_choice(result.text)
    if vote["choice"]:
        vote["note"] = f"parsed from text: {result.text[:80]!r}"
    else:
        vote["note"] = f"unparseable: {(result.text or 'no option logprobs')[:200]!r}"
    return vote


def abstention(judge: str, order: str, note: str) -> dict:
    return {"judge": judge, "order": order, "choice": None, "logprob_a": None, "logprob_b": None, "note": note}


def score_distribution(backend, requests: list[tuple[list[dict], list]]) -> list[dict]:
    """Per request: {expected, std, mass, probs} over the scores 1..10 (None fields if unreadable)."""
    if backend.is_single_token("10"):
        lp = np.stack([r.logprobs for r in backend.option_logprobs(requests, SCORES)])
    else:
        head = np.stack([r.logprobs for r in backend.option_logprobs(requests, SCORES[:9])])
        zero = np.stack([r.logprobs for r in backend.option_logprobs(requests, ["0"], prefix="1")])[:, 0]
        with np.errstate(divide="ignore"):
            lp = np.concatenate([head[:, :1] + np.log1p(-np.exp(zero))[:, None], head[:, 1:],
                                 head[:, :1] + zero[:, None]], axis=1)
    out = []
    values = np.arange(1, 11, dtype=float)
    for row in lp:
        p = np.exp(row)
        mass = float(np.nansum(p))
        if not np.isfinite(p).all() or mass <= 0:
            out.append({"expected": None, "std": None, "mass": None, "probs": None})
            continue
        p = p / mass
        mean = float((p * values).sum())
        out.append({"expected": mean, "std": float(np.sqrt((p * (values - mean) ** 2).sum())), "mass": mass,
                    "probs": [round(float(x), 6) for x in p]})
    return out


class VLMJudge:
    """Ray Data actor. In pairwise mode, for rows whose `judges` (comma-separated names) include this
    judge and whose images were generated, reads `category`, `prompt`, `image_a`, `image_b` (PNG bytes)
    and appends this judge's two votes (orders AB and BA) to `votes` (a JSON list). In score mode it
    appends `{judge, side, expected, std, mass, probs}` per image to `scores`. Other rows pass through."""

    input_columns = ("judges", "category", "prompt", "image_a", "image_b")
    output_columns = ("votes", "scores")

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1, mode: str = "pairwise",
                 backend=None):
        """`backend`: an already-built backend to share (a notebook, a test) instead of loading the model."""
        setup_worker(num_threads)
        self.name, self.mode = name, mode
        self.cfg = JudgeConfig.model_validate(cfg)
        self.backend = backend or make_backend(model_path, self.cfg)

    def _rows(self, batch: pa.Table):
        """(index, category, sanitized prompt, image a, image b) of the rows for this judge; rows with an
        undecodable image are reported as (index, error)."""
        judges, categories, prompts = column(batch, "judges"), column(batch, "category"), column(batch, "prompt")
        image_a, image_b = column(batch, "image_a"), column(batch, "image_b")
        for i in range(batch.num_rows):
            if self.name not in (judges[i] or "").split(",") or image_a[i] is None or image_b[i] is None:
                continue
            try:
                a, b = decode_image(image_a[i]), decode_image(image_b[i])
            except ValueError as e:
                yield i, f"bad image: {e}"
                continue
            text = sanitize_untrusted(prompts[i], self.backend.special_tokens, self.cfg.max_prompt_chars)
            yield i, (categories[i], text, a, b)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.pairwise(batch) if self.mode == "pairwise" else self.score(batch)

    def pairwise(self, batch: pa.Table) -> pa.Table:
        votes = [json.loads(v) if v else [] for v in column(batch, "votes")]
        requests, slots = [], []
        for i, item in self._rows(batch):
            if isinstance(item, str):
                votes[i] += [abstention(self.name, o, item) for o in ("AB", "BA")]
                continue
            category, text, a, b = item
            messages = pairwise_messages(category, text)
            for order, pair in (("AB", [a, b]), ("BA", [b, a])):
                requests.append((messages, pair))
                slots.append((i, order))
        if requests:
            for (i, order), result in zip(slots, self.backend.option_logprobs(requests, list(OPTIONS))):
                votes[i].append(vote_from_result(self.name, order, result, self.cfg.min_option_mass))
        return with_columns(batch, votes=pa.array([json.dumps(v) for v in votes], pa.string()))

    def score(self, batch: pa.Table) -> pa.Table:
        scores = [json.loads(v) if v else [] for v in column(batch, "scores")]
        requests, slots = [], []
        for i, item in self._rows(batch):
            if isinstance(item, str):
                continue
            category, text, a, b = item
            for side, image in (("a", a), ("b", b)):
                requests.append((score_messages(category, text), [image]))
                slots.append((i, side))
        if requests:
            for (i, side), dist in zip(slots, score_distribution(self.backend, requests)):
                scores[i].append({"judge": self.name, "side": side, **dist})
        return with_columns(batch, scores=pa.array([json.dumps(s) for s in scores], pa.string()))
