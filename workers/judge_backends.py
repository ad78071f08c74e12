"""Serving backends for the VLM judges, behind one call:

    backend.option_logprobs(requests, options, prefix="") -> list[OptionResult]

For each request (chat messages with image / video placeholders + the media, in order: PIL images and
`workers.video_frames.SampledVideo`s, the frames the judge samples) it returns the
log-probabilities, over the full vocabulary, of each single-token option at the answer position,
after an optional answer `prefix` (score mode uses "1" to tell "1" from "10"). The answer is
constrained to the options where the backend allows it.

- `transformers`: the embedded CPU default; one batched forward pass, no generation loop.
- `vllm`: a vLLM engine inside the Ray actor (the default wherever a GPU is); prefix caching
  reuses the shared rubric prefix; `allowed_token_ids` constrains the answer after the log-probabilities
  are taken, and `logprob_token_ids` returns exactly the option tokens'.
- `openai`: any OpenAI-compatible server (`vllm serve`, Ray Serve LLM); async HTTP with bounded
  concurrency, retries with backoff and timeouts (workers/llm_client.py, shared with the perturber).
  Without a prefix: vLLM's guided choice and the options read from `top_logprobs` (or parsed from the
  text when the server returns none). vLLM applies
  the guided-choice mask to the logits before it takes log-probabilities, so these come renormalised over
  the options (`OptionResult.renormalised`): the differences between options are exact, their share of
  the full distribution is not observable (`min_option_mass` cannot be used there). With a prefix
  (P("0" | "1")), a mask would make the option certain; instead each option is appended to the prefix as
  the start of the assistant's answer (`continue_final_message`) and its raw log-probability is read from
  vLLM's `prompt_logprobs`, which are taken before any sampling constraint.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
from dataclasses import dataclass

import numpy as np

from schemas.config import JudgeConfig
from workers.llm_client import OpenAIClient, import_vllm, start_vllm
from workers.media import mp4_bytes
from workers.runtime import pick_device, pick_dtype
from workers.video_frames import SampledVideo

log = logging.getLogger(__name__)


@dataclass
class OptionResult:
    logprobs: np.ndarray          # (len(options),), NaN where the backend could not tell
    text: str | None = None       # the answer text, when the backend generated one (or why it could not tell)
    renormalised: bool = False    # possibly renormalised over the options (a guided-choice mask): mass unknown


def single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the judge's tokenizer splits the option {text!r} into {len(ids)} tokens; "
                         "options must be single tokens")
    return ids[0]


def special_tokens_of(tokenizer) -> list[str]:
    """Every string the tokenizer would turn into a control token, longest first."""
    return sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)


class _LocalProcessorBackend:
    """Shared by the in-process backends: the model's own processor renders the chat, so both see
    exactly the same prompt text."""

    def __init__(self, model_path: str, cfg: JudgeConfig):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self.special_tokens = special_tokens_of(self.tokenizer)
        # Per modality: a `max_pixels` given to from_pretrained would bound the video frames too. The frames come
        # sampled and sized by the judge (workers/video_frames.py): a size range that holds them keeps them as
        # they are, and the per-frame cap is already applied.
        shortest = self.processor.image_processor.size["shortest_edge"]
        self.image_kwargs = {"size": {"shortest_edge": min(shortest, cfg.max_pixels), "longest_edge": cfg.max_pixels}
                             } if cfg.max_pixels else {}
        self.video_kwargs = {"size": {"shortest_edge": cfg.video_min_pixels, "longest_edge": cfg.video_max_pixels},
                             "cap_pixels_per_frame": False}

    def render(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def is_single_token(self, text: str) -> bool:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) == 1


class TransformersVLM(_LocalProcessorBackend):
    def __init__(self, model_path: str, cfg: JudgeConfig):
        import torch
        from transformers import AutoModelForImageTextToText

        super().__init__(model_path, cfg)
        self.torch = torch
        self.device = pick_device()
        self.tokenizer.padding_side = "left"  # the answer position is then the last one in every row
        self.model = AutoModelForImageTextToText.from_pretrained(
            model_path, dtype=pick_dtype(cfg.dtype, self.device)).to(self.device).eval()

    def option_logprobs(self, requests: list[tuple[list[dict], list]], options: list[str],
                        prefix: str = "") -> list[OptionResult]:
        ids = [single_token_id(self.tokenizer, o) for o in options]
        texts = [self.render(messages) + prefix for messages, _ in requests]
        media = [m for _, items in requests for m in items]
        images = [m for m in media if not isinstance(m, SampledVideo)]
        videos = [m for m in media if isinstance(m, SampledVideo)]
        video_args = dict(videos=[v.frames for v in videos], video_metadata=[v.metadata() for v in videos],
                          do_sample_frames=False, videos_kwargs=self.video_kwargs) if videos else {}
        inputs = self.processor(text=texts, images=images or None, images_kwargs=self.image_kwargs,
                                return_tensors="pt", padding=True, **video_args).to(self.device)
        with self.torch.inference_mode():
            # Only the answer position's logits: the full (batch, length, vocab) tensor of a 7B judge is
            # ~15 GB at 32 pairs.
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        return [OptionResult(row) for row in logits.log_softmax(-1)[:, ids].cpu().numpy()]


class VLLMEngine(_LocalProcessorBackend):
    def __init__(self, model_path: str, cfg: JudgeConfig):
        vllm = import_vllm()
        super().__init__(model_path, cfg)
        defaults = dict(limit_mm_per_prompt={"image": 2, "video": 2}, enable_prefix_caching=True,
                        mm_processor_kwargs={"images_kwargs": self.image_kwargs, "videos_kwargs": self.video_kwargs})
        self.llm = start_vllm(model_path, cfg.dtype, cfg.engine_kwargs, **defaults)
        self.sampling_params = vllm.SamplingParams

    def close(self) -> None:
        """Stop the engine's worker processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def option_logprobs(self, requests: list[tuple[list[dict], list]], options: list[str],
                        prefix: str = "") -> list[OptionResult]:
        ids = [single_token_id(self.tokenizer, o) for o in options]
        # One token, constrained to the options; logprob_token_ids returns exactly the options' raw
        # (full-vocabulary) log-probabilities.
        params = self.sampling_params(max_tokens=1, temperature=0.0, allowed_token_ids=ids, logprob_token_ids=ids)
        prompts = [{"prompt": self.render(messages) + prefix, "multi_modal_data": _engine_media(media)}
                   for messages, media in requests]
        results = []
        for out in self.llm.generate(prompts, params, use_tqdm=False):
            first = out.outputs[0].logprobs[0] if out.outputs[0].logprobs else {}
            results.append(OptionResult(np.array([first[i].logprob if i in first else math.nan for i in ids]),
                                        out.outputs[0].text))
        return results


