"""Human annotation: the rater web app in real headless Chromium, its database, and the agreement figures.

The UI tests run the real `pairforge annotate` command (uvicorn, SQLite in WAL) on an output directory
of real-schema shards with real PNGs; one test annotates the output of a real pipeline run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_media import moving_square

from pipelines.agreement import compute_agreement, fleiss, kripp_alpha, majority
from pipelines.annotate import db
from schemas.pair import pair_schema, undecided_schema
from workers.media import mp4_bytes

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS = "a cat <script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"> & \"friends\""
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser)")


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def generator(name: str, seed: int) -> dict:
    return {"name": name, "model": name, "seed": seed, "steps": 4, "guidance_scale": 1.0, "params": "{}"}


def write_output(root: Path, per_category: int = 4) -> Path:
    """An output directory with real-schema shards: composition (panel), alignment (construction, gold)
    decided pairs, and composition undecided pairs; the first composition prompt is an XSS attempt."""
    now = datetime.now(timezone.utc)
    common = {"prompt_source": "t", "width": 32, "height": 32, "created_at": now, "pipeline_version": "t", "config_hash": "h"}
    pairs, undecided = [], []
    for i in range(per_category):
        for category, source, conf in (("composition", "vlm_panel", 0.55 + 0.1 * i), ("alignment", "construction", 1.0)):
            pairs.append({**common, "pair_id": f"{category[:3]}{i}", "category": category, "prompt_id": f"q{category}{i}",
                          "prompt": XSS if (category, i) == ("composition", 0) else f"a {category} scene number {i}",
                          "prompt_l": "a changed prompt" if category == "alignment" else None,
                          "image_w": {"bytes": png(i), "path": None}, "image_l": {"bytes": png(1000 + i), "path": None},
                          "generator_w": generator("sd", i), "generator_l": generator("flux", i), "label_source": source,
                          "votes": [], "agreement": 1.0, "confidence": conf})
        undecided.append({**common, "pair_id": f"und{i}", "category": "composition", "prompt_id": f"qu{i}",
                          "prompt": f"an undecided scene {i}", "image_a": {"bytes": png(2000 + i), "path": None},
                          "image_b": {"bytes": png(3000 + i), "path": None}, "generator_a": generator("sd", i),
                          "generator_b": generator("flux", i), "reason": "tie", "votes": []})
    for kind, rows, schema in (("pairs", pairs, pair_schema()), ("undecided", undecided, undecided_schema())):
        for category in sorted({r["category"] for r in rows}):
            path = root / kind / category / "part-r_1-00000000-000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([r for r in rows if r["category"] == category], schema=schema), path)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`pairforge annotate` in a subprocess, as a user starts it; `urls` maps rater -> URL."""

    def __init__(self, out: Path, *args: str):
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "pipelines.cli", "annotate", str(out), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        self.urls, self.base = {}, f"http://127.0.0.1:{self.port}"
        lines = []
        while True:
            line = self.proc.stdout.readline()
            lines.append(line)
            if not line:
                raise RuntimeError("annotate exited: " + "".join(lines))
            if m := re.match(r"(\S+): (http://\S+)$", line.strip()):
                self.urls[m[1]] = m[2].replace("localhost", "127.0.0.1")
            if len(self.urls) == len(args[args.index("--raters") + 1].split(",")) if "--raters" in args else False:
                break
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(self.base + "/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("annotate did not start listening")

    def token(self, rater: str) -> str:
        return self.urls[rater].rsplit("/", 1)[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def output(tmp_path) -> Path:
    return write_output(tmp_path / "out")


@pytest.fixture
def server(output):
    s = Server(output, "--raters", "alice,bob", "--sample", "10", "--gold", "2", "--raters-per-pair", "2")
    yield s
    s.stop()


def engine_of(out: Path):
    return db.connect(db.db_url(out, None))


def test_round_samples_every_kind_and_assigns_gold_to_everyone(server, output):
    engine = engine_of(output)
    items = {i["pair_id"]: i for i in db.all_items(engine)}
    # 4 composition decided + 4 undecided (sample 10 per category keeps all 8), 4 alignment
    assert len(items) == 12 and {i["kind"] for i in items.values()} == {"pairs", "undecided"}
    gold = [p for p, i in items.items() if i["gold"]]
    assert len(gold) == 2 and all(items[p]["category"] == "alignment" and items[p]["truth"] == "A" for p in gold)
    queue = db.all_assignments(engine)
    per_pair = Counter(a["pair_id"] for a in queue)
    assert all(per_pair[p] == (2 if items[p]["gold"] else 2) for p in items)  # 2 raters: both see everything
    assert {a["left"] for a in queue} == {"A", "B"}
    assert sorted(a["position"] for a in queue if a["rater"] == "alice") == list(range(12))
    assert (output / "annotations.sqlite").exists()
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


KEYS = {"ArrowLeft": "left", "1": "left", "ArrowRight": "right", "2": "right", "t": "tie", "c": "cant_tell", "s": "skip"}


def letter(screen: str, left: str) -> str:
    return {"left": left, "right": "B" if left == "A" else "A"}.get(screen, screen)


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def watch(page, problems: list) -> None:
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))


