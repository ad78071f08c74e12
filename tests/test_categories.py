"""The five image categories end to end on real local Ray: each with the right construction and label
source, existing images from a Parquet source, and no prompt used by two categories."""

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import DECISIVE_PANELS, small_run_config
from PIL import Image

from pipelines.run import run
from pipelines.store import shard_files
from schemas.pair import IMAGE_CATEGORIES, UNDECIDED_REASONS


def png(seed: int, size=(96, 80)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def five_categories(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("categories")
    (tmp / "gallery").mkdir()
    Path(tmp / "gallery" / "lake.png").write_bytes(png(2))
    pq.write_table(pa.table({
        "caption": ["a misty lake at dawn with a wooden pier", "an orange kite above dunes", "a broken file"],
        "image": [{"bytes": png(1), "path": None}, {"bytes": None, "path": "lake.png"}, {"bytes": b"GIF89a?", "path": None}],
    }), tmp / "gallery" / "part-0.parquet")
    gallery = {"path": str(tmp / "gallery"), "source": "gallery", "format": "parquet", "text_field": "caption",
               "category_field": None, "image_field": "image"}
    cfg = small_run_config(tmp, n_prompts=3, categories=IMAGE_CATEGORIES, overrides={**DECISIVE_PANELS,
        ("prompts",): [{"path": str(tmp / "prompts.jsonl"), "source": "test"}, gallery],
        ("categories", "aesthetics", "sources"): ["gallery"],
        ("categories", "aesthetics", "existing_images"): True,
        ("categories", "aesthetics", "generators"): ["flux"],
    })
    report = run(cfg)
    out = Path(cfg.output.path)
    rows = {kind: [r for f in shard_files(out, kind) for r in pq.read_table(f).to_pylist()]
            for kind in ("pairs", "undecided", "errors")}
    return cfg, out, report, rows


def test_every_category_is_built_and_labelled_its_own_way(five_categories):
    _, _, report, rows = five_categories
    assert not rows["errors"]
    sources = {}
    for r in rows["pairs"]:
        sources.setdefault(r["category"], set()).add(r["label_source"])
    assert set(sources) == set(IMAGE_CATEGORIES)
    assert sources["alignment"] == {"construction"}
    assert sources["composition"] == sources["aesthetics"] == sources["human_quality"] == {"vlm_panel"}
    assert sources["text_rendering"] <= {"ocr", "vlm_panel"}
    for cat in IMAGE_CATEGORIES:
        assert report["categories"][cat]["pairs"] > 0


def test_no_prompt_is_used_by_two_categories(five_categories):
    _, _, _, rows = five_categories
    ids = [(r["prompt_id"], r["category"]) for k in ("pairs", "undecided") for r in rows[k]]
    assert len({p for p, _ in ids}) == len(ids)


def test_alignment_pairs_carry_their_edit(five_categories):
    _, _, _, rows = five_categories
    for r in (r for r in rows["pairs"] if r["category"] == "alignment"):
        assert r["prompt_l"] and r["prompt_l"] != r["prompt"] and 1 <= len(r["edit_dimensions"]) <= 3
        assert r["generator_w"]["name"] == r["generator_l"]["name"] and r["generator_w"]["seed"] == r["generator_l"]["seed"]
        assert r["votes"] == [] and r["agreement"] == 1.0


def test_text_rendering_pairs_store_ocr_reads(five_categories):
    _, _, _, rows = five_categories
    tr = [r for k in ("pairs", "undecided") for r in rows[k] if r["category"] == "text_rendering"]
    assert tr
    for r in tr:
        assert r["required_text"] and all(t in r["prompt"] for t in r["required_text"])
        assert len(r["ocr"]) == 2 and all(0.0 <= o["ned"] <= 1.0 for o in r["ocr"])
        if r.get("label_source") == "vlm_panel":  # stage 2 happens only when OCR could not tell
            assert r["ocr"][0]["exact"] == r["ocr"][1]["exact"] and len(r["votes"]) == 6


def test_score_judges_score_both_images_of_every_pair_of_their_category(five_categories):
    cfg, _, report, rows = five_categories
    assert cfg.categories["aesthetics"].score_judges == ["qwen2-vl-a"]  # the embedded default exercises it
    for r in rows["pairs"] + rows["undecided"]:
        expected = (["l", "w"] if "image_w" in r else ["a", "b"]) if r["category"] == "aesthetics" else []
        assert sorted(s["side"] for s in r["scores"] or []) == expected
        for s in r["scores"] or []:
            assert s["judge"] == "qwen2-vl-a" and 1 <= s["expected"] <= 10 and len(s["probs"]) == 10
    aesthetics = [r for r in rows["pairs"] if r["category"] == "aesthetics"]
    assert report["categories"]["aesthetics"]["scores"]["scored"] == len(aesthetics) > 0


def test_aesthetics_pits_existing_images_against_a_generator(five_categories):
    _, out, _, rows = five_categories
    aes = [r for k in ("pairs", "undecided") for r in rows[k] if r["category"] == "aesthetics"]
    assert len(aes) == 2  # the third image is corrupt
    for r in aes:
        gens = {r.get("generator_w", r.get("generator_a"))["name"], r.get("generator_l", r.get("generator_b"))["name"]}
        assert gens == {"existing", "flux"}
        for side in ("image_w", "image_l"):
            if r.get(side):
                assert Image.open(io.BytesIO(r[side]["bytes"])).size == (64, 64)  # fitted to the generator's size
    rejects = pq.read_table(out / "rejects/prompts.parquet").to_pylist()
    assert any(r["reject_reason"].startswith("bad_image") and r["prompt"] == "a broken file" for r in rejects)


def test_balance_reports_distance_to_target(five_categories, tmp_path):
    import json

    from pipelines.stats import compute_stats

    _, out, _, _ = five_categories
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["runs"][-1]["config"]["categories"]["composition"]["target_pairs"] = 100
    (out / "manifest.json").write_text(json.dumps(manifest))
    balance = compute_stats(out)["balance"]["composition"]
    assert balance["target"] == 100 and balance["missing"] == 100 - balance["pairs"]


def test_stats_count_each_outcome_per_category_and_no_label_contradicts_its_evidence(five_categories):
    import math
    from collections import Counter

    from pipelines.stats import compute_stats

    cfg, out, _, rows = five_categories
    report = compute_stats(out)
    for cat in IMAGE_CATEGORIES:
        reasons = Counter(r["reason"] for r in rows["undecided"] if r["category"] == cat)
        decided = [r for r in rows["pairs"] if r["category"] == cat]
        stats = report["categories"][cat]
        # every reason the record may carry (schemas/pair.py), counted; the video categories' reasons are 0 here
        assert stats["decisions"] == {"decided": len(decided), **{r: reasons[r] for r in UNDECIDED_REASONS}}
        assert stats["confidence_below_half"] in (0.0, None)
        confident = [r["confidence"] for r in decided if r["confidence"] is not None]
        assert stats["mean_confidence"] == (round(sum(confident) / len(confident), 4) if confident else None)
    assert report["totals"]["confidence_below_half"] == 0.0
    # Every panel label against its votes, re-derived here: the pooled order-averaged log-odds point at
    # the winner, and the confidence is their sigmoid.
    panel_pairs = [r for r in rows["pairs"] if r["label_source"] == "vlm_panel"]
    assert panel_pairs
    for r in panel_pairs:
        scale = cfg.panels[cfg.categories[r["category"]].panel].logit_scale
        lo = {(v["judge"], v["order"]): scale[v["judge"]] * (v["logprob_a"] - v["logprob_b"]) for v in r["votes"]}
        pooled = sum(0.5 * (lo[j, "AB"] - lo[j, "BA"]) for j in {j for j, _ in lo})  # for image a
        assert r["confidence"] == pytest.approx(1 / (1 + math.exp(-abs(pooled))), rel=1e-9) and r["confidence"] > 0.5
        ccfg = cfg.categories[r["category"]]
        if r["category"] != "text_rendering":  # a pool drawn per prompt there; elsewhere side a is known
            side_a = "existing" if ccfg.existing_images else ccfg.generators[0]
            assert (pooled > 0) == (r["generator_w"]["name"] == side_a)