def _engine_media(media: list) -> dict:
    """vLLM's multi_modal_data: images, and videos as (frames, metadata) (Qwen2.5-VL requires the metadata;
    `do_sample_frames: False`: the frames are final)."""
    out = {}
    for m in media:
        video = isinstance(m, SampledVideo)
        key, item = ("video", (m.frames, {**m.metadata(), "do_sample_frames": False})) if video else ("image", m)
        out.setdefault(key, []).append(item)
    return out


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def video_data_url(video: SampledVideo) -> str:
    """An MP4 of exactly the sampled frames, at the rate they were sampled at: a server that takes every frame
    (vLLM: --media-io-kwargs '{"video": {"num_frames": -1}}') sees what the in-process backends see, up to the
    codec's near-transparent loss, with the sampled fps Qwen2.5-VL's temporal positions need."""
    return "data:video/mp4;base64," + base64.b64encode(mp4_bytes(video.frames, video.sampled_fps)).decode()


def _media_part(part_type: str, item) -> dict:
    if part_type == "video":
        return {"type": "video_url", "video_url": {"url": video_data_url(item)}}
    return {"type": "image_url", "image_url": {"url": data_url(item)}}


def openai_messages(messages: list[dict], media: list) -> list[dict]:
    """Our messages (with `{"type": "image"}` / `{"type": "video"}` placeholders) -> OpenAI chat parts with
    data URLs (`image_url` PNG, `video_url` MP4)."""
    it = iter(media)
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [_media_part(part["type"], next(it)) if part["type"] in ("image", "video")
                       else {"type": "text", "text": part["text"]} for part in content]
        out.append({"role": m["role"], "content": content})
    return out


