"""The motion signal (workers/motion.py) on real encoded MP4s: a still video ranks below a slow one, a slow
one below a fast one, and only moving videos are dynamic."""

import numpy as np
import pytest
from test_media import moving_square

from workers.media import mp4_bytes
from workers.motion import measure_motion, video_motion


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


def test_one_frame_is_an_error():
    with pytest.raises(ValueError, match="at least 2 frames"):
        measure_motion(np.zeros((1, 16, 16, 3), np.uint8), fps=8)
