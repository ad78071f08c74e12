"""Reward models of the CLIP family, loaded through open_clip."""

from __future__ import annotations

import json
import os

import pyarrow as pa

from schemas.config import RewardConfig
from workers.runtime import column, decode_image, pick_device, setup_worker, with_columns


def open_clip_name(model_path: str) -> str:
    """open_clip model identifier for a resolved ref: a local directory becomes 'local-dir:PATH'."""
    if os.path.isdir(model_path):
        return "local-dir:" + model_path
    return model_path


class ClipScorer:
    """Ray Data actor: CLIP score = 100 * max(cos(image, prompt), 0) of `image_a` and `image_b` for rows
    whose `reward_models` (comma-separated names) include this one. Appends `{model, score_a, score_b}`
    to the `rewards` JSON list (a score is None when its image is missing or undecodable)."""

    input_columns = ("reward_models", "prompt", "image_a", "image_b")
    output_columns = ("rewards",)

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1):
        setup_worker(num_threads)
        import open_clip
        import torch

        self.name = name
        self.cfg = RewardConfig.model_validate(cfg)
        self.torch = torch
        self.device = pick_device()
        ident = open_clip_name(model_path)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(ident, device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(ident)

    def scores(self, prompts: list[str], images: list) -> list[float]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
            img = self.model.encode_image(x)
            txt = self.model.encode_text(self.tokenizer(prompts).to(self.device))
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return (100 * (img * txt).sum(-1)).clamp(min=0).float().cpu().tolist()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rewards = [json.loads(r) if r else [] for r in column(batch, "rewards")]
        wanted = [self.name in (r or "").split(",") for r in column(batch, "reward_models")]
        prompt, image = column(batch, "prompt"), {s: column(batch, f"image_{s}") for s in ("a", "b")}
        prompts, images, slots = [], [], []
        for i in range(batch.num_rows):
            if not wanted[i]:
                continue
            for side in ("a", "b"):
                try:
                    images.append(decode_image(image[side][i]))
                except (ValueError, TypeError):  # missing (None) or undecodable: no score for this side
                    continue
                prompts.append(prompt[i])
                slots.append((i, side))
        per_row = [{"model": self.name, "score_a": None, "score_b": None} for _ in range(batch.num_rows)]
        if images:
            for (i, side), s in zip(slots, self.scores(prompts, images)):
                per_row[i][f"score_{side}"] = s
        for i in range(batch.num_rows):
            if wanted[i]:
                rewards[i].append(per_row[i])
        return with_columns(batch, rewards=pa.array([json.dumps(r) for r in rewards], pa.string()))
