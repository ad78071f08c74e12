"""The HTML report, rendered in headless Chromium (Debian's chromium package, driven by playwright)."""

import base64
import io
import shutil
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_media import moving_square

from pipelines import report as report_module
from pipelines.report import write_html
from pipelines.stats import compute_stats
from schemas.pair import pair_schema
from workers.media import decode_video, mp4_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def vote(judge, order, choice):
    return {"judge": judge, "order": order, "choice": choice, "logprob_a": -0.5 if choice == "A" else -1.5,
            "logprob_b": -1.5 if choice == "A" else -0.5, "note": None}


@pytest.fixture
def output(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        w, lo = ("sd", "flux") if rng.random() < 0.7 else ("flux", "sd")
        category = ["composition", "aesthetics", "alignment"][i % 3]
        rows.append({
            "pair_id": f"p{i}", "category": category, "prompt": f"a <b>bold</b> boat #{i}", "prompt_id": f"q{i}",
            "prompt_source": "t", "prompt_l": "a boat at night" if category == "alignment" else None,
            "edit_dimensions": ["time"] if category == "alignment" else None,
            "image_w": {"bytes": png(i), "path": None}, "image_l": {"bytes": png(100 + i), "path": None},
            "generator_w": {"name": w, "model": w, "seed": i, "steps": 4, "guidance_scale": 1.0, "params": "{}"},
            "generator_l": {"name": lo, "model": lo, "seed": i, "steps": 4, "guidance_scale": 1.0, "params": "{}"},
            "width": 64, "height": 64, "label_source": "construction" if category == "alignment" else "vlm_panel",
            "votes": [] if category == "alignment" else [vote("j1", "AB", "A"), vote("j1", "BA", "B")],
            "agreement": 1.0, "confidence": 0.73,
            "rewards": [{"model": m, "score_w": float(rng.normal(1)), "score_l": float(rng.normal()),
                         "calibrated_w": None, "calibrated_l": None} for m in ("clip", "pickscore")],
            "created_at": datetime.now(timezone.utc), "pipeline_version": "t", "config_hash": "h"})
    for i in range(2):  # motion_quality: two real H.264 videos per pair, a still one and a moving one
        rows.append({
            **rows[i], "pair_id": f"v{i}", "category": "motion_quality", "prompt_l": None, "edit_dimensions": None,
            "label_source": "vlm_score", "votes": [], "rewards": [], "motion_prompt": "the camera pans left",
            "video_w": {"bytes": mp4_bytes(moving_square(frames=9, step=3), fps=8), "path": None},
            "video_l": {"bytes": mp4_bytes(moving_square(frames=9, step=0), fps=8), "path": None},
            "frames": 9, "fps": 8.0, "width": 64, "height": 48,
            "motion": [{"side": "w", "flow_mean": 1.5, "flow_top": 12.0, "dynamic": True},
                       {"side": "l", "flow_mean": 0.0, "flow_top": 0.0, "dynamic": False}]})
    for category in ("composition", "aesthetics", "alignment", "motion_quality"):
        path = tmp_path / "pairs" / category / "part-r_1-00000-x-000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([r for r in rows if r["category"] == category], schema=pair_schema()), path)
    return tmp_path


def test_report_has_every_section(output, tmp_path):
    report = compute_stats(output)
    assert report["arena"]["leaderboard"][0]["generator"] == "sd"  # sd won 70% of the simulated pairs
    assert report["totals"]["reward_checked"] == 40
    page = write_html(output, report, tmp_path / "report.html").read_text()
    assert set(report["arena"]["by_category"]) == {"composition", "aesthetics", "alignment", "motion_quality"}
    assert sum(a["pairs"] for a in report["arena"]["by_category"].values()) == report["arena"]["pairs"] == 42
    for alt in ("balance", "agreement", "rates", "arena", "arena_by_category", "win_rate"):
        assert f"alt='{alt}'" in page
    assert page.count("class='pair'") == 11 and "a &lt;b&gt;bold&lt;/b&gt; boat" in page  # prompts are escaped
    assert "a boat at night" in page and "changed:</b> time" in page
    # Video pairs: both videos inlined as the stored MP4 (small enough as is), with frames, rate and size.
    assert page.count("<video class='preview' src='data:video/mp4;base64,") == 4
    assert page.count("9 frames, 8 fps, 64x48") == 4 and "motion:</b> the camera pans left" in page
    assert "top 5% 12.00 px, dynamic" in page


def test_a_large_video_is_reencoded_smaller_for_the_page(monkeypatch):
    big = mp4_bytes(moving_square(frames=40, h=96, w=128, step=2), fps=8)
    monkeypatch.setattr(report_module, "PREVIEW_MAX_BYTES", len(big) - 1)
    monkeypatch.setattr(report_module, "PREVIEW_SIDE", 64)
    monkeypatch.setattr(report_module, "PREVIEW_SECONDS", 2.0)
    url = report_module._video_preview(big)
    frames, fps = decode_video(base64.b64decode(url.split(",", 1)[1]))
    assert frames.shape == (16, 48, 64, 3) and fps == 8  # long side 64, aspect kept, 2 s at 8 fps
    small = mp4_bytes(moving_square(frames=4), fps=8)
    assert report_module._video_preview(small) == "data:video/mp4;base64," + base64.b64encode(small).decode()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium_without_console_errors(output, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    html_path = write_html(output, compute_stats(output), tmp_path / "report.html")
    shot = tmp_path / "report.png"
    problems = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        page.goto(html_path.as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        # Every video preview loads and plays once on screen (Chromium pauses muted autoplay off screen):
        # metadata read, frames decoded, time advancing.
        for video in page.query_selector_all("video"):
            video.scroll_into_view_if_needed()
            page.wait_for_function("v => v.readyState >= 2 && !v.paused && v.currentTime > 0", arg=video,
                                   timeout=20_000)
        videos = page.eval_on_selector_all("video", "els => els.map(v => [v.duration, v.videoWidth, v.videoHeight, "
                                                    "v.error === null])")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not problems, problems
    assert images and all(images)  # every figure and thumbnail decoded
    assert videos == [[pytest.approx(9 / 8), 64, 48, True]] * 4  # 9 frames at 8 fps, decoded without error
    shot_image = Image.open(shot)
    assert shot_image.width == 1200 and shot_image.height > 900 and len(set(shot_image.convert("L").getdata())) > 16


def test_report_of_an_output_with_no_pair_between_generators(output, tmp_path):
    # The demo with tiny judges: every panel pair ties, so the decided pairs are alignment's, one generator on
    # both sides. The Arena has gaps but nobody to rank; the report says so instead of failing on empty plots.
    table = pq.read_table(next((output / "pairs" / "alignment").glob("*.parquet")))
    table = table.set_column(table.schema.get_field_index("generator_l"), "generator_l", table["generator_w"])
    only = tmp_path / "alignment-only"
    (only / "pairs" / "alignment").mkdir(parents=True)
    pq.write_table(table, only / "pairs" / "alignment" / "part-0.parquet")
    report = compute_stats(only)
    assert report["arena"]["pairs"] == 0 and report["arena"]["gaps"] == table.num_rows
    page = write_html(only, report, tmp_path / "report.html").read_text()
    assert "alt='win_rate'" not in page and "alt='balance'" in page
