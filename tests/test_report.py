"""The HTML report, rendered in headless Chromium (Debian's chromium package, driven by playwright)."""

import io
import shutil
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.report import write_html
from pipelines.stats import compute_stats
from schemas.pair import pair_schema

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
    for category in ("composition", "aesthetics", "alignment"):
        path = tmp_path / "pairs" / category / "part-r_1-00000-x-000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([r for r in rows if r["category"] == category], schema=pair_schema()), path)
    return tmp_path


def test_report_has_every_section(output, tmp_path):
    report = compute_stats(output)
    assert report["arena"]["leaderboard"][0]["generator"] == "sd"  # sd won 70% of the simulated pairs
    assert report["totals"]["reward_checked"] == 40
    page = write_html(output, report, tmp_path / "report.html").read_text()
    assert set(report["arena"]["by_category"]) == {"composition", "aesthetics", "alignment"}
    assert sum(a["pairs"] for a in report["arena"]["by_category"].values()) == report["arena"]["pairs"] == 40
    for alt in ("balance", "agreement", "rates", "arena", "arena_by_category", "win_rate"):
        assert f"alt='{alt}'" in page
    assert page.count("class='pair'") == 9 and "a &lt;b&gt;bold&lt;/b&gt; boat" in page  # prompts are escaped
    assert "a boat at night" in page and "changed:</b> time" in page


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
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not problems, problems
    assert images and all(images)  # every figure and thumbnail decoded
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
