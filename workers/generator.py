"""Text-to-image generators: any diffusers pipeline, loaded with `DiffusionPipeline.from_pretrained`."""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from schemas.config import GeneratorConfig
from workers.media import png_bytes
from workers.runtime import column, pick_device, pick_dtype, setup_worker, with_columns

log = logging.getLogger(__name__)


class DiffusersGenerator:
    """Ray Data actor for one configured generator. A row names the generator of each side (`gen_a`,
    `gen_b`) with that side's prompt and seed (`prompt_a`, `seed_a`, ...); this actor fills `image_a` /
    `image_b` (PNG bytes) for the sides that name it and passes the other sides through untouched, so
    one pool serves every category. A side it cannot generate gets None and the error in `error_a`/`error_b`.
    Best-of-N rows list their candidates' generators and seeds (`cand_gens`, `cand_seeds`); this actor
    fills the `cand_images` slots that name it, all from `prompt_a`."""

    input_columns = ("gen_a", "gen_b", "prompt_a", "prompt_b", "seed_a", "seed_b", "cand_gens", "cand_seeds")
    output_columns = ("image_a", "image_b", "error_a", "error_b")  # and cand_images for best-of-N rows

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1):
        setup_worker(num_threads)
        import torch
        from diffusers import DiffusionPipeline

        self.name = name
        self.cfg = GeneratorConfig.model_validate(cfg)
        self.device = pick_device()
        self.torch = torch
        self.pipe = DiffusionPipeline.from_pretrained(model_path, dtype=pick_dtype(self.cfg.dtype, self.device))
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def _generate(self, prompts: list[str], seeds: list[int]):
        gens = [self.torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        with self.torch.inference_mode():
            return self.pipe(prompts, generator=gens, width=self.cfg.width, height=self.cfg.height,
                             num_inference_steps=self.cfg.steps, guidance_scale=self.cfg.guidance_scale,
                             **self.cfg.call_kwargs).images

    def _generate_chunk(self, prompts: list[str], seeds: list[int]) -> tuple[list, list]:
        try:
            return [png_bytes(im) for im in self._generate(prompts, seeds)], [None] * len(prompts)
        except Exception as chunk_error:  # one bad row must not sink its neighbours: retry one by one
            if len(prompts) == 1:
                return [None], [f"{self.name}: {type(chunk_error).__name__}: {chunk_error}"[:500]]
            log.warning("%s: batch of %d failed (%s); retrying one by one", self.name, len(prompts), chunk_error)
            results = [self._generate_chunk([p], [s]) for p, s in zip(prompts, seeds)]
            return [r[0][0] for r in results], [r[1][0] for r in results]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {c: column(batch, c) for c in self.output_columns}
        prompts = {s: column(batch, f"prompt_{s}") for s in ("a", "b")}
        seeds = {s: column(batch, f"seed_{s}") for s in ("a", "b")}
        # jobs: (row, side, prompt, seed); side "a" / "b", or the index of a best-of-N candidate.
        # A side whose prompt is missing (its perturbation failed, see error_b) is left to the record stage.
        jobs = [(i, side, prompts[side][i], seeds[side][i]) for side in ("a", "b")
                for i, g in enumerate(column(batch, f"gen_{side}")) if g == self.name and prompts[side][i] is not None]
        candidates = [list(c) if c else None for c in column(batch, "cand_images")]
        for i, (gens, cand_seeds) in enumerate(zip(column(batch, "cand_gens"), column(batch, "cand_seeds"))):
            if gens:
                gens, cand_seeds = json.loads(gens), json.loads(cand_seeds)
                candidates[i] = candidates[i] or [None] * len(gens)
                jobs += [(i, k, prompts["a"][i], s) for k, (g, s) in enumerate(zip(gens, cand_seeds)) if g == self.name]
        for start in range(0, len(jobs), self.cfg.batch_size):
            chunk = jobs[start:start + self.cfg.batch_size]
            images, errors = self._generate_chunk([j[2] for j in chunk], [j[3] for j in chunk])
            for (i, side, _, _), img, err in zip(chunk, images, errors):
                if isinstance(side, int):
                    candidates[i][side] = img
                    out["error_a"][i] = out["error_a"][i] or err
                else:
                    out[f"image_{side}"][i], out[f"error_{side}"][i] = img, err
        arrays = {c: pa.array(v, pa.binary() if c.startswith("image") else pa.string()) for c, v in out.items()}
        return with_columns(batch, **arrays, cand_images=pa.array(candidates, pa.list_(pa.binary())))
