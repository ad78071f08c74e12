"""Generators, one actor class per family, each loaded with `DiffusionPipeline.from_pretrained`: text-to-image
(any diffusers image pipeline) and video (Wan 2.x text-to-video and image-to-video)."""

from __future__ import annotations

import logging

import pyarrow as pa

from schemas.config import GeneratorConfig
from schemas.work import work_array
from workers.media import decode_image, mp4_bytes, png_bytes
from workers.runtime import column, pick_device, pick_dtype, setup_worker, with_columns

log = logging.getLogger(__name__)


def load_pipeline(model_path: str, dtype: str):
    """(torch, device, pipeline): a diffusers pipeline loaded once per actor, on the GPU when there is one,
    progress bars off (they would flood the worker logs)."""
    import torch
    from diffusers import DiffusionPipeline

    device = pick_device()
    pipe = DiffusionPipeline.from_pretrained(model_path, dtype=pick_dtype(dtype, device))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return torch, device, pipe


class DiffusersGenerator:
    """Ray Data actor for one configured generator. A row names the generator of each side (`gen_a`,
    `gen_b`) with that side's prompt and seed (`prompt_a`, `seed_a`, ...); this actor fills `image_a` /
    `image_b` (PNG bytes) for the sides that name it and passes the other sides through untouched, so
    one pool serves every category. A side it cannot generate gets None and the error in `error_a`/`error_b`.
    Best-of-N rows list their candidates' generators and seeds (`cand_gens`, `cand_seeds`); this actor
    fills the `cand_images` slots that name it, all from `prompt_a`. Video rows that want a generated first
    frame name its generator in `frame_gen` (with `seed_frame`); this actor draws it from `prompt` into
    `frame_a` and `frame_b`, the image both videos start from."""

    input_columns = ("gen_a", "gen_b", "prompt_a", "prompt_b", "seed_a", "seed_b", "cand_gens", "cand_seeds",
                     "prompt", "frame_gen", "seed_frame")
    output_columns = ("image_a", "image_b", "error_a", "error_b", "cand_images", "frame_a", "frame_b")

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1):
        setup_worker(num_threads)
        self.name = name
        self.cfg = GeneratorConfig.model_validate(cfg)
        self.torch, self.device, self.pipe = load_pipeline(model_path, self.cfg.dtype)

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
        out = {c: column(batch, c) for c in ("image_a", "image_b", "error_a", "error_b")}
        prompts = {s: column(batch, f"prompt_{s}") for s in ("a", "b")}
        seeds = {s: column(batch, f"seed_{s}") for s in ("a", "b")}
        # jobs: (row, side, prompt, seed); side "a" / "b", or the index of a best-of-N candidate.
        # A side whose prompt is missing (its perturbation failed, see error_b) is left to the record stage.
        jobs = [(i, side, prompts[side][i], seeds[side][i]) for side in ("a", "b")
                for i, g in enumerate(column(batch, f"gen_{side}")) if g == self.name and prompts[side][i] is not None]
        candidates = [list(c) if c else None for c in column(batch, "cand_images")]
        frames = {s: column(batch, f"frame_{s}") for s in "ab"}
        jobs += [(i, "frame", p, s) for i, (g, p, s) in enumerate(zip(column(batch, "frame_gen"), column(batch, "prompt"),
                                                                     column(batch, "seed_frame"))) if g == self.name]
        for i, (gens, cand_seeds) in enumerate(zip(column(batch, "cand_gens"), column(batch, "cand_seeds"))):
            if gens:
                candidates[i] = candidates[i] or [None] * len(gens)
                jobs += [(i, k, prompts["a"][i], s) for k, (g, s) in enumerate(zip(gens, cand_seeds)) if g == self.name]
        for start in range(0, len(jobs), self.cfg.batch_size):
            chunk = jobs[start:start + self.cfg.batch_size]
            images, errors = self._generate_chunk([j[2] for j in chunk], [j[3] for j in chunk])
            for (i, side, _, _), img, err in zip(chunk, images, errors):
                if isinstance(side, int):
                    candidates[i][side] = img
                    out["error_a"][i] = out["error_a"][i] or err
                elif side == "frame":
                    frames["a"][i] = frames["b"][i] = img
                    out["error_a"][i] = out["error_a"][i] or err
                else:
                    out[f"image_{side}"][i], out[f"error_{side}"][i] = img, err
        return with_columns(batch, **{c: work_array(c, v) for c, v in out.items()},
                            **{f"frame_{s}": work_array(f"frame_{s}", frames[s]) for s in "ab"},
                            cand_images=work_array("cand_images", candidates))


