"""Pairwise VLM judges (Qwen2-VL / Qwen2.5-VL class): both image orders, the choice read from the
log-probabilities of the option tokens "A" and "B" at the answer position.

Reading the two option logits *is* the constrained answer: the judge cannot reply with anything else,
so "unparseable" means the option probabilities are missing, non-finite, or carry less than
`min_option_mass` of the model's full next-token distribution (it was not answering the question).
Those votes are abstentions, recorded with a note, never coerced into a choice.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pyarrow as pa

from schemas.config import JudgeConfig
from workers.rubrics import OPTIONS, pairwise_messages, sanitize_untrusted
from workers.runtime import column, decode_image, pick_device, pick_dtype, setup_worker, with_columns

log = logging.getLogger(__name__)


class TransformersVLM:
    """The embedded CPU default: one batched forward pass over every request, no generation loop."""

    def __init__(self, model_path: str, cfg: JudgeConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.device = pick_device()
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # the answer position is then the last one in every row
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=pick_dtype(cfg.dtype, self.device)).to(self.device).eval()
        self.option_ids = [_single_token_id(self.tokenizer, o) for o in OPTIONS]

    @property
    def special_tokens(self) -> list[str]:
        return sorted(set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab()), key=len,
                      reverse=True)

    def render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def option_logprobs(self, chats: list[str], images: list[list]) -> np.ndarray:
        """(n, len(OPTIONS)) log-probabilities of the option tokens over the full vocabulary."""
        flat = [im for pair in images for im in pair]
        inputs = self.processor(text=chats, images=flat, return_tensors="pt", padding=True).to(self.device)
        with self.torch.inference_mode():
            logits = self.model(**inputs).logits[:, -1].float()
        return logits.log_softmax(-1)[:, self.option_ids].cpu().numpy()


def _single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the judge's tokenizer splits the option {text!r} into {len(ids)} tokens; "
                         "pairwise judging needs single-token options")
    return ids[0]


def vote_from_logprobs(judge: str, order: str, logprobs, min_option_mass: float) -> dict:
    """One vote record from the option log-probabilities of one order."""
    lp_a, lp_b = (float(x) for x in logprobs)
    vote = {"judge": judge, "order": order, "choice": None, "logprob_a": lp_a, "logprob_b": lp_b, "note": None}
    if not (math.isfinite(lp_a) and math.isfinite(lp_b)):
        vote.update(logprob_a=None, logprob_b=None, note="non-finite option logprobs")
    elif math.exp(lp_a) + math.exp(lp_b) < min_option_mass:
        vote["note"] = f"option mass {math.exp(lp_a) + math.exp(lp_b):.3g} < {min_option_mass}"
    else:
        vote["choice"] = OPTIONS[0] if lp_a >= lp_b else OPTIONS[1]
    return vote


def abstention(judge: str, order: str, note: str) -> dict:
    return {"judge": judge, "order": order, "choice": None, "logprob_a": None, "logprob_b": None, "note": note}


class VLMJudge:
    """Ray Data actor. For rows whose `judges` (comma-separated names) include this judge and whose
    images were generated, reads `category`, `prompt`, `image_a`, `image_b` (PNG bytes) and appends this
    judge's two votes (orders AB and BA) to `votes` (a JSON list); other rows pass through."""

    input_columns = ("judges", "category", "prompt", "image_a", "image_b")
    output_columns = ("votes",)

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1):
        setup_worker(num_threads)
        self.name = name
        self.cfg = JudgeConfig.model_validate(cfg)
        self.backend = TransformersVLM(model_path, self.cfg)
        self.special_tokens = self.backend.special_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        votes = [json.loads(v) if v else [] for v in column(batch, "votes")]
        judges, categories, prompts = column(batch, "judges"), column(batch, "category"), column(batch, "prompt")
        image_a, image_b = column(batch, "image_a"), column(batch, "image_b")
        chats, images, slots = [], [], []
        for i in range(batch.num_rows):
            if self.name not in (judges[i] or "").split(",") or image_a[i] is None or image_b[i] is None:
                continue
            try:
                a, b = decode_image(image_a[i]), decode_image(image_b[i])
            except ValueError as e:
                votes[i] += [abstention(self.name, o, f"bad image: {e}") for o in ("AB", "BA")]
                continue
            text = sanitize_untrusted(prompts[i], self.special_tokens, self.cfg.max_prompt_chars)
            chat = self.backend.render(pairwise_messages(categories[i], text))
            for order, pair in (("AB", [a, b]), ("BA", [b, a])):
                chats.append(chat)
                images.append(pair)
                slots.append((i, order))
        if chats:
            logprobs = self.backend.option_logprobs(chats, images)
            for (i, order), lp in zip(slots, logprobs):
                votes[i].append(vote_from_logprobs(self.name, order, lp, self.cfg.min_option_mass))
        return with_columns(batch, votes=pa.array([json.dumps(v) for v in votes], pa.string()))