class OpenAIEndpoint:
    """A judge served over HTTP. The model's tokenizer is not known here, so untrusted text is
    cleaned of anything shaped like a chat control token (see rubrics.sanitize_untrusted)."""

    special_tokens: list[str] = []

    def __init__(self, model_path: str, cfg: JudgeConfig):
        if not cfg.endpoint:
            raise ValueError("the openai judge backend needs `endpoint` (e.g. http://host:8000/v1)")
        self.cfg, self.model = cfg, model_path
        self.client = OpenAIClient(cfg.endpoint, cfg.api_key_env, cfg.max_concurrency, cfg.timeout_s, cfg.max_retries,
                                   cfg.backoff_s)

    def is_single_token(self, text: str) -> bool:
        return len(text) == 1

    def option_logprobs(self, requests: list[tuple[list[dict], list]], options: list[str],
                        prefix: str = "") -> list[OptionResult]:
        return asyncio.run(self._all(requests, options, prefix))

    async def _all(self, requests, options, prefix):
        async with self.client.session() as session:
            return await asyncio.gather(*(self._one(session, r, options, prefix) for r in requests))

    def _chat(self, messages, images) -> dict:
        return {"model": self.model, "messages": openai_messages(messages, images), "max_tokens": 1, "temperature": 0.0}

    async def _one(self, session, request, options, prefix) -> OptionResult:
        if prefix:
            return await self._continuations(session, request, options, prefix)
        body = {**self._chat(*request), "logprobs": True, "top_logprobs": 20,
                "structured_outputs": {"choice": options}}  # vLLM's guided choice; other servers ignore it
        data, error = await session.post(body)
        if data is None:
            return OptionResult(np.full(len(options), math.nan), error)
        return self._parse(data, options)

    async def _continuations(self, session, request, options, prefix) -> OptionResult:
        """Raw log P(option | prefix) per option: the prompt log-probability of the option's token when the
        assistant's answer is prefilled with prefix + option."""
        logprobs, notes = [], []
        for option in options:
            body = {**self._chat(*request), "prompt_logprobs": 0, "continue_final_message": True,
                    "add_generation_prompt": False}
            body["messages"].append({"role": "assistant", "content": prefix + option})
            data, error = await session.post(body)
            lp, note = (math.nan, error) if data is None else self._last_prompt_logprob(data, prefix, option)
            logprobs.append(lp)
            notes += [note] if note else []
        return OptionResult(np.array(logprobs, dtype=float), "; ".join(notes) or None)

    @staticmethod
    def _last_prompt_logprob(data: dict, prefix: str, option: str) -> tuple[float, str | None]:
        """The log-probability of the prompt's last token, which must be `option` right after `prefix`."""
        try:
            entries = [next(iter(e.values())) for e in data["prompt_logprobs"][-(len(prefix) + 1):] if e]
            tokens = [e["decoded_token"] for e in entries]
            logprob = float(entries[-1]["logprob"])
        except (KeyError, IndexError, TypeError, StopIteration, AttributeError, ValueError):
            return math.nan, f"no prompt_logprobs in the response (a vLLM server returns them): {str(data)[:160]}"
        if tokens[-1] != option or not "".join(tokens[:-1]).endswith(prefix):
            return math.nan, f"the server tokenizes {prefix + option!r} as {tokens!r}, not ending in {prefix!r} + {option!r}"
        return logprob, None

    @staticmethod
    def _parse(data: dict, options: list[str]) -> OptionResult:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content")
            tops = (choice.get("logprobs") or {}).get("content") or []
        except (KeyError, IndexError, TypeError):
            return OptionResult(np.full(len(options), math.nan), f"unexpected response: {str(data)[:200]}")
        found = {t["token"]: t["logprob"] for t in (tops[0].get("top_logprobs") or [])} if tops else {}
        return OptionResult(np.array([found.get(o, math.nan) for o in options], dtype=float), text, renormalised=True)


BACKENDS = {"transformers": TransformersVLM, "vllm": VLLMEngine, "openai": OpenAIEndpoint}


def make_backend(model_path: str, cfg: JudgeConfig):
    return BACKENDS[cfg.backend](model_path, cfg)