class VideoGenerator:
    """Ray Data actor for one configured video generator (a generator with `num_frames`): Wan text-to-video
    (`WanPipeline`) or image-to-video (`WanImageToVideoPipeline`, Wan2.1 with its CLIP image encoder or
    Wan2.2's two experts). Like `DiffusersGenerator` it fills the sides that name it (`gen_a` / `gen_b`,
    with `prompt_a`, `seed_a`, ...), here `video_a` / `video_b` (H.264 MP4 bytes, `workers.media`), and
    passes the rest through. An image-to-video side starts from that side's first frame (`frame_a` /
    `frame_b`, PNG); a side without one, or a frame given to a text-to-video model, is an error of that
    side (`error_a` / `error_b`): silently ignoring the frame would break the category's construction."""

    input_columns = ("gen_a", "gen_b", "prompt_a", "prompt_b", "seed_a", "seed_b", "frame_a", "frame_b")
    output_columns = ("video_a", "video_b", "error_a", "error_b")

    def __init__(self, name: str, cfg: dict, model_path: str, num_threads: int = 1):
        import inspect

        setup_worker(num_threads)
        self.name = name
        self.cfg = GeneratorConfig.model_validate(cfg)
        self.torch, self.device, self.pipe = load_pipeline(model_path, self.cfg.dtype)
        self.image_to_video = "image" in inspect.signature(self.pipe.__call__).parameters

    def _generate(self, prompts: list[str], seeds: list[int], image) -> list[bytes]:
        gens = [self.torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        extra = {"image": decode_image(image)} if image is not None else {}
        with self.torch.inference_mode():
            videos = self.pipe(prompt=prompts, generator=gens, width=self.cfg.width, height=self.cfg.height,
                               num_frames=self.cfg.num_frames, num_inference_steps=self.cfg.steps,
                               guidance_scale=self.cfg.guidance_scale, output_type="np", **extra,
                               **self.cfg.call_kwargs).frames
        return [mp4_bytes(v, self.cfg.fps) for v in videos]

    def _side(self, prompt: str, seed: int, frame: bytes | None) -> tuple[bytes | None, str | None]:
        if self.image_to_video and frame is None:
            return None, f"{self.name}: image-to-video needs a first frame and the row has none"
        if not self.image_to_video and frame is not None:
            return None, f"{self.name}: text-to-video cannot start from the row's first frame; use an image-to-video model"
        try:
            return self._generate([prompt], [seed], frame)[0], None
        except Exception as e:
            return None, f"{self.name}: {type(e).__name__}: {e}"[:500]

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = {c: column(batch, c) for c in self.output_columns}
        # jobs: (row, side, prompt, seed, first frame or None) for the sides that name this generator.
        jobs = [(i, side, p, seed, frame) for side in ("a", "b")
                for i, (g, p, seed, frame) in enumerate(zip(*(column(batch, f"{c}_{side}")
                                                              for c in ("gen", "prompt", "seed", "frame"))))
                if g == self.name]
        text_only = [j for j in jobs if j[4] is None and not self.image_to_video]
        # Text-to-video batches like images; the image-to-video pipelines take one first frame per call.
        for start in range(0, len(text_only), self.cfg.batch_size):
            chunk = text_only[start:start + self.cfg.batch_size]
            try:
                videos = self._generate([j[2] for j in chunk], [j[3] for j in chunk], None)
            except Exception as e:
                log.warning("%s: batch of %d failed (%s); retrying one by one", self.name, len(chunk), e)
                continue
            for (i, side, *_), video in zip(chunk, videos):
                out[f"video_{side}"][i] = video
        for i, side, prompt, seed, frame in jobs:
            if out[f"video_{side}"][i] is None:
                out[f"video_{side}"][i], out[f"error_{side}"][i] = self._side(prompt, seed, frame)
        return with_columns(batch, **{c: work_array(c, v) for c, v in out.items()})
