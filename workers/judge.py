"""VLM judges (Qwen2-VL / Qwen2.5-VL class) on any backend of workers/judge_backends.py.

Pairwise mode: both image orders, the choice read from the log-probabilities of the option tokens
"A" and "B" at the answer position (the answer is constrained to those tokens). A vote abstains,
with a note, when the option log-probabilities are missing or non-finite and no option can be read
from the answer text, or when they carry less than `min_option_mass` of the model's full
next-token distribution (it was not answering the question). Abstentions are never coerced.

Score mode (Z-Reward style): each image gets a 1-10 rubric score read as a distribution from the score
tokens' log-probabilities, summarised by its expected value and spread. "10" is two tokens for most
tokenizers, so P(10) = P("1") P("0" | "1") and P(1) = P("1") (1 - P("0" | "1")), from a second call
with the answer prefix "1"; the ten probabilities are normalised by their sum, which is the mass of
"1".."9" (reported as `mass`, the share of the full next-token distribution on a score, where the
backend can observe it).

Videos: a row with `video_a` / `video_b` (MP4 bytes) is judged as a video pair the same way, in both modes,
on the frames workers/video_frames.py samples (by fps, within the judge's frame and pixel budgets); its
votes and scores have the same fields as an image pair's.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from schemas.category import registered
from schemas.config import JudgeConfig
from schemas.work import work_array, work_rows
from workers.judge_backends import OptionResult, make_backend
from workers.media import decode_image, decode_video
from workers.rubrics import OPTIONS, new_nonce, pairwise_messages, parse_choice, sanitize_untrusted, score_messages
from workers.runtime import column, setup_worker, with_columns
from workers.video_frames import sample_video

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


def unscored(note: str) -> dict:
    return {"expected": None, "std": None, "mass": None, "probs": None, "note": note}


def score_distribution(backend, requests: list[tuple[list[dict], list]]) -> list[dict]:
    """Per request: {expected, std, mass, probs, note} over the scores 1..10; None fields and a note when
    the backend could not read the distribution."""
    if backend.is_single_token("10"):
        head = backend.option_logprobs(requests, SCORES)
        lp = np.stack([r.logprobs for r in head])
        why = [r.text for r in head]
    else:
        head = backend.option_logprobs(requests, SCORES[:9])
        zero_results = backend.option_logprobs(requests, ["0"], prefix="1")
        first = np.stack([r.logprobs for r in head])
        zero = np.stack([r.logprobs for r in zero_results])[:, 0]
        with np.errstate(divide="ignore"):
            lp = np.concatenate([first[:, :1] + np.log1p(-np.exp(zero))[:, None], first[:, 1:],
                                 first[:, :1] + zero[:, None]], axis=1)
        why = [h.text if not np.isfinite(h.logprobs).all() else z.text for h, z in zip(head, zero_results)]
    out = []
    values = np.arange(1, 11, dtype=float)
    for result, row, reason in zip(head, lp, why):
        p = np.exp(row)
        mass = float(np.sum(p))
        if not np.isfinite(p).all() or mass <= 0:
            out.append(unscored(f"unreadable: {(reason or 'no score logprobs')[:200]}"))
            continue
        p = p / mass
        mean = float((p * values).sum())
        out.append({"expected": mean, "std": float(np.sqrt((p * (values - mean) ** 2).sum())),
                    "mass": None if result.renormalised else mass,
                    "probs": [round(float(x), 6) for x in p], "note": None})
    return out


class VLMJudge:
    """Ray Data actor: one judge model, loaded once, serving both modes for the rows that name it.
    Reads `category`, `prompt`, and `image_a`, `image_b` (PNG bytes) or `video_a`, `video_b` (MP4 bytes, a video
    pair); rows without both sides pass through.
    - `judges` includes this judge and the row's category still wants the panel (`Category.wants_panel`):
      appends its two votes (orders AB and BA) to `votes`;
    - `score_judges` includes it: appends a `SCORE` {judge, side, expected, std, mass, probs, note} for sides
      a and b to `scores`."""

    input_columns = ("judges", "score_judges", "category", "prompt", "image_a|video_a", "image_b|video_b")
    output_columns = ("votes", "scores")

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1, nonce: str | None = None,
                 backend=None, categories: dict | None = None):
        """`nonce`: the run's data-marker nonce (default: a fresh one); `backend`: an already-built backend to
        share (a notebook, a test) instead of loading the model; `categories`: the run's category objects by
        name, for their rubrics and `wants_panel` (default: the registry's)."""
        setup_worker(num_threads)
        self.name, self.nonce, self.categories = name, nonce or new_nonce(), categories
        self.rubrics = {n: c.rubric for n, c in categories.items()} if categories is not None else None
        self.cfg = JudgeConfig.model_validate(cfg)
        self.backend = backend or make_backend(model_path, self.cfg)

    def _decode(self, media: str, data: bytes):
        """A PIL image, or the sampled frames of a video; ValueError when the bytes are not one."""
        if media == "image":
            return decode_image(data)
        return sample_video(*decode_video(data), self.cfg)

    def _wants_panel(self, row: dict) -> bool:
        category = (self.categories if self.categories is not None else registered()).get(row["category"])
        return category is None or category.wants_panel(row)

    def __call__(self, batch: pa.Table) -> pa.Table:
        votes = [v or [] for v in column(batch, "votes")]
        scores = [s or [] for s in column(batch, "scores")]
        judges, scorers = column(batch, "judges"), column(batch, "score_judges")
        categories, prompts = column(batch, "category"), column(batch, "prompt")
        image_a, image_b = column(batch, "image_a"), column(batch, "image_b")
        video_a, video_b = column(batch, "video_a"), column(batch, "video_b")
        pair_requests, pair_slots, score_requests, score_slots = [], [], [], []
        rows = work_rows(batch) if any(self.name in (j or []) for j in judges) else None
        for i in range(batch.num_rows):
            pairwise = self.name in (judges[i] or []) and self._wants_panel(rows[i])
            score = self.name in (scorers[i] or [])
            media = "video" if video_a[i] is not None and video_b[i] is not None else "image"
            sides = (video_a[i], video_b[i]) if media == "video" else (image_a[i], image_b[i])
            if not (pairwise or score) or None in sides:
                continue
            try:
                a, b = (self._decode(media, side) for side in sides)
            except ValueError as e:
                if pairwise:
                    votes[i] += [abstention(self.name, o, f"bad {media}: {e}") for o in ("AB", "BA")]
                if score:
                    scores[i] += [{"judge": self.name, "side": s, **unscored(f"bad {media}: {e}")} for s in "ab"]
                continue
            text = sanitize_untrusted(prompts[i], self.backend.special_tokens, self.cfg.max_prompt_chars)
            if pairwise:
                messages = pairwise_messages(categories[i], text, self.nonce, self.rubrics, media)
                pair_requests += [(messages, [a, b]), (messages, [b, a])]
                pair_slots += [(i, "AB"), (i, "BA")]
            if score:
                messages = score_messages(categories[i], text, self.nonce, self.rubrics, media)
                score_requests += [(messages, [a]), (messages, [b])]
                score_slots += [(i, "a"), (i, "b")]
        if pair_requests:
            for (i, order), result in zip(pair_slots, self.backend.option_logprobs(pair_requests, list(OPTIONS))):
                votes[i].append(vote_from_result(self.name, order, result, self.cfg.min_option_mass))
        if score_requests:
            for (i, side), dist in zip(score_slots, score_distribution(self.backend, score_requests)):
                scores[i].append({"judge": self.name, "side": side, **dist})
        return with_columns(batch, votes=work_array("votes", votes), scores=work_array("scores", scores))