def answer_with_key(page, key: str) -> str:
    """Press `key` on a pair page; returns the pair id it answered."""
    pair_id = page.input_value("input[name=pair_id]")
    with page.expect_navigation():
        page.keyboard.press(key)
    return pair_id


@needs_chromium
def test_two_raters_annotate_with_the_keyboard_one_resumes_and_the_database_holds_exactly_their_answers(server, output):
    playwright = pytest.importorskip("playwright.sync_api")
    engine = engine_of(output)
    left = {(a["rater"], a["pair_id"]): a["left"] for a in db.all_assignments(engine)}
    expected: dict[tuple[str, str], list[str]] = {}
    problems: list[str] = []
    rng = np.random.default_rng(1)
    with playwright.sync_playwright() as p:
        browser = launch(p)
        pages = {}
        for rater in ("alice", "bob"):
            pages[rater] = browser.new_context().new_page()
            watch(pages[rater], problems)
            pages[rater].goto(server.urls[rater])
        # Both raters answer in turns, 5 pairs each, every key used.
        for step in range(5):
            for rater in ("alice", "bob"):
                page = pages[rater]
                assert page.inner_text("#progress").startswith(f"{rater} · pair {step + 1} of 12 · answered {step}")
                images = page.eval_on_selector_all(".side img", "els => els.map(e => e.complete && e.naturalWidth === 32)")
                assert images == [True, True]
                key = list(KEYS)[(step + (rater == "bob")) % len(KEYS)] if step < 4 else str(rng.choice(["t", "1"]))
                pair = answer_with_key(page, key)
                expected.setdefault((rater, pair), []).append(letter(KEYS[key], left[rater, pair]))
        # Bob closes his page mid-way; Alice goes back twice and changes her answer to pair 4.
        pages["bob"].context.close()
        with pages["alice"].expect_navigation():
            pages["alice"].keyboard.press("b")
        with pages["alice"].expect_navigation():
            pages["alice"].keyboard.press("b")
        assert pages["alice"].inner_text("#progress").startswith("alice · pair 4 of 12")
        assert "your answer:" in pages["alice"].inner_text("#current")
        pair = answer_with_key(pages["alice"], "ArrowRight")
        expected[("alice", pair)].append(letter("right", left["alice", pair]))
        assert pages["alice"].inner_text("#progress").startswith("alice · pair 5 of 12")
        # Bob comes back in a fresh browser context: he lands on his first unanswered pair.
        bob = browser.new_context().new_page()
        watch(bob, problems)
        bob.goto(server.urls["bob"])
        assert bob.url.endswith("/6") and bob.inner_text("#progress").startswith("bob · pair 6 of 12 · answered 5")
        for key in ("2", "t", "1", "ArrowLeft", "ArrowRight", "c", "s"):
            pair = answer_with_key(bob, key)
            expected.setdefault(("bob", pair), []).append(letter(KEYS[key], left["bob", pair]))
        assert bob.url.endswith("/done") and "answered 12 of 12" in bob.inner_text("#progress")
        browser.close()
    assert not problems, problems
    with engine.connect() as c:
        rows = c.execute(db.answers.select().order_by(db.answers.c.id)).mappings().all()
    history: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        history.setdefault((r["rater"], r["pair_id"]), []).append(r["choice"])
        assert r["shown_left"] == left[r["rater"], r["pair_id"]] and r["source"] == "web"
    assert history == expected  # every answer, in order, nothing more (the changed one kept in the history)
    latest = {(a["rater"], a["pair_id"]): a["choice"] for a in db.latest_answers(engine)}
    assert latest == {k: v[-1] for k, v in expected.items()}


@needs_chromium
def test_an_xss_prompt_renders_as_text(server, output):
    playwright = pytest.importorskip("playwright.sync_api")
    engine = engine_of(output)
    n = next(a["position"] + 1 for a in db.all_assignments(engine) if a["rater"] == "alice" and a["pair_id"] == "com0")
    problems: list[str] = []
    with playwright.sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        watch(page, problems)
        page.goto(f"{server.urls['alice']}/{n}")
        assert page.inner_text("#prompt") == XSS
        assert page.evaluate("window.__xss") is None
        assert page.locator("#prompt *").count() == 0  # no element was made from the prompt
        assert page.inner_text("#guideline").startswith("Judge COMPOSITION only")
        browser.close()
    assert not problems, problems


