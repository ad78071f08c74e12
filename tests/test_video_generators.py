"""Video generators (workers/generator.py): the tiny Wan text- and image-to-video pipelines, loaded with
from_pretrained, fill video_a / video_b with H.264 MP4s of the configured size, frames and rate; an image
generator draws a row's shared first frame."""

import numpy as np
import pyarrow as pa
import pytest

from schemas.work import WORK_COLUMNS
from workers.generator import DiffusersGenerator, VideoGenerator
from workers.media import decode_image, decode_video, png_bytes

VIDEO = dict(width=64, height=48, steps=2, guidance_scale=5.0, num_frames=9, fps=8)


def rows(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({c: pa.array(columns.get(c, [None] * n), t) for c, t in WORK_COLUMNS.items()})


def test_config_wants_4k_plus_1_frames():
    from schemas.config import GeneratorConfig

    with pytest.raises(ValueError, match="4k\\+1"):
        GeneratorConfig(model="tiny:wan-t2v", num_frames=8)
    assert GeneratorConfig(model="tiny:wan-t2v", num_frames=9).media == "video"
    assert GeneratorConfig(model="tiny:sd").media == "image"


def test_image_to_video_animates_each_side_from_its_first_frame(tiny_kit):
    from PIL import Image

    red, blue = (png_bytes(Image.new("RGB", (64, 48), c)) for c in ((220, 30, 30), (30, 30, 220)))
    gen = VideoGenerator("wan", dict(model="tiny:wan-i2v", **VIDEO), str(tiny_kit / "wan-i2v"))
    out = gen(rows(gen_a=["wan", "wan", "other"], gen_b=["wan", "wan", "wan"], prompt_a=["a cat walks"] * 3,
                   prompt_b=["a cat walks", "a cat runs", "a dog"], seed_a=[1, 1, 1], seed_b=[1, 1, 2],
                   frame_a=[red, red, None], frame_b=[blue, red, None]))
    videos = {s: out.column(f"video_{s}").to_pylist() for s in "ab"}
    errors = {s: out.column(f"error_{s}").to_pylist() for s in "ab"}
    frames, fps = decode_video(videos["a"][0])
    assert frames.shape == (9, 48, 64, 3) and fps == 8
    assert videos["a"][2] is None and errors["a"][2] is None  # another generator's side: untouched
    assert videos["b"][2] is None and "needs a first frame" in errors["b"][2]
    # The same frame, prompt and seed give the same video; another first frame (alone) gives another.
    assert videos["a"][0] == videos["a"][1] and videos["a"][0] != videos["b"][0]


def test_text_to_video_batches_and_refuses_a_first_frame(tiny_kit):
    gen = VideoGenerator("t2v", dict(model="tiny:wan-t2v", batch_size=4, **VIDEO), str(tiny_kit / "wan-t2v"))
    out = gen(rows(gen_a=["t2v", "t2v"], gen_b=["t2v", "t2v"], prompt_a=["a cat walks", "a cat walks"],
                   prompt_b=["a dog runs", "a dog runs"], seed_a=[3, 3], seed_b=[4, 4], frame_a=[None, b"png"]))
    assert decode_video(out.column("video_a")[0].as_py())[0].shape == (9, 48, 64, 3)
    same = [decode_video(out.column("video_b")[i].as_py())[0].astype(int) for i in (0, 1)]
    assert np.abs(same[0] - same[1]).mean() < 1  # one prompt and seed, one video (up to batched float rounding)
    assert out.column("video_a")[1].as_py() is None and "text-to-video" in out.column("error_a")[1].as_py()


def test_image_generator_draws_the_shared_first_frame(tiny_kit):
    gen = DiffusersGenerator("sd", dict(model="tiny:sd", width=64, height=48, steps=2), str(tiny_kit / "sd"))
    out = gen(rows(prompt=["a red barn", "a lake"], frame_gen=["sd", None], seed_frame=[5, None],
                   frame_a=[None, b"kept"], frame_b=[None, b"kept too"], gen_a=["wan", "wan"], gen_b=["wan", "wan"]))
    a, b = out.column("frame_a").to_pylist(), out.column("frame_b").to_pylist()
    assert a[0] == b[0] and np.asarray(decode_image(a[0])).shape == (48, 64, 3)
    assert (a[1], b[1]) == (b"kept", b"kept too")
