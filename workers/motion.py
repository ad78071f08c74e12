"""A measured motion signal for videos, after VBench's dynamic degree.

VBench (Vchitect/VBench, vbench/dynamic_degree.py, class DynamicDegree) measures one video thus, and this
module does the same:
- `get_frames`: every `max(1, round(fps / 8))`-th frame, at the video's own resolution (no resizing);
- `infer` / `get_score`: per consecutive pair of those frames, the optical flow (RAFT) on the frames padded
  to a multiple of 8 (`InputPadder`, edge pixels repeated), and the pair's score: the mean of the largest
  `int(0.05 * h * w)` flow magnitudes, h x w the padded size;
- `set_params`: threshold `6 * max(1, 8 / fps) * min(H, W) / 256` px (fps of the video before sampling,
  H x W the frame before padding: a frame rate below 8 puts frames further apart, so they need to move
  more) and `count_num = round(4 * frames / 16)`, frames the number sampled (Python's round, half to even);
- `check_move`: the video is dynamic when at least `count_num` pair scores exceed the threshold.

Here:
- `flow_mean`: the mean flow magnitude over all pixels and frame pairs, and `flow_top`: the mean of the
  pairs' VBench scores, both in pixels per frame rescaled to 256 px on the short side (x 256 / min(H, W)),
  so videos of different sizes compare; that rescaling is also how the threshold is applied (score x 256 /
  min(H, W) > 6 x factor is VBench's score > 6 x factor x min(H, W) / 256);
- `dynamic`: VBench's per-video flag.

Where this differs from VBench, and why:
- flow: OpenCV's Farneback (classical, no weights) is the embedded default, so the signal exists without a
  model download; its magnitudes are near RAFT's on smooth motion but not equal, so `dynamic` from
  Farneback approximates VBench's. RAFT, as VBench uses it (the large model, 20 refinement iterations),
  is `RaftFlow` with torchvision's implementation and a local weights file: torchvision's own state
  dicts (`Raft_Large_Weights.C_T_V2`, trained on FlyingChairs + FlyingThings3D like VBench's
  `raft-things.pth`); the original princeton-vl checkpoint's keys differ and do not load. Farneback needs
  no padding and scores over the frame itself. torchvision's RAFT refuses frames under 128 px on a side
  (VBench's 720p / 512 px videos never are): smaller ones (the tiny demo's 64 px) are upscaled by a whole
  factor first and the flow divided by it, so it stays in the video's own pixels.
- `count_num` of 0 (2 sampled frames: round(0.5) = 0): VBench's `check_move` then returns True at the
  first pair whatever its score, so a still 2-frame video would be dynamic; here at least one pair must move.

The signal is evidence stored with motion-quality pairs, not their label: a still video is not always
worse, and a flickering one has large flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SCALE = 256.0         # VBench's reference short side: thresholds scale with min(H, W) / 256
TOP_SHARE = 0.05      # VBench get_score: the mean of the largest 5% of a frame pair's flow magnitudes
MOVE_THRESHOLD = 6.0  # VBench set_params: a pair moves above 6 px at 256 px (times the frame-rate factor)
SAMPLE_FPS = 8.0      # VBench get_frames: every round(fps / 8)-th frame
RAFT_ITERATIONS = 20  # VBench infer: RAFT's iters=20 (torchvision's default is 12)
RAFT_MODELS = ("raft_large", "raft_small")
RAFT_MIN_SIDE = 128   # torchvision's RAFT needs feature maps (1/8 of the frame) of at least 16 px

# A flow estimator: consecutive frame pairs (N, H, W, 3) uint8 twice -> flows (N, h, w, 2) in the video's
# pixels, h x w the size it scored at (RAFT's padded, for small videos upscaled, frame).
Flow = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Motion:
    flow_mean: float
    flow_top: float
    dynamic: bool

    def as_dict(self) -> dict:
        return asdict(self)


def farneback_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """OpenCV's Farneback dense flow with its documented defaults (pyramid 0.5, 3 levels, 15 px window,
    3 iterations, poly_n 5, poly_sigma 1.2)."""
    import cv2

    gray = [[cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames] for frames in (first, second)]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(*gray)])


class RaftFlow:
    """RAFT (torchvision.models.optical_flow) from a local state-dict file, on the GPU when there is one.
    Frames are padded to a multiple of 8 as VBench's InputPadder pads them (split evenly on both sides,
    edge pixels repeated) and normalised to [-1, 1] as torchvision's Raft transforms do."""

    def __init__(self, weights: str | Path, model: str = "raft_large", batch: int = 8):
        import torch
        from torchvision.models import optical_flow

        if model not in RAFT_MODELS:
            raise ValueError(f"RAFT model {model!r} is not one of {', '.join(RAFT_MODELS)}")
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"RAFT weights {path}: no such file (a torchvision {model} state dict, e.g. "
                             f"Raft_Large_Weights.C_T_V2's .pth)")
        self.net = getattr(optical_flow, model)(weights=None, progress=False)
        try:
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as e:
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
            why = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
            raise ValueError(f"RAFT weights {path} are not a torchvision {model} state dict: {why}") from None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net.eval().to(self.device)
        self.batch = batch

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        up = -(-RAFT_MIN_SIDE // min(first.shape[1:3]))  # a whole factor, 1 from 128 px up
        h, w = first.shape[1] * up, first.shape[2] * up
        pad_h, pad_w = -h % 8, -w % 8
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

        def prepare(frames: np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if up > 1:
                x = F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)
            return F.pad(x, pad, mode="replicate")

        flows = []
        with torch.inference_mode():
            for i in range(0, len(first), self.batch):
                flow = self.net(prepare(first[i:i + self.batch]), prepare(second[i:i + self.batch]),
                                num_flow_updates=RAFT_ITERATIONS)[-1]
                flows.append((flow / up).permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(flows)


@lru_cache(maxsize=2)
def raft_flow(weights: str, model: str = "raft_large") -> RaftFlow:
    """One loaded RAFT per weights file and process (loading it per video would dominate)."""
    return RaftFlow(weights, model)


def measure_motion(frames: np.ndarray, fps: float, flow: Flow = farneback_flow) -> Motion:
    """The motion signal of a video (frames (T, H, W, 3) uint8 at `fps`); ValueError for fewer than 2 frames."""
    step = max(1, round(fps / SAMPLE_FPS)) if fps else 1
    frames = np.asarray(frames)[::step]
    if len(frames) < 2:
        raise ValueError(f"motion needs at least 2 frames after sampling at ~{SAMPLE_FPS:g} fps; got {len(frames)}")
    scale = SCALE / min(frames.shape[1:3])
    threshold = MOVE_THRESHOLD * (max(1.0, SAMPLE_FPS / fps) if fps else 1.0)
    magnitudes = np.hypot(*np.moveaxis(flow(frames[:-1], frames[1:]), -1, 0)).reshape(len(frames) - 1, -1) * scale
    k = max(1, int(magnitudes.shape[1] * TOP_SHARE))
    tops = np.partition(magnitudes, -k, axis=1)[:, -k:].mean(axis=1)
    needed = max(1, round(4 * len(frames) / 16))
    return Motion(flow_mean=float(magnitudes.mean()), flow_top=float(tops.mean()),
                  dynamic=int((tops > threshold).sum()) >= needed)


def video_motion(data: bytes, flow: Flow = farneback_flow) -> Motion:
    """The motion signal of an encoded video (MP4 bytes)."""
    from workers.media import decode_video

    return measure_motion(*decode_video(data), flow=flow)