def write_video_output(root: Path) -> dict[str, dict[str, bytes]]:
    """motion_quality shards with real H.264 videos (a decided pair and an undecided one, the square moving
    at a different speed on each side); returns pair id -> letter -> the stored video."""
    now = datetime.now(timezone.utc)
    common = {"prompt_source": "t", "width": 64, "height": 48, "frames": 9, "fps": 8.0, "category": "motion_quality",
              "created_at": now, "pipeline_version": "t", "config_hash": "h", "votes": []}
    videos = {pid: {"A": mp4_bytes(moving_square(frames=9, step=1 + k), fps=8),
                    "B": mp4_bytes(moving_square(frames=9, step=4 + k), fps=8)} for k, pid in enumerate(("mq0", "mqu0"))}
    first = png(7)  # a video pair's image columns hold the first frame it was animated from
    rows = {
        "pairs": ([{**common, "pair_id": "mq0", "prompt_id": "q0", "prompt": "a boat, the camera pans left",
                    "image_w": {"bytes": first, "path": None}, "image_l": {"bytes": first, "path": None},
                    "video_w": {"bytes": videos["mq0"]["A"], "path": None},
                    "video_l": {"bytes": videos["mq0"]["B"], "path": None},
                    "generator_w": generator("wan", 0), "generator_l": generator("wan2.2", 0),
                    "label_source": "vlm_score", "agreement": 1.0, "confidence": 0.8}], pair_schema()),
        "undecided": ([{**common, "pair_id": "mqu0", "prompt_id": "q1", "prompt": "a cat, the camera tilts up",
                        "image_a": {"bytes": first, "path": None}, "image_b": {"bytes": first, "path": None},
                        "video_a": {"bytes": videos["mqu0"]["A"], "path": None},
                        "video_b": {"bytes": videos["mqu0"]["B"], "path": None},
                        "generator_a": generator("wan", 1), "generator_b": generator("wan2.2", 1),
                        "reason": "gap_too_small"}], undecided_schema()),
    }
    for kind, (table_rows, schema) in rows.items():
        path = root / kind / "motion_quality" / "part-r_1-00000000-000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), path)
    return videos


@needs_chromium
def test_video_pairs_play_both_videos_side_by_side_from_the_shards(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "video-out"
    videos = write_video_output(out)
    server = Server(out, "--raters", "alice", "--sample", "10", "--gold", "0")
    try:
        left = {a["pair_id"]: a["left"] for a in db.all_assignments(engine_of(out))}
        assert set(left) == {"mq0", "mqu0"}
        token = server.token("alice")
        with httpx.Client(base_url=server.base, timeout=10) as c:
            for pair_id, shown in left.items():  # the bytes served are the stored videos, each on its side
                for side, letter_shown in (("left", shown), ("right", "B" if shown == "A" else "A")):
                    r = c.get(f"/r/{token}/media/{pair_id}/{side}")
                    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
                    assert r.content == videos[pair_id][letter_shown]
        problems: list[str] = []
        with playwright.sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            watch(page, problems)
            for n in (1, 2):
                page.goto(f"{server.urls['alice']}/{n}")
                assert page.locator(".side img").count() == 0
                page.wait_for_function("() => [...document.querySelectorAll('.side video')].every(v => "
                                       "v.readyState >= 2 && !v.paused && v.currentTime > 0)", timeout=20_000)
                shown = page.eval_on_selector_all(".side video", "els => els.map(v => [v.videoWidth, v.videoHeight, "
                                                                 "v.duration, v.muted, v.loop, v.error === null])")
                assert shown == [[64, 48, pytest.approx(9 / 8), True, True, True]] * 2
                answer_with_key(page, "1")  # the keys still answer while videos play
            assert page.url.endswith("/done")
            browser.close()
        assert not problems, problems
        assert {a["pair_id"] for a in db.latest_answers(engine_of(out))} == {"mq0", "mqu0"}
    finally:
        server.stop()


def test_bad_and_replayed_submissions_get_a_4xx(server, output):
    engine = engine_of(output)
    queue = {a["rater"]: [] for a in db.all_assignments(engine)}
    for a in db.all_assignments(engine):
        queue[a["rater"]].append(a["pair_id"])
    alice, bob = server.token("alice"), server.token("bob")
    first = queue["alice"][0]
    not_alices = "und-nope"
    with httpx.Client(base_url=server.base, follow_redirects=False, timeout=10) as c:
        ok = c.post(f"/r/{alice}/1", data={"pair_id": first, "seq": "1", "choice": "left"})
        assert ok.status_code == 303 and ok.headers["location"] == f"/r/{alice}/2"
        cases = [
            (c.post(f"/r/{alice}/1", data={"pair_id": first, "seq": "1", "choice": "left"}), 409, "replayed"),
            (c.post(f"/r/{alice}/1", data={"pair_id": first, "seq": "5", "choice": "left"}), 409, "stale"),
            (c.post("/r/not-a-token/1", data={"pair_id": first, "seq": "1", "choice": "left"}), 403, "unknown rater token"),
            (c.post(f"/r/{alice}/99", data={"pair_id": first, "seq": "1", "choice": "left"}), 404, "no pair number 99"),
            (c.post(f"/r/{alice}/x", data={"pair_id": first, "seq": "1", "choice": "left"}), 400, "bad request"),
            (c.post(f"/r/{alice}/2", data={"pair_id": not_alices, "seq": "1", "choice": "left"}), 403, "not assigned"),
            (c.post(f"/r/{alice}/2", data={"pair_id": first, "seq": "2", "choice": "left"}), 409, "is not number 2"),
            (c.post(f"/r/{alice}/2", data={"pair_id": queue["alice"][1], "seq": "1", "choice": "A"}), 400, "choice"),
            (c.post(f"/r/{alice}/2", data={"pair_id": queue["alice"][1], "seq": "one", "choice": "left"}), 400, "seq"),
            (c.post(f"/r/{alice}/2", data={"seq": "1", "choice": "left"}), 400, "pair_id"),
            (c.post(f"/r/{alice}/2", content=b"\xff\x00garbage", headers={"content-type": "application/json"}), 400, "malformed"),
            (c.post(f"/r/{alice}/2", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
             400, "malformed"),
            (c.get(f"/r/{bob}/media/{not_alices}/left"), 403, "not assigned"),
            (c.get(f"/r/{alice}/media/{first}/top"), 404, "left or right"),
            (c.get(f"/r/{alice}/media/..%2f..%2fetc%2fpasswd/left"), 404, ""),
            (c.get("/static/..%2fapp.py"), 404, ""),
            (c.get("/r/not-a-token"), 403, "unknown rater token"),
        ]
        for response, status, text in cases:
            assert response.status_code == status, (response.request.url, response.text)
            assert text in response.text and "Traceback" not in response.text
        image = c.get(f"/r/{alice}/media/{first}/left")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image.content)).size == (32, 32)
        page = c.get(f"/r/{alice}/2")
        assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["referrer-policy"] == "no-referrer"
    with engine.connect() as conn:
        assert conn.execute(db.answers.select()).mappings().all()[0]["pair_id"] == first
        assert len(conn.execute(db.answers.select()).all()) == 1  # only the one good answer


