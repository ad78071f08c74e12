"""What a video judge sees: frame counts and sizes within the judge config's budgets (qwen-vl-utils' rules), and
the pre-flight check that fails a run whose video requests cannot fit the judge's context, before any model loads."""

import numpy as np
import pytest
import yaml
from helpers import small_run_config

from pipelines.categories.ab import ABCategory
from schemas.category import register, unregister
from schemas.config import ConfigError, JudgeConfig, load_run_config
from workers.media import decode_video, mp4_bytes
from workers.video_frames import FRAME_FACTOR, check_video_context, max_video_tokens, sample_video, visual_tokens


def judge_cfg(**video) -> JudgeConfig:
    return JudgeConfig(model="m", **video)


BUDGETS = [
    {},  # the defaults
    dict(video_fps=1.0, video_min_frames=3, video_max_frames=7, video_min_pixels=28 * 28 * 4,
         video_max_pixels=28 * 28 * 40, video_total_pixels=28 * 28 * 60),
    dict(video_fps=8.0, video_min_frames=2, video_max_frames=64, video_min_pixels=28 * 28,
         video_max_pixels=28 * 28 * 16, video_total_pixels=28 * 28 * 32),
]
VIDEOS = [(1, 8.0, 64, 64), (3, 24.0, 100, 60), (9, 8.0, 64, 96), (49, 16.0, 480, 832), (120, 30.0, 360, 200)]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("total,fps,height,width", VIDEOS)
def test_sampled_frames_respect_the_frame_and_pixel_budgets(budget, total, fps, height, width):
    cfg = judge_cfg(**budget)
    frames = np.random.default_rng(total).integers(0, 255, (total, height, width, 3), dtype=np.uint8)
    video = sample_video(frames, fps, cfg)
    n, h, w, _ = video.frames.shape
    assert video.frames.dtype == np.uint8 and n == len(video.indices)
    assert n % FRAME_FACTOR == 0 and n >= FRAME_FACTOR
    assert n <= max(cfg.video_max_frames, FRAME_FACTOR) and n <= max(total, FRAME_FACTOR)
    if total >= cfg.video_min_frames + 1:
        assert n >= cfg.video_min_frames - 1  # the minimum, rounded up to even, then down to what fits
    wanted = total / fps * cfg.video_fps
    assert n <= max(wanted, cfg.video_min_frames + 1, FRAME_FACTOR)
    assert video.indices == sorted(video.indices) and video.indices[0] == 0 and video.indices[-1] == total - 1
    assert h % 28 == 0 and w % 28 == 0
    assert cfg.video_min_pixels <= h * w <= max(cfg.video_max_pixels, int(cfg.video_min_pixels * 1.05))
    # The total budget caps the visual tokens, unless the per-frame minimum alone exceeds it.
    floor_tokens = n // 2 * int(cfg.video_min_pixels * 1.05) // 784
    assert video.tokens == visual_tokens(n, h, w) <= max(cfg.video_total_pixels // 784, floor_tokens)
    assert video.tokens <= max_video_tokens(height, width, cfg)[0]
    assert video.sampled_fps == pytest.approx(n / total * fps)


def test_frames_follow_time_not_position():
    """Twice the frame rate, the same duration: the same number of frames, taken at the same times."""
    cfg = judge_cfg(video_fps=2.0, video_max_frames=64, video_min_pixels=784, video_total_pixels=784 * 1000)
    slow = sample_video(np.zeros((40, 56, 56, 3), np.uint8), 8.0, cfg)
    fast = sample_video(np.zeros((80, 56, 56, 3), np.uint8), 16.0, cfg)
    assert len(slow.indices) == len(fast.indices) == 10  # 5 s at 2 fps
    assert np.allclose(np.array(fast.indices) / 16.0, np.array(slow.indices) / 8.0, atol=1 / 8.0)


def test_a_real_mp4_is_sampled_from_its_decoded_frames():
    rng = np.random.default_rng(0)
    data = mp4_bytes(rng.integers(0, 255, (17, 64, 96, 3), dtype=np.uint8), 8.0)
    video = sample_video(*decode_video(data), judge_cfg())
    assert video.fps == pytest.approx(8.0) and video.total_frames == 17
    assert len(video.indices) == 4 and video.sampled_fps == pytest.approx(4 / 17 * 8)  # 2.1 s at 2 fps -> 4


def test_a_video_without_a_frame_rate_is_refused():
    with pytest.raises(ValueError, match="no frame rate"):
        sample_video(np.zeros((4, 56, 56, 3), np.uint8), 0.0, judge_cfg())


def test_budget_keys_are_validated():
    with pytest.raises(ValueError, match="video_min_frames 8 > video_max_frames 4"):
        judge_cfg(video_min_frames=8, video_max_frames=4)
    with pytest.raises(ValueError, match="video_min_pixels"):
        judge_cfg(video_min_pixels=28 * 28 * 10, video_max_pixels=28 * 28 * 5)


def test_preflight_uses_the_engines_context_and_names_the_numbers():
    vllm = JudgeConfig(model="m", backend="vllm", engine_kwargs={"max_model_len": 4096})
    check_video_context("j", vllm, 480, 832, videos=2)  # the defaults fit a pair into vLLM's default context
    big = vllm.model_copy(update={"video_max_frames": 64, "video_total_pixels": 28 * 28 * 4096})
    with pytest.raises(ValueError) as e:
        check_video_context("j", big, 480, 832, videos=2)
    tokens, n, h, w = max_video_tokens(480, 832, big)
    msg = str(e.value)
    assert "\n" not in msg and f"2 x {tokens} visual tokens ({n} frames at {w}x{h}" in msg
    assert f"needs up to {2 * tokens + 600 + 512} tokens > 4096 (engine_kwargs.max_model_len (vLLM))" in msg
    check_video_context("j", big.model_copy(update={"backend": "transformers"}), 480, 832, videos=2)  # no limit
    with pytest.raises(ValueError, match="> 8192 \\(context_tokens\\)"):
        check_video_context("j", big.model_copy(update={"context_tokens": 8192}), 480, 832, videos=2)


class ClipPair(ABCategory):
    """A video category for the check: two generators' clips of one prompt, judged by a panel."""

    name = "clip_pair"
    media = "video"
    rubric = "Judge MOTION only: smooth, plausible movement."


@pytest.fixture
def clip_pair():
    register(ClipPair())
    yield
    unregister("clip_pair")


def test_a_run_whose_video_requests_cannot_fit_fails_at_config_load(clip_pair, tmp_path):
    """The run config is refused when it is read, before Ray starts or a model loads, with one line per problem."""
    cfg = small_run_config(tmp_path, overrides={
        ("generators", "wan"): {"model": "tiny:wan-t2v", "width": 64, "height": 64, "num_frames": 9, "fps": 8},
        ("generators", "wan2"): {"model": "tiny:wan-i2v", "width": 64, "height": 64, "num_frames": 9, "fps": 8},
        ("categories",): {"clip_pair": {"generators": ["wan", "wan2"], "panel": "main", "sources": ["test"]}}})
    data = cfg.model_dump(mode="json")
    data["judges"]["qwen2.5-vl-b"].update(backend="vllm", engine_kwargs={"max_model_len": 2048})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_run_config(path)
    problem = str(e.value).splitlines()[1]
    assert "categories.clip_pair: judge qwen2.5-vl-b: a request with 2 video(s) of 64x64" in problem
    assert "> 2048 (engine_kwargs.max_model_len (vLLM))" in problem
    data["judges"]["qwen2.5-vl-b"]["video_max_frames"] = 4
    path.write_text(yaml.safe_dump(data))
    assert load_run_config(path).judges["qwen2.5-vl-b"].video_max_frames == 4  # 2 x 288 + 1112 fits
