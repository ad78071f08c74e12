"""The motion signal (workers/motion.py) on real encoded MP4s: a still video ranks below a slow one, a slow
one below a fast one, and only moving videos are dynamic; VBench's dynamic-degree rule (frame-rate factor,
count of moving pairs); RAFT from a local weights file."""

from pathlib import Path

import numpy as np
import pytest
from test_media import moving_square

from schemas.category import get_category
from schemas.config import load_run_config
from workers.media import mp4_bytes
from workers.motion import RaftFlow, measure_motion, raft_flow, video_motion


def test_still_ranks_below_slow_below_fast_on_encoded_mp4s():
    still, slow, fast = (video_motion(mp4_bytes(moving_square(frames=9, step=s), fps=8)) for s in (0, 1, 4))
    assert still.flow_mean < 0.05 and not still.dynamic
    assert still.flow_mean < slow.flow_mean < fast.flow_mean
    assert still.flow_top < slow.flow_top < fast.flow_top
    assert fast.dynamic


def test_frames_are_sampled_near_8_fps_so_the_rate_does_not_change_the_scale():
    video = moving_square(frames=17, step=2)
    at_8 = measure_motion(video[::2], fps=8)
    at_16 = measure_motion(video, fps=16)  # the same motion in twice the frames: sampled back to 8 fps
    assert at_16.flow_mean == pytest.approx(at_8.flow_mean)


def test_the_threshold_is_vbenchs_6_px_at_256_raised_below_8_fps():
    # 2 px per frame on a 48 px short side is 10.7 px at 256 px: over 6 at 8 fps, under 6 x 8/4 = 12 at 4 fps.
    video = moving_square(frames=9, step=2)
    at_8, at_4 = measure_motion(video, fps=8), measure_motion(video, fps=4)
    assert at_8.flow_top == at_4.flow_top == pytest.approx(2 * 256 / 48, rel=0.05)
    assert at_8.dynamic and not at_4.dynamic
    assert measure_motion(moving_square(frames=9, step=1), fps=8).flow_top < 6  # 5.3 px: not moving


def moving_in(pairs: int, frames: int = 9) -> np.ndarray:
    """The square still except for a 3 px jump in each of the first `pairs` frame pairs."""
    video = moving_square(frames=frames, step=0)
    for t in range(1, frames):
        video[t] = np.roll(video[t - 1], 3, axis=1) if t <= pairs else video[t - 1]
    return video


def test_dynamic_needs_round_4_frames_over_16_moving_pairs():
    # 9 sampled frames: round(4 * 9 / 16) = 2 moving pairs needed; 11: round(2.75) = 3 (counted over frames,
    # as VBench counts, not over the 10 pairs: round(2.5) = 2); 17 frames: round(4.25) = 4.
    assert not measure_motion(moving_in(1), fps=8).dynamic and measure_motion(moving_in(2), fps=8).dynamic
    assert not measure_motion(moving_in(2, frames=11), fps=8).dynamic
    assert measure_motion(moving_in(3, frames=11), fps=8).dynamic
    assert not measure_motion(moving_in(3, frames=17), fps=8).dynamic
    assert measure_motion(moving_in(4, frames=17), fps=8).dynamic
    # 2 frames: VBench's count_num is round(0.5) = 0 (it would call any such video moving); here 1 pair must.
    assert not measure_motion(moving_in(0, frames=2), fps=8).dynamic and measure_motion(moving_in(1, frames=2), fps=8).dynamic


def test_one_frame_is_an_error():
    with pytest.raises(ValueError, match="at least 2 frames"):
        measure_motion(np.zeros((1, 16, 16, 3), np.uint8), fps=8)


@pytest.fixture(scope="module")
def random_raft_small(tmp_path_factory):
    """A randomly initialised torchvision raft_small, saved as a local weights file: no trained weights
    can be downloaded here, so this checks the code path and shapes, not the flow's accuracy."""
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small-random-init.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    return path


def test_raft_from_a_local_weights_file_gives_flow_of_the_right_shape(random_raft_small):
    flow = RaftFlow(random_raft_small, "raft_small")
    video = moving_square(frames=3, h=44, w=60, step=2)
    # Under 128 px the frames are upscaled x3 (132 x 180), then padded to a multiple of 8 (136 x 184).
    out = flow(video[:-1], video[1:])
    assert out.shape == (2, 136, 184, 2) and out.dtype == np.float32 and np.isfinite(out).all()
    motion = video_motion(mp4_bytes(moving_square(frames=3, h=64, w=64), fps=8), flow=flow)
    assert np.isfinite([motion.flow_mean, motion.flow_top]).all() and isinstance(motion.dynamic, bool)


def test_raft_weights_that_do_not_fit_are_one_clear_error(random_raft_small, tmp_path):
    with pytest.raises(ValueError, match=r"raft_small-random-init.pth are not a torchvision raft_large state dict: "
                                         r"Missing key"):
        RaftFlow(random_raft_small, "raft_large")
    with pytest.raises(ValueError, match="no such file"):
        RaftFlow(tmp_path / "nope.pth")


def test_motion_quality_records_take_the_configured_flow(random_raft_small, tmp_path):
    demo = Path(__file__).resolve().parents[1] / "configs/demo_video.yaml"
    row = {"motion_prompt": "the camera pans left", "video_a": mp4_bytes(moving_square(frames=3, h=64, w=64), fps=8),
           "video_b": mp4_bytes(moving_square(frames=3, h=64, w=64, step=0), fps=8)}
    category = get_category("motion_quality")
    records = {}
    for flow in ("farneback", "raft"):
        cfg = load_run_config(demo, {"output.path": str(tmp_path / "out"), "categories.motion_quality.flow": flow,
                                     "categories.motion_quality.raft_weights": str(random_raft_small),
                                     "categories.motion_quality.raft_model": "raft_small"})
        records[flow] = category.record_values(row, {"w": "a", "l": "b"}, cfg)["motion"]
    assert [m["side"] for m in records["raft"]] == ["w", "l"]
    assert records["farneback"] == [{"side": tag, **video_motion(row[s]).as_dict()} for tag, s in (("w", "video_a"),
                                                                                                  ("l", "video_b"))]
    # The RAFT record is the (random) RAFT's measurement, from the one model loaded per weights file.
    flow = raft_flow(str(random_raft_small), "raft_small")
    assert records["raft"][0] == {"side": "w", **video_motion(row["video_a"], flow).as_dict()}
    assert records["raft"] != records["farneback"]