def test_the_round_resumes_and_refuses_other_settings(server, output):
    server.stop()
    again = subprocess.run([sys.executable, "-m", "pipelines.cli", "annotate", str(output), "--urls-only"],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert again.returncode == 0 and "resumed" in again.stdout
    assert set(re.findall(r"/r/(\S+)", again.stdout)) == {server.token("alice"), server.token("bob")}
    other = subprocess.run([sys.executable, "-m", "pipelines.cli", "annotate", str(output), "--raters", "carol", "--urls-only"],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "other settings (raters ['alice', 'bob'] there, ['carol'] asked)" in other.stderr


# --- agreement statistics ------------------------------------------------------------------------------

def item(pair_id, label="A", source="vlm_panel", confidence=None, truth=None, category="composition"):
    return {"pair_id": pair_id, "category": category, "label": label, "label_source": source if label else None,
            "confidence": confidence, "truth": truth, "gold": False}


def answer(rater, pair_id, choice, shown_left="A"):
    return {"rater": rater, "pair_id": pair_id, "choice": choice, "shown_left": shown_left, "source": "web"}


def test_agreement_on_a_hand_computed_case():
    items = [item("p1", confidence=0.95, truth="A"), item("p2", confidence=0.65), item("p3", label=None)]
    answers = [answer("alice", "p1", "A"), answer("bob", "p1", "A", "B"), answer("carol", "p1", "B"),
               answer("alice", "p2", "B", "B"), answer("bob", "p2", "B"), answer("carol", "p2", "B"),
               answer("alice", "p3", "A"), answer("bob", "p3", "tie"), answer("carol", "p3", "cant_tell")]
    r = compute_agreement(items, answers, ["alice", "bob", "carol"])
    g = r["categories"]["composition"]
    # Leave-one-out: p1 gives alice and bob no reference (the others split A/B), carol the reference A;
    # p2 gives everyone B; p3 has no A/B reference for anyone.
    assert g["human_vs_others"] == {"agree": 0.75, "n": 4}
    assert g["labels_vs_others"] == {"vlm_panel": {"agree": 0.25, "n": 4, "human_agree": 0.75}}
    assert g["labels_vs_majority"] == {"vlm_panel": {"agree": 0.5, "n": 2}}
    assert g["undecided_with_human_majority"] == {"agree": 1.0, "n": 1}
    assert g["ratings"] == 8 and g["rated_pairs"] == 3 and g["tie_share"] == 1 / 8
    # Fleiss over the two pairs with 3 ratings: P = (1/3 + 1)/2, Pe = (1/3)^2 + (2/3)^2, kappa = 0.25.
    assert g["fleiss"] == {"kappa": pytest.approx(0.25), "items": 2, "raters_per_item": 3}
    # Krippendorff: coincidences o_AA=1, o_AB=o_BA=1, o_BB=3, o_At=o_tA=1; n_A=3, n_B=4, n_t=1, n=8:
    # Do = 4/8, De = (2*12 + 2*3 + 2*4)/(8*7) = 38/56, alpha = 1 - 28/38.
    assert g["krippendorff"] == {"alpha": pytest.approx(10 / 38), "items": 3}
    assert [b["bin"] for b in g["panel_confidence_bins"]] == ["0.6-0.7", "0.9-1.0"]
    assert [b["agree"] for b in g["panel_confidence_bins"]] == [0.0, 1.0]
    raters = r["raters"]
    assert raters["alice"]["gold"] == {"accuracy": 1.0, "n": 1} and raters["carol"]["gold"] == {"accuracy": 0.0, "n": 1}
    assert raters["alice"]["left_share"] == 1.0 and raters["alice"]["left_n"] == 3
    assert raters["alice"]["left_p"] == pytest.approx(0.25)  # two-sided binomial, 3 of 3
    assert raters["bob"]["left_share"] == 0.0 and raters["bob"]["left_n"] == 2  # p1: B left, picked A; p2: A left, picked B
    assert raters["carol"]["vs_others"] == {"agree": 0.5, "n": 2}
    assert raters["bob"]["answers"] == {"A": 1, "B": 1, "tie": 1}


def fleiss_by_hand(table: np.ndarray) -> float:
    n = table.sum(axis=1)[0]
    p_j = table.sum(axis=0) / table.sum()
    p_i = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    return (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())


def alpha_by_hand(units: list[list[str]]) -> float:
    """Nominal Krippendorff's alpha from the coincidence matrix."""
    values = sorted({v for u in units for v in u})
    o = {(a, b): 0.0 for a in values for b in values}
    for u in units:
        if len(u) < 2:
            continue
        for i, a in enumerate(u):
            for j, b in enumerate(u):
                if i != j:
                    o[a, b] += 1 / (len(u) - 1)
    n_c = {a: sum(o[a, b] for b in values) for a in values}
    n = sum(n_c.values())
    d_o = sum(v for (a, b), v in o.items() if a != b) / n
    d_e = sum(n_c[a] * n_c[b] for a in values for b in values if a != b) / (n * (n - 1))
    return 1 - d_o / d_e


ratings_matrix = st.integers(2, 5).flatmap(lambda raters: st.lists(
    st.lists(st.sampled_from(["A", "B", "tie", None]), min_size=raters, max_size=raters), min_size=2, max_size=20))


@settings(max_examples=150, deadline=None)
@given(ratings_matrix)
def test_kappa_and_alpha_match_their_formulas_on_random_ratings(matrix):
    names = [f"r{i}" for i in range(len(matrix[0]))]
    by_pair = {f"p{j}": {names[i]: v for i, v in enumerate(row) if v} for j, row in enumerate(matrix)}
    units = [list(by.values()) for by in by_pair.values()]
    a = kripp_alpha(by_pair, names)
    pairable = [u for u in units if len(u) >= 2]
    if len({v for u in pairable for v in u}) < 2:
        assert a["alpha"] is None
    else:
        assert a["alpha"] == pytest.approx(alpha_by_hand(pairable), abs=1e-9)
    f = fleiss(units)
    if f["kappa"] is not None:
        k = f["raters_per_item"]
        table = np.array([[u.count(c) for c in ("A", "B", "tie")] for u in units if len(u) == k])
        assert f["items"] == len(table) >= 2
        assert f["kappa"] == pytest.approx(fleiss_by_hand(table[:, table.sum(axis=0) > 0]), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("AB"), st.sampled_from(["A", "B", "tie", "skip"]),
                          st.sampled_from(["A", "B", "tie", "cant_tell"])), min_size=1, max_size=30))
