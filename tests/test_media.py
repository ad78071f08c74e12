"""The media codec: PNG for images, H.264 MP4 for videos, read back by PyAV and by `datasets`."""

import numpy as np
import pytest

from workers.media import decode_image, decode_video, mp4_bytes, png_bytes, video_info


def moving_square(frames: int = 9, h: int = 48, w: int = 64, step: int = 3) -> np.ndarray:
    """A smooth scene: a bright square moving right over a gradient (what H.264 is made for)."""
    y, x = np.mgrid[0:h, 0:w]
    video = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        bg = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 80)], -1)
        x0 = 4 + step * t
        bg[12:28, x0:x0 + 16] = (250, 250, 40)
        video[t] = bg
    return video


def test_mp4_round_trip_keeps_size_frames_fps_and_content():
    video = moving_square()
    data = mp4_bytes(video, fps=8)
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # moov first: plays while loading
    frames, fps = decode_video(data)
    assert frames.shape == video.shape and fps == 8
    assert np.abs(frames.astype(int) - video).mean() < 4  # near-transparent at CRF 12 on smooth content
    assert video_info(data) == video_info(mp4_bytes(video.astype(np.float32) / 255, fps=8))


def test_mp4_is_h264_that_pyav_reports_and_datasets_loads(tmp_path):
    import av
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = mp4_bytes(moving_square(), fps=12)
    with av.open(__import__("io").BytesIO(data)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.video[0].frames in (0, 9)
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"video": [{"bytes": data, "path": "p-a.mp4"}]}), path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    ds = ds.cast_column("video", datasets.Video(decode=False))
    assert ds[0]["video"]["bytes"] == data and ds[0]["video"]["path"] == "p-a.mp4"


def test_bad_media_is_a_value_error_naming_what_is_wrong():
    with pytest.raises(ValueError, match="not a decodable video"):
        decode_video(b"\x00\x00\x00 ftypisom not really")
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(b"GIF89a broken")
    with pytest.raises(ValueError, match="even width and height"):
        mp4_bytes(np.zeros((3, 31, 32, 3), np.uint8), fps=8)
    with pytest.raises(ValueError, match=r"\(frames, height, width, 3\)"):
        mp4_bytes(np.zeros((31, 32, 3), np.uint8), fps=8)


def test_png_round_trip_is_lossless():
    from PIL import Image

    image = Image.fromarray(moving_square()[0])
    assert np.array_equal(np.asarray(decode_image(png_bytes(image))), np.asarray(image))
