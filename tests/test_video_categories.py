"""The three video categories (ViPO B.2): their labelling rules and plans on constructed rows, their config
checks, and the video demo end to end on real local Ray with the tiny Wan models: videos that PyAV decodes
and `datasets` loads, record fields, inherited labels that point to real parent pairs, and a re-run that adds
nothing."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, small_video_demo
from PIL import Image

from pipelines.categories.motion_quality import score_label
from pipelines.store import shard_files
from schemas.category import get_category
from schemas.config import ConfigError, RunConfig, load_run_config
from workers.media import decode_video

VIDEO_CATEGORIES = ("motion_quality", "visual_quality", "video_text_alignment")
DEMO = REPO / "configs/demo_video.yaml"


def score(judge, side, expected, std=1.0):
    return {"judge": judge, "side": side, "expected": expected, "std": std}


def test_motion_quality_label_is_the_score_gap_within_the_band():
    label = score_label([score("j1", "a", 7.0), score("j1", "b", 5.0), score("j2", "a", 6.0), score("j2", "b", 6.5)],
                        min_gap=0.5, max_gap=4.0)
    assert (label.winner, label.source) == ("a", "vlm_score")  # mean gap (2 - 0.5) / 2 = 0.75
    assert label.agreement == 0.5
    assert label.confidence == pytest.approx(0.5 * (1 + math.erf(0.75 / np.sqrt(2) / np.sqrt(2))))
    flipped = score_label([score("j1", "a", 3.0), score("j1", "b", 5.0)], 0.5, 4.0)
    assert flipped.winner == "b" and flipped.agreement == 1.0
    assert score_label([score("j1", "a", 5.2), score("j1", "b", 5.0)], 0.5, 4.0).reason == "gap_too_small"
    assert score_label([score("j1", "a", 9.5), score("j1", "b", 1.0)], 0.5, 4.0).reason == "gap_too_large"
    # A judge that could not read one side does not count; none left: unscored, never a guess.
    assert score_label([score("j1", "a", 9.0), score("j1", "b", None)], 0.5, 4.0).reason == "unscored"
    assert score_label([], 0.5, 4.0).reason == "unscored"
    assert score_label([score("j1", "a", 9.0), score("j2", "a", 6.0), score("j2", "b", 5.0)], 0.5, 4.0).winner == "a"


def test_two_phases_costs_add_up_for_a_pool_both_ran():
    from pipelines.run import merge_costs

    def cost(stage_busy: dict, category: str, util: float) -> dict:
        stages = {s: {"actors": 1, "batches": 1, "rows": 2, "busy_s": b, "gpu_s": 0.0, "s_per_row": b / 2,
                      "utilisation": util} for s, b in stage_busy.items()}
        return {"stages": stages, "s_per_pair": {category: {s: b / 2 for s, b in stage_busy.items()}},
                "pairs": {category: 2}, "busy_by_category": {s: {category: b} for s, b in stage_busy.items()},
                "bottleneck": next(iter(stage_busy))}

    merged = merge_costs(cost({"generator:wan": 1.0, "judge:a": 3.0}, "motion_quality", 0.4),
                         cost({"generator:wan": 4.0}, "visual_quality", 0.9))
    assert merged["stages"]["generator:wan"]["busy_s"] == 5.0 and merged["stages"]["generator:wan"]["rows"] == 4
    assert merged["busy_by_category"]["generator:wan"] == {"motion_quality": 1.0, "visual_quality": 4.0}
    assert merged["bottleneck"] == "generator:wan" and set(merged["pairs"]) == {"motion_quality", "visual_quality"}


def demo_config(tmp_path: Path, **sets) -> RunConfig:
    return load_run_config(DEMO, {"output.path": str(tmp_path / "out"), **sets})


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, "PNG")
    return buf.getvalue()


def parents(**overrides) -> dict:
    """A numpy batch of two parent pair records, as a derived category's plan gets them."""
    rows = [{"pair_id": "p1", "category": "composition", "prompt": "a red barn", "prompt_id": "i1", "prompt_source": "s",
             "prompt_l": None, "image_w": {"bytes": png((200, 0, 0)), "path": "p1-w.png"},
             "image_l": {"bytes": png((0, 0, 200)), "path": "p1-l.png"}, "label_source": "vlm_panel", "agreement": 1.0,
             "votes": [{"judge": j, "choice": "A"} for j in ("x", "y")]},
            {"pair_id": "p2", "category": "composition", "prompt": "a lake", "prompt_id": "i2", "prompt_source": "s",
             "prompt_l": None, "image_w": {"bytes": png((0, 200, 0)), "path": "p2-w.png"},
             "image_l": {"bytes": png((9, 9, 9)), "path": "p2-l.png"}, "label_source": "vlm_panel",
             "agreement": 1.0, "votes": [{"judge": "x", "choice": "A"}, {"judge": "y", "choice": None}]}]
    rows = [{**r, **overrides} for r in rows]
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_visual_quality_animates_only_unanimous_pairs_winner_on_side_a(tmp_path):
    cfg = demo_config(tmp_path)
    work = get_category("visual_quality").plan(parents(), cfg).to_pylist()
    assert [w["parent_pair_id"] for w in work] == ["p1"]  # p2 has an abstaining vote: not unanimous
    (w,) = work
    assert w["prompt_a"] == w["prompt_b"] == w["prompt"] and w["prompt"].startswith("a red barn, ")
    assert w["seed_a"] == w["seed_b"] and w["gen_a"] == w["gen_b"] == "wan-i2v"
    frame_a = np.asarray(Image.open(io.BytesIO(w["frame_a"])))
    assert frame_a.shape == (64, 64, 3) and frame_a[..., 0].mean() > 150  # the parent's winner, fitted to 64x64
    again = get_category("visual_quality").plan(parents(), cfg).to_pylist()
    assert again[0]["pair_id"] == w["pair_id"]
    assert get_category("visual_quality").label(w, cfg).source == "inherited"