def test_with_two_raters_leave_one_out_is_plain_agreement(rows):
    """With two raters each one's reference is the other's answer: the human figure is the share of
    pairs both answered A or B on which they agree, and the label's figure counts each such pair twice."""
    items = [item(f"p{j}", label=lab) for j, (lab, _, _) in enumerate(rows)]
    answers = [answer(r, f"p{j}", c) for j, (_, x, y) in enumerate(rows) for r, c in (("x", x), ("y", y))]
    g = compute_agreement(items, answers, ["x", "y"])["overall"]
    both = [(lab, x, y) for lab, x, y in rows if x in "AB" and y in "AB" and x in ("A", "B") and y in ("A", "B")]
    assert g["human_vs_others"]["n"] == 2 * len(both)
    if both:
        assert g["human_vs_others"]["agree"] == pytest.approx(sum(x == y for _, x, y in both) / len(both))
        label_hits = sum((lab == x) + (lab == y) for lab, x, y in both)
        assert g["labels_vs_others"]["vlm_panel"]["agree"] == pytest.approx(label_hits / (2 * len(both)))
    assert majority(["A", "B"]) is None and majority(["A", "A", "B", "tie"]) == "A" and majority([]) is None


# --- a real pipeline output -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(ray_session, tmp_path_factory):
    """A real run of the tiny pipeline: composition pairs judged by the panel, alignment pairs by construction."""
    from helpers import DECISIVE_PANELS, small_run_config

    from pipelines.run import run

    cfg = small_run_config(tmp_path_factory.mktemp("annotate_run"), n_prompts=4, overrides=DECISIVE_PANELS,
                           categories=("composition", "alignment"))
    run(cfg)
    return Path(cfg.output.path)


