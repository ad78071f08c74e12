"""Reward models of the CLIP family, one actor for all of them:

- clip_score: 100 * max(cos(image, prompt), 0) with an open_clip model.
- pickscore: a transformers CLIPModel (PickScore is a fine-tuned CLIP-H): logit_scale * cos.
- hpsv2: open_clip (ViT-H-14 for the real one) with the HPS checkpoint loaded on top: cos; the image is
  padded to a square, not cropped, as HPSv2's own preprocessing does.
- aesthetic: the LAION improved-aesthetic-predictor MLP on normalised open_clip image embeddings
  (CLIP ViT-L/14 for the real one); ignores the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from schemas.config import RewardConfig
from schemas.work import work_array
from workers.media import decode_image
from workers.runtime import column, pick_device, setup_worker, with_columns


def open_clip_name(model_path: str) -> str:
    """open_clip model identifier for a resolved ref: a local directory becomes 'local-dir:PATH'."""
    if os.path.isdir(model_path):
        return "local-dir:" + model_path
    return model_path


def checkpoint_file(path: str, suffixes=(".pt", ".pth", ".bin", ".safetensors")) -> str:
    """A checkpoint given as a file, or as a folder holding exactly one."""
    p = Path(path)
    if p.is_file():
        return str(p)
    found = sorted(f for f in p.glob("*") if f.suffix in suffixes) if p.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"expected one checkpoint file ({', '.join(suffixes)}) at {path}, found {len(found)}")
    return str(found[0])


def aesthetic_mlp(dim: int):
    """The LAION improved-aesthetic-predictor head (its state-dict layout: layers.0 ... layers.7)."""
    import torch

    d = torch.nn.Dropout
    return torch.nn.Sequential(torch.nn.Linear(dim, 1024), d(0.2), torch.nn.Linear(1024, 128), d(0.2),
                               torch.nn.Linear(128, 64), d(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))


class RewardScorer:
    """Ray Data actor: scores `image_a` and `image_b` against `prompt` for rows whose `reward_models`
    include this one, appending {model, score_a, score_b} to `rewards` (a score is None when its image is
    missing or undecodable). Best-of-N rows: every image of `cand_images`, into `cand_scores`."""

    input_columns = ("reward_models", "prompt", "image_a", "image_b", "cand_images")
    output_columns = ("rewards", "cand_scores")

    def __init__(self, name: str, cfg: dict, model_path: str, checkpoint_path: str | None = None,
                 num_threads: int = 1):
        setup_worker(num_threads)
        import torch

        self.name, self.torch = name, torch
        self.cfg = RewardConfig.model_validate(cfg)
        self.device = pick_device()
        if self.cfg.kind == "pickscore":
            from transformers import CLIPModel, CLIPProcessor

            self.model = CLIPModel.from_pretrained(model_path).to(self.device).eval()
            # PickScore's reference ran transformers' PIL image processor; the default torchvision backend
            # rounds resized pixels differently.
            self.processor = CLIPProcessor.from_pretrained(model_path, backend="pil")
            return
        import open_clip

        ident = open_clip_name(model_path)
        # As each reference preprocesses: HPSv2 resizes the longest side and pads to a square (black, the
        # default fill); CLIP score and the LAION aesthetic MLP keep the model's own (CLIP's: shortest side,
        # centre crop).
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            ident, pretrained=self.cfg.pretrained, device=self.device,
            image_resize_mode="longest" if self.cfg.kind == "hpsv2" else None)
        self.tokenizer = open_clip.get_tokenizer(ident)
        if self.cfg.kind == "hpsv2":
            open_clip.load_checkpoint(self.model, checkpoint_file(checkpoint_path))
        if self.cfg.kind == "aesthetic":
            state = torch.load(checkpoint_file(checkpoint_path), map_location=self.device, weights_only=True)
            state = {k.removeprefix("layers."): v for k, v in state.items()}
            self.head = aesthetic_mlp(state["0.weight"].shape[1]).to(self.device)
            self.head.load_state_dict(state)
            self.head.eval()
        self.model.eval()

    def scores(self, prompts: list[str], images: list) -> list[float]:
        torch = self.torch
        with torch.inference_mode():
            if self.cfg.kind == "pickscore":
                inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True,
                                        truncation=True, max_length=77).to(self.device)
                img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
                txt = self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
                img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
                scale = self.model.logit_scale.exp()
            else:
                img = self.model.encode_image(torch.stack([self.preprocess(im) for im in images]).to(self.device))
                txt = None if self.cfg.kind == "aesthetic" else self.model.encode_text(self.tokenizer(prompts).to(self.device))
                scale = 100.0
            img = img / img.norm(dim=-1, keepdim=True)
            if self.cfg.kind == "aesthetic":
                return self.head(img.float()).squeeze(-1).cpu().tolist()
            txt = txt / txt.norm(dim=-1, keepdim=True)
            cos = (img * txt).sum(-1).float()
            if self.cfg.kind == "clip_score":
                return (scale * cos).clamp(min=0).cpu().tolist()
            if self.cfg.kind == "hpsv2":
                return cos.cpu().tolist()
            return (scale * cos).cpu().tolist()

    def _candidates(self, batch: pa.Table, wanted: list[bool]) -> pa.Table:
        """Best-of-N rows: every candidate's score under this model, appended to `cand_scores`."""
        scores = [s or [] for s in column(batch, "cand_scores")]
        prompt, cands = column(batch, "prompt"), column(batch, "cand_images")
        for i, images in enumerate(cands):
            if not wanted[i] or not images:
                continue
            decoded = []
            for data in images:
                try:
                    decoded.append(decode_image(data))
                except (ValueError, TypeError):
                    decoded.append(None)
            ok = [k for k, im in enumerate(decoded) if im is not None]
            values = self.scores([prompt[i]] * len(ok), [decoded[k] for k in ok]) if ok else []
            row = [None] * len(images)
            for k, v in zip(ok, values):
                row[k] = v
            scores[i].append({"model": self.name, "scores": row})
        return with_columns(batch, cand_scores=work_array("cand_scores", [s or None for s in scores]))

    def __call__(self, batch: pa.Table) -> pa.Table:
        wanted = [self.name in (r or []) for r in column(batch, "reward_models")]
        if "cand_images" in batch.column_names:
            batch = self._candidates(batch, wanted)
        rewards = [r or [] for r in column(batch, "rewards")]
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
        return with_columns(batch, rewards=work_array("rewards", rewards))
