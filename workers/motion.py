"""A measured motion signal for videos: dense optical flow between consecutive frames (OpenCV's Farneback,
classical, no weights: the embedded default; RAFT is what VBench uses where its weights are at hand), then

- `flow_mean`: the mean flow magnitude over all pixels and frame pairs, in pixels per frame at 256 px on the
  short side (so videos of different sizes compare);
- `flow_top`: per frame pair the mean of the largest 5% of magnitudes (VBench's per-pair score: a small
  moving subject counts even on a still background), averaged over the pairs, at the same scale;
- `dynamic`: VBench's dynamic degree for one video: moving when at least round(4 * pairs / 16) (at least 1)
  frame pairs have a top-5% magnitude above 6 px at 256 px.

Frames are first subsampled to about 8 per second as VBench does, so the thresholds mean the same at any
frame rate. The signal is evidence stored with motion-quality pairs, not their label: a still video is
not always worse, and a flickering one has large flow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCALE = 256.0        # magnitudes are reported as if the short side were this many pixels (VBench's reference)
TOP_SHARE = 0.05     # VBench: the mean of the largest 5% of a frame pair's flow magnitudes
MOVE_THRESHOLD = 6.0  # VBench: a frame pair moves when that mean exceeds 6 px at 256 px
SAMPLE_FPS = 8.0     # VBench samples about 8 frames per second before measuring flow


@dataclass(frozen=True)
class Motion:
    flow_mean: float
    flow_top: float
    dynamic: bool

    def as_dict(self) -> dict:
        return asdict(self)


def measure_motion(frames: np.ndarray, fps: float) -> Motion:
    """The motion signal of a video (frames (T, H, W, 3) uint8 at `fps`); ValueError for fewer than 2 frames."""
    import cv2

    step = max(1, round(fps / SAMPLE_FPS)) if fps else 1
    frames = np.asarray(frames)[::step]
    if len(frames) < 2:
        raise ValueError(f"motion needs at least 2 frames after sampling at ~{SAMPLE_FPS:g} fps; got {len(frames)}")
    scale = SCALE / min(frames.shape[1:3])
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    means, tops = [], []
    for prev, nxt in zip(gray, gray[1:]):
        # OpenCV's documented defaults for Farneback (pyramid 0.5, 3 levels, 15 px window, 3 iterations).
        flow = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        magnitude = np.hypot(flow[..., 0], flow[..., 1]).ravel() * scale
        k = max(1, int(magnitude.size * TOP_SHARE))
        means.append(float(magnitude.mean()))
        tops.append(float(np.partition(magnitude, -k)[-k:].mean()))
    needed = max(1, round(4 * len(tops) / 16))
    return Motion(flow_mean=float(np.mean(means)), flow_top=float(np.mean(tops)),
                  dynamic=sum(t > MOVE_THRESHOLD for t in tops) >= needed)


def video_motion(data: bytes) -> Motion:
    """The motion signal of an encoded video (MP4 bytes)."""
    from workers.media import decode_video

    return measure_motion(*decode_video(data))