@needs_chromium
def test_raters_annotate_a_real_run_and_agreement_reads_their_answers(real_run):
    playwright = pytest.importorskip("playwright.sync_api")
    from pipelines.store import shard_files

    shards = [r for k in ("pairs", "undecided") for f in shard_files(real_run, k) for r in pq.read_table(f).to_pylist()]
    server = Server(real_run, "--raters", "ann,ben,cat", "--sample", "3", "--gold", "2", "--raters-per-pair", "2")
    try:
        engine = engine_of(real_run)
        items = {i["pair_id"]: i for i in db.all_items(engine)}
        assert {i["category"] for i in items.values()} == {"composition", "alignment"}
        assert sum(i["gold"] for i in items.values()) == 2 and len(items) <= 3 + 3 + 2  # gold on top of the sample
        assert set(items) <= {r["pair_id"] for r in shards}
        left = {(a["rater"], a["pair_id"]): a["left"] for a in db.all_assignments(engine)}
        queue_len = Counter(a["rater"] for a in db.all_assignments(engine))
        # Ann answers in the browser, always the left image; Ben and Cat post the same forms over HTTP:
        # Ben always picks the pipeline's label (its truth), Cat always the other image.
        problems: list[str] = []
        with playwright.sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            watch(page, problems)
            page.goto(server.urls["ann"])
            for _ in range(queue_len["ann"]):
                sizes = page.eval_on_selector_all(".side img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
                assert sizes == [[64, 64], [64, 64]]  # the run's real images, read from its shards
                answer_with_key(page, "1")
            assert page.url.endswith("/done")
            browser.close()
        assert not problems, problems
        with httpx.Client(base_url=server.base, follow_redirects=False, timeout=10) as c:
            for rater in ("ben", "cat"):
                token = server.token(rater)
                for n in range(1, queue_len[rater] + 1):
                    pair_id = next(a["pair_id"] for a in db.all_assignments(engine)
                                   if a["rater"] == rater and a["position"] == n - 1)
                    label = items[pair_id]["label"] or "A"
                    want = label if rater == "ben" else ("B" if label == "A" else "A")
                    screen = "left" if left[rater, pair_id] == want else "right"
                    r = c.post(f"/r/{token}/{n}", data={"pair_id": pair_id, "seq": "1", "choice": screen})
                    assert r.status_code == 303, r.text
    finally:
        server.stop()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "agreement", str(real_run)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "human vs others" in done.stdout and "ALL" in done.stdout
    report = json.loads((real_run / "agreement.json").read_text())
    assert report["raters"]["ann"]["left_share"] == 1.0 and report["raters"]["ann"]["left_n"] == queue_len["ann"]
    # Every pair with a constructed truth counts for accuracy, the gold ones (shown to all) and sampled ones.
    with_truth = Counter(a["rater"] for a in db.all_assignments(engine) if items[a["pair_id"]]["truth"])
    assert with_truth["ben"] >= 2 and with_truth["cat"] >= 2
    assert report["raters"]["ben"]["gold"] == {"accuracy": 1.0, "n": with_truth["ben"]}
    assert report["raters"]["cat"]["gold"] == {"accuracy": 0.0, "n": with_truth["cat"]}
    answers = db.latest_answers(engine)
    assert len(answers) == sum(queue_len.values())
    # Ben and Cat disagree on every pair: whenever both rated a pair, each is the other's reference.
    by_pair: dict[str, dict[str, str]] = {}
    for a in answers:
        by_pair.setdefault(a["pair_id"], {})[a["rater"]] = a["choice"]
    shared = [p for p, by in by_pair.items() if {"ben", "cat"} <= set(by)]
    assert report["raters"]["ben"]["vs_others"]["n"] >= sum(len(by_pair[p]) == 2 for p in shared)
    assert report["overall"]["ratings"] == len(answers)


def test_racing_copies_of_one_answer_store_it_once(server, output):
    """Eight copies of the same submission at once (a double click, a replaying proxy): one is stored,
    the others get 409, none a 500."""
    from concurrent.futures import ThreadPoolExecutor

    engine = engine_of(output)
    pair_id = next(a["pair_id"] for a in db.all_assignments(engine) if a["rater"] == "bob" and a["position"] == 0)
    url = f"{server.base}/r/{server.token('bob')}/1"

    def post(_):
        return httpx.post(url, data={"pair_id": pair_id, "seq": "1", "choice": "tie"}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = Counter(pool.map(post, range(8)))
    assert codes == {303: 1, 409: 7}
    with engine.connect() as c:
        assert [(r.pair_id, r.seq, r.choice) for r in c.execute(db.answers.select())] == [(pair_id, 1, "tie")]


# --- PostgreSQL through the same layer ------------------------------------------------------------------

@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (the local `initdb`/`pg_ctl`, run as the postgres user when we are root)."""
    import tempfile

    pytest.importorskip("psycopg")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no local PostgreSQL server binaries (initdb, pg_ctl)")
    prefix = []
    root = Path(tempfile.mkdtemp(prefix="pf-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, initdb, "-D", str(root / "data"), "-A", "trust", "-U", "pf", "--no-sync"], check=True,
                   capture_output=True)
    subprocess.run([*prefix, pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    yield f"postgresql+psycopg://pf@127.0.0.1:{port}/postgres"
    subprocess.run([*prefix, pg_ctl, "-D", str(root / "data"), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_a_round_on_postgresql(output, postgres_url):
    from concurrent.futures import ThreadPoolExecutor

    server = Server(output, "--raters", "alice,bob", "--sample", "10", "--gold", "2", "--db", postgres_url)
    try:
        engine = db.connect(postgres_url)
        assert engine.dialect.name == "postgresql" and not (output / "annotations.sqlite").exists()
        queue = {}
        for a in db.all_assignments(engine):
            queue.setdefault(a["rater"], []).append(a)
        with httpx.Client(base_url=server.base, follow_redirects=False, timeout=30) as c:
            for rater in ("alice", "bob"):
                token = server.token(rater)
                for a in queue[rater][:6]:
                    r = c.post(f"/r/{token}/{a['position'] + 1}", data={"pair_id": a["pair_id"], "seq": "1", "choice": "left"})
                    assert r.status_code == 303, r.text
            first = queue["alice"][0]
            replay = c.post(f"/r/{server.token('alice')}/1", data={"pair_id": first["pair_id"], "seq": "1", "choice": "left"})
            assert replay.status_code == 409
        url = f"{server.base}/r/{server.token('alice')}/1"
        with ThreadPoolExecutor(8) as pool:  # answer 2 of alice on her first pair, eight times at once
            codes = Counter(pool.map(lambda _: httpx.post(url, data={"pair_id": first["pair_id"], "seq": "2", "choice": "tie"},
                                                          timeout=30).status_code, range(8)))
        assert codes == {303: 1, 409: 7}
    finally:
        server.stop()
    latest = {(a["rater"], a["pair_id"]): a["choice"] for a in db.latest_answers(engine)}
    assert len(latest) == 12 and latest["alice", first["pair_id"]] == "tie"
    assert all(latest[a["rater"], a["pair_id"]] == a["left"] for r in ("alice", "bob") for a in queue[r][1:6])
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "agreement", str(output), "--db", postgres_url],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    report = json.loads((output / "agreement.json").read_text())
    assert report["overall"]["ratings"] == 12 and report["database"].startswith("postgresql+psycopg://pf@")
    assert report["raters"]["bob"]["left_share"] == 1.0
    engine.dispose()


# --- Label Studio and Argilla ---------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def decode(uri: str) -> Image.Image:
    import base64

    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_label_studio_and_argilla_round_trip(output, tmp_path):
    import xml.etree.ElementTree as ET

    assert cli("annotate", str(output), "--raters", "alice", "--urls-only").returncode == 0
    assert cli("annotate-export", str(output), str(tmp_path / "ls"), "--to", "label-studio").returncode == 0
    assert cli("annotate-export", str(output), str(tmp_path / "ar"), "--to", "argilla").returncode == 0
    config = ET.parse(tmp_path / "ls" / "label_studio_config.xml").getroot()
    assert config.find("Pairwise").get("toName") == "left,right"
    tasks = json.loads((tmp_path / "ls" / "label_studio_tasks.json").read_text())
    records = json.loads((tmp_path / "ar" / "argilla_records.json").read_text())
    engine = engine_of(output)
    items = {i["pair_id"]: i for i in db.all_items(engine)}
    assert sorted(t["data"]["pair_id"] for t in tasks) == sorted(items) == sorted(r["id"] for r in records)
    shards = {r["pair_id"]: r for k in ("pairs", "undecided") for f in (output / k).glob("*/*.parquet")
              for r in pq.read_table(f).to_pylist()}
    for t in tasks:
        d, row = t["data"], shards[t["data"]["pair_id"]]
        a, b = (row["image_w"], row["image_l"]) if "image_w" in row and row.get("image_w") else (row["image_a"], row["image_b"])
        left, right = (a, b) if d["pf_left"] == "A" else (b, a)
        assert decode(d["left"]).tobytes() == Image.open(io.BytesIO(left["bytes"])).tobytes()
        assert decode(d["right"]).tobytes() == Image.open(io.BytesIO(right["bytes"])).tobytes()
    assert {t["data"]["pf_left"] for t in tasks} == {"A", "B"}
    # Answers as Label Studio exports them: the Pairwise selection, the tie/can't-tell choice, a skip.
    picks = ["left", "right", "tie", "skip"]
    for n, t in enumerate(tasks):
        pick = picks[n % 4]
        pairwise = {"type": "pairwise", "from_name": "preference", "to_name": "left", "value": {"selected": pick}}
        choices = {"type": "choices", "from_name": "other", "to_name": "left", "value": {"choices": [pick]}}
        result = [pairwise] if pick in ("left", "right") else [choices] if pick == "tie" else []
        dana = {"id": 7, "email": "dana@lab.org"}
        t["annotations"] = [{"completed_by": dana, "result": result, "was_cancelled": pick == "skip"},
                            {"completed_by": 9, "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]
    for r in records:
        r["responses"] = {"preference": [{"value": "right", "user_id": "0b4c-11"}]}
    (tmp_path / "ls_export.json").write_text(json.dumps(tasks))
    (tmp_path / "ar_export.json").write_text(json.dumps(records))
    done = cli("annotate-import", str(output), str(tmp_path / "ls_export.json"), "--from", "label-studio")
    assert done.returncode == 0 and f"{2 * len(tasks)} answers stored, 0 already there, 2 raters added" in done.stdout
    again = cli("annotate-import", str(output), str(tmp_path / "ls_export.json"), "--from", "label-studio")
    assert again.returncode == 0 and f"0 answers stored, {2 * len(tasks)} already there, 0 raters added" in again.stdout
    assert cli("annotate-import", str(output), str(tmp_path / "ar_export.json"), "--from", "argilla").returncode == 0
    latest = {(a["rater"], a["pair_id"]): a for a in db.latest_answers(engine)}
    for n, t in enumerate(tasks):
        d = t["data"]
        other = "B" if d["pf_left"] == "A" else "A"
        want = {"left": d["pf_left"], "right": other}.get(picks[n % 4], picks[n % 4])
        assert latest["ls-dana_lab.org", d["pair_id"]]["choice"] == want
        assert latest["ls-dana_lab.org", d["pair_id"]]["source"] == "label_studio"
        assert latest["ls-9", d["pair_id"]]["choice"] == d["pf_left"]
    for r in records:
        other = "B" if r["metadata"]["pf_left"] == "A" else "A"
        assert latest["argilla-0b4c-11", r["id"]]["choice"] == other and latest["argilla-0b4c-11", r["id"]]["source"] == "argilla"
    report = cli("agreement", str(output))
    assert report.returncode == 0 and "ls-dana_lab.org" in report.stdout and "argilla-0b4c-11" in report.stdout
    # ... and `pairforge stats` and its HTML report show the headline figures.
    stats = cli("stats", str(output), "--html", str(tmp_path / "report.html"))
    assert stats.returncode == 0 and "human agreement (pairforge agreement" in stats.stdout
    assert re.search(r"    ALL: .* / .* / .* / .* \(\d+ pairs rated\)", stats.stdout)
    page = (tmp_path / "report.html").read_text()
    assert "id='human-agreement'" in page and "<td>composition</td>" in page
    # Files that are not such exports: one line, exit 2.
    (tmp_path / "bad.json").write_text('[{"data": {"text": "x"}}]')
    (tmp_path / "alien.json").write_text(json.dumps([{**tasks[0], "data": {**tasks[0]["data"], "pair_id": "nope"}}]))
    (tmp_path / "broken.json").write_text("[{")
    for name, source, message in (("bad.json", "label-studio", "task 0 has no data.pair_id"),
                                  ("alien.json", "label-studio", "1 pairs are not in this annotation round (first: nope)"),
                                  ("broken.json", "argilla", "not a readable JSON file"),
                                  ("ls_export.json", "argilla", "record 0 has no metadata.pair_id")):
        bad = cli("annotate-import", str(output), str(tmp_path / name), "--from", source)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_bad_command_lines_get_one_line_and_exit_2(output, tmp_path):
    cases = [
        (("annotate", str(tmp_path)), "not a pairforge output directory"),
        (("annotate", str(output), "--urls-only"), "--raters: Field required"),
        (("annotate", str(output), "--raters", "al ice", "--urls-only"), "rater name 'al ice'"),
        (("annotate", str(output), "--raters", "a,a", "--urls-only"), "rater names repeat"),
        (("annotate", str(output), "--raters", "a", "--sample", "0", "--urls-only"), "--sample: Input should be greater"),
        (("annotate", str(output), "--raters", "a", "--db", "nosuchdb://x", "--urls-only"), "cannot open the database"),
        (("agreement", str(output)), "no annotation round here"),
        (("annotate-export", str(output), str(tmp_path / "x"), "--to", "excel"), "--to excel: use one of label-studio, argilla"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
