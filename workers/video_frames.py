"""What a video judge sees of a video: frames sampled by fps and resized to a pixel budget, by the rules of
qwen-vl-utils (`vision_process.py`, the preprocessing Qwen2-VL / Qwen2.5-VL were trained and served with):

- frames: duration x `video_fps`, clamped to [`video_min_frames`, `video_max_frames`] and to the frames the
  video has, rounded down to an even count (Qwen-VL's temporal patch merges two frames into one step),
  taken evenly from first to last frame;
- size: each frame resized (bicubic, antialiased) to multiples of 28 px (14 px patches, merged 2 x 2) with
  its pixels in [`video_min_pixels`, max_pixels], where max_pixels = max(min(`video_max_pixels`,
  `video_total_pixels` / frames x 2), 1.05 `video_min_pixels`): the total budget is shared by the frames.

A video then costs frames / 2 x (h / 28) x (w / 28) visual tokens. Every backend receives these frames
(transformers and the vLLM engine as arrays, an OpenAI-compatible server as an MP4 of exactly these frames),
so the judge config alone decides what the judge sees, and `check_video_context` can say before a run
whether a request fits the judge's context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_FACTOR = 2   # frames per temporal patch
SIZE_FACTOR = 28   # pixels per visual token side (patch 14 x spatial merge 2)
MIN_PIXELS_SLACK = 1.05  # qwen-vl-utils: the per-frame cap never drops below 1.05 x the per-frame minimum


def num_frames(total_frames: int, fps: float, cfg) -> int:
    """Frames to sample from a video of `total_frames` at `fps` (qwen-vl-utils' smart_nframes); at least two:
    a one-frame video is shown as its frame twice, as qwen-vl-utils pads a frame list."""
    lo = math.ceil(cfg.video_min_frames / FRAME_FACTOR) * FRAME_FACTOR
    hi = max(FRAME_FACTOR, math.floor(min(cfg.video_max_frames, total_frames) / FRAME_FACTOR) * FRAME_FACTOR)
    wanted = total_frames / fps * cfg.video_fps
    n = min(max(wanted, lo), hi, max(total_frames, FRAME_FACTOR))
    return max(FRAME_FACTOR, math.floor(n / FRAME_FACTOR) * FRAME_FACTOR)


def frame_pixel_cap(frames: int, cfg) -> int:
    """The per-frame pixel cap when `frames` share the total budget."""
    share = min(cfg.video_max_pixels, cfg.video_total_pixels / frames * FRAME_FACTOR)
    return int(max(share, int(cfg.video_min_pixels * MIN_PIXELS_SLACK)))


def frame_size(height: int, width: int, frames: int, cfg) -> tuple[int, int]:
    """(height, width) the judge sees a `height` x `width` video's frames at, when it samples `frames`."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=SIZE_FACTOR, min_pixels=cfg.video_min_pixels,
                        max_pixels=frame_pixel_cap(frames, cfg))


def visual_tokens(frames: int, height: int, width: int) -> int:
    return frames // FRAME_FACTOR * (height // SIZE_FACTOR) * (width // SIZE_FACTOR)


@dataclass(frozen=True)
class SampledVideo:
    """The frames a judge sees, with where they came from (the metadata vLLM and transformers read: Qwen2.5-VL
    times its temporal positions by the sampled fps)."""

    frames: np.ndarray        # (n, h, w, 3) uint8, n even, h and w multiples of 28
    indices: list[int]        # which source frames
    fps: float                # the source's frame rate
    total_frames: int         # the source's frame count

    @property
    def sampled_fps(self) -> float:
        return len(self.indices) / self.total_frames * self.fps

    @property
    def tokens(self) -> int:
        return visual_tokens(*self.frames.shape[:3])

    def metadata(self) -> dict:
        """transformers' VideoMetadata fields (its sampled fps is len(frames_indices) / total_num_frames x fps)."""
        return {"fps": self.fps, "total_num_frames": self.total_frames, "frames_indices": list(self.indices),
                "duration": self.total_frames / self.fps, "video_backend": "pyav"}


def sample_video(frames: np.ndarray, fps: float, cfg) -> SampledVideo:
    """The judge's view of a decoded video (frames (T, H, W, 3) uint8 at `fps`); ValueError when it has no
    frame rate or an aspect ratio Qwen-VL cannot take (over 200:1)."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    total, height, width = frames.shape[:3]
    if not fps > 0:
        raise ValueError(f"the video has no frame rate (fps {fps}); cannot sample it by time")
    n = num_frames(total, fps, cfg)
    indices = np.linspace(0, total - 1, n).round().astype(int).tolist()
    h, w = frame_size(height, width, n, cfg)
    clip = torch.from_numpy(np.ascontiguousarray(frames[indices])).permute(0, 3, 1, 2)
    if (h, w) != (height, width):
        clip = tvf.resize(clip.float(), [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        clip = clip.round().clamp(0, 255).to(torch.uint8)
    return SampledVideo(clip.permute(0, 2, 3, 1).numpy(), indices, float(fps), total)


def max_video_tokens(height: int, width: int, cfg) -> tuple[int, int, int, int]:
    """The most visual tokens one `height` x `width` video can cost under `cfg`, whatever its length and frame
    rate: (tokens, frames, frame height, frame width) of the worst frame count."""
    worst = (0, 0, 0, 0)
    for n in range(FRAME_FACTOR, max(cfg.video_max_frames, FRAME_FACTOR) + 1, FRAME_FACTOR):  # shorter videos too
        h, w = frame_size(height, width, n, cfg)
        worst = max(worst, (visual_tokens(n, h, w), n, h, w))
    return worst


def text_token_allowance(cfg) -> int:
    """Tokens left for the text of a request: up to one per character of the untrusted prompt, plus 512 for
    the rubric, the instructions and the chat frame (ViPO's rubrics are ~150 tokens in Qwen's tokenizer)."""
    return cfg.max_prompt_chars + 512


def context_limit(cfg) -> tuple[int | None, str]:
    """The judge's context length and where it comes from; None where nothing states one."""
    if cfg.context_tokens:
        return cfg.context_tokens, "context_tokens"
    if cfg.backend == "vllm":
        return int(cfg.engine_kwargs.get("max_model_len", 4096)), "engine_kwargs.max_model_len (vLLM)"
    return None, ""


def check_video_context(judge: str, cfg, height: int, width: int, videos: int) -> None:
    """Fail (ValueError, one line with the numbers) when a request of `videos` videos of `height` x `width`
    can exceed the judge's context; nothing is loaded."""
    limit, source = context_limit(cfg)
    if limit is None:
        return
    tokens, n, h, w = max_video_tokens(height, width, cfg)
    text = text_token_allowance(cfg)
    need = videos * tokens + text
    if need > limit:
        raise ValueError(
            f"judge {judge}: a request with {videos} video(s) of {width}x{height} needs up to {need} tokens > {limit} "
            f"({source}): {videos} x {tokens} visual tokens ({n} frames at {w}x{h}: {n} / {FRAME_FACTOR} x "
            f"{h // SIZE_FACTOR} x {w // SIZE_FACTOR}) + {text} for the text; lower video_max_frames, "
            "video_total_pixels or video_max_pixels, or raise the context")