def test_video_text_alignment_builds_spatial_and_temporal_pairs_with_both_prompts(tmp_path):
    cfg = demo_config(tmp_path)
    work = get_category("video_text_alignment").plan(
        parents(category="alignment", label_source="construction", prompt_l="a blue barn"), cfg).to_pylist()
    by_kind = {w["alignment_kind"]: w for w in work if w["parent_pair_id"] == "p1"}
    spatial, temporal = by_kind["spatial"], by_kind["temporal"]
    motion = spatial["motion_prompt"]
    assert spatial["prompt_a"] == f"a red barn, {motion}" and spatial["prompt_b"] == f"a blue barn, {motion}"
    assert spatial["frame_a"] != spatial["frame_b"]  # the alignment pair's two images
    assert temporal["frame_a"] == temporal["frame_b"] == spatial["frame_a"]  # one image, the winner
    assert temporal["prompt_a"] == spatial["prompt_a"] and temporal["prompt_b"].startswith("a red barn, ")
    assert temporal["prompt_b"] != temporal["prompt_a"]  # the motion's verb or direction changed
    assert spatial["pair_id"] != temporal["pair_id"]
    only = demo_config(tmp_path, **{"categories.video_text_alignment.kinds": ["temporal"]})
    assert {w["alignment_kind"] for w in get_category("video_text_alignment").plan(
        parents(category="alignment", label_source="construction", prompt_l="x"), only).to_pylist()} == {"temporal"}


def test_motion_quality_plans_one_first_frame_for_two_generators(tmp_path):
    cfg = demo_config(tmp_path)
    batch = {"prompt": np.array(["a waterfall"], dtype=object), "prompt_id": np.array(["i1"], dtype=object),
             "prompt_source": np.array(["s"], dtype=object), "source_image": np.array([None], dtype=object)}
    (w,) = get_category("motion_quality").plan(batch, cfg).to_pylist()
    assert (w["gen_a"], w["gen_b"], w["frame_gen"]) == ("wan-i2v", "wan2.2-i2v", "sd")
    assert w["seed_a"] == w["seed_b"] and w["score_judges"] == ["qwen2-vl-a"] and w["judges"] == []
    one = demo_config(tmp_path, **{"categories.motion_quality.generators": ["wan-i2v"]})
    (w,) = get_category("motion_quality").plan(batch, one).to_pylist()
    assert w["gen_a"] == w["gen_b"] and w["seed_a"] != w["seed_b"]  # one model: two seeds


@pytest.mark.parametrize("key,value,error", [
    ("categories.visual_quality.generators", ["sd"], "visual_quality pairs are videos; sd is not"),
    ("categories.composition.generators", ["sd", "wan-i2v"], "composition pairs are images; wan-i2v is not"),
    ("categories.motion_quality.frame_generator", "wan-i2v", "must be an image generator"),
    ("categories.motion_quality.score_judges", [], "set score_judges"),
    ("categories.motion_quality.min_score_gap", 7.0, "must be below max_score_gap"),
    ("categories.motion_quality.flow", "raft", "flow: raft needs raft_weights"),
    ("categories.motion_quality.raft_weights", "/nowhere/raft.pth", "raft_weights /nowhere/raft.pth: no such file"),
    ("categories.motion_quality.flow", "raft9", "farneback"),
    ("generators.wan-i2v.num_frames", 10, "4k\\+1"),
])
def test_bad_video_config_is_one_clear_error(tmp_path, key, value, error):
    with pytest.raises(ConfigError, match=error):
        demo_config(tmp_path, **{key: value})


def test_parents_from_a_missing_directory_is_one_clear_error(tmp_path):
    from pipelines.run import parent_pairs

    cfg = demo_config(tmp_path, **{"categories.visual_quality.parents_from": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="visual_quality.parents_from: .*nowhere is not a directory"):
        parent_pairs(cfg, "visual_quality", get_category("visual_quality"))


@pytest.fixture(scope="module")
def video_demo(ray_session, tmp_path_factory):
    from pipelines.run import run

    tmp = tmp_path_factory.mktemp("video")
    # The demo, smaller: 3 + 2 + 2 prompts (motion pairs from two models:
    # test_motion_quality_plans_one_first_frame_for_two_generators).
    cfg = RunConfig.model_validate(small_video_demo(tmp, {"composition": 3, "alignment": 2, "motion_quality": 2}))
    first = run(cfg)
    out = Path(cfg.output.path)
    files = {kind: sorted(shard_files(out, kind)) for kind in ("pairs", "undecided", "errors")}
    rows = {kind: [r for f in fs for r in pq.read_table(f).to_pylist()] for kind, fs in files.items()}
    second = run(cfg)
    return cfg, out, first, second, files, rows


def test_video_demo_writes_every_video_category(video_demo):
    cfg, out, first, _, _, rows = video_demo
    assert not rows["errors"]
    kinds = {(r["category"], k) for k in ("pairs", "undecided") for r in rows[k]}
    for category in VIDEO_CATEGORIES:
        assert {(category, "pairs"), (category, "undecided")} & kinds, category
    videos = [r for k in ("pairs", "undecided") for r in rows[k] if r["category"] in VIDEO_CATEGORIES]
    for r in videos:
        tags = ("w", "l") if "video_w" in r and r.get("video_w") else ("a", "b")
        for tag in tags:
            video = r[f"video_{tag}"]
            assert video["path"] == f"{r['pair_id']}-{tag}.mp4"
            frames, fps = decode_video(video["bytes"])
            assert frames.shape == (r["frames"], r["height"], r["width"], 3) == (9, 64, 64, 3) and fps == r["fps"] == 8
            assert r[f"image_{tag}"]["path"] == f"{r['pair_id']}-{tag}.png"  # the first frame it was animated from
    motion = [r for r in rows["undecided"] + rows["pairs"] if r["category"] == "motion_quality"]
    assert motion and all(len(r["motion"]) == 2 and r["motion"][0]["flow_mean"] >= 0 for r in motion)


def test_video_labels_point_to_real_parents_and_keep_both_prompts(video_demo):
    _, _, _, _, _, rows = video_demo
    pairs = {r["pair_id"]: r for r in rows["pairs"]}
    derived = [r for r in rows["pairs"] if r["category"] in ("visual_quality", "video_text_alignment")]
    assert {r["category"] for r in derived} == {"visual_quality", "video_text_alignment"}
    for r in derived:
        parent = pairs[r["parent_pair_id"]]
        assert r["prompt_id"] == parent["prompt_id"] and r["prompt"].startswith(parent["prompt"].rstrip("."))
        if r["category"] == "visual_quality":
            assert r["label_source"] == "inherited" and parent["label_source"] == "vlm_panel"
            assert parent["agreement"] == 1.0
        else:
            assert r["label_source"] == "construction" and parent["category"] == "alignment"
            assert r["prompt_l"] and r["prompt_l"] != r["prompt"]
    assert {r["alignment_kind"] for r in derived if r["category"] == "video_text_alignment"} == {"spatial", "temporal"}


def test_video_shards_load_with_datasets(video_demo):
    import datasets

    _, out, _, _, files, _ = video_demo
    video_files = [str(f) for f in files["pairs"] if f.parent.name in VIDEO_CATEGORIES]
    ds = datasets.load_dataset("parquet", data_files=video_files, split="train")
    assert isinstance(ds.features["video_w"], datasets.Video) and isinstance(ds.features["image_w"], datasets.Image)
    ds = ds.cast_column("video_w", datasets.Video(decode=False)).cast_column("video_l", datasets.Video(decode=False))
    decode_video(ds[0]["video_w"]["bytes"])
    assert ds[0]["video_l"]["path"].endswith("-l.mp4") and ds[0]["image_w"].size == (64, 64)


def test_a_rerun_adds_nothing(video_demo):
    _, out, first, second, files, _ = video_demo
    assert sorted(shard_files(out, "pairs") + shard_files(out, "undecided")) == sorted(files["pairs"] + files["undecided"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(n == 0 for n in manifest["runs"][-1]["planned"].values())
    assert second["totals"] == first["totals"]


def test_training_reads_each_model_its_own_media_from_a_mixed_output(video_demo):
    """One output holds image and video pairs, and every shard has every column (a video pair's image_w is the
    first frame it started from): an image model must not train on those first frames, a video model must
    not read image pairs' null videos."""
    from schemas.config import TrainData
    from training.data import pair_files

    _, out, _, _, files, _ = video_demo
    data = TrainData(paths=[str(out)])
    image, video = pair_files(data, "image"), pair_files(data, "video")
    assert set(video) == {f.parent.name for f in files["pairs"]} & set(VIDEO_CATEGORIES)
    assert set(image) == {f.parent.name for f in files["pairs"]} - set(VIDEO_CATEGORIES) and image
    for fs in video.values():
        for f in fs:
            assert pq.read_table(f, columns=["video_w"]).column(0).null_count == 0


def test_the_report_plays_the_demo_videos(video_demo, tmp_path):
    """`pairforge stats --html` on the real video output: each sampled video pair inlines both stored MP4s as
    playing <video> elements (the browser plays them in tests/test_report.py), never its first frames."""
    import base64
    import re

    from pipelines.report import SAMPLES_PER_CATEGORY, write_html
    from pipelines.stats import compute_stats

    _, out, _, _, files, rows = video_demo
    page = write_html(out, compute_stats(out), tmp_path / "report.html").read_text()
    stored = {r[f"video_{t}"]["bytes"] for r in rows["pairs"] if r["category"] in VIDEO_CATEGORIES for t in "wl"}
    shown = [base64.b64decode(m) for m in re.findall(r"<video class='preview' src='data:video/mp4;base64,([^']+)'", page)]
    pairs = {c: sum(r["category"] == c for r in rows["pairs"]) for c in VIDEO_CATEGORIES}
    assert len(shown) == 2 * sum(min(n, SAMPLES_PER_CATEGORY) for n in pairs.values()) > 0
    assert set(shown) <= stored  # the demo's videos are small: inlined as stored
    assert page.count("9 frames, 8 fps, 64x64") == len(shown)
