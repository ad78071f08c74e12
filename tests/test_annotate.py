"""Human annotation: the rater web app in real headless Chromium, its database, and the agreement figures.

The UI tests run the real `pairforge annotate` command (uvicorn, SQLite in WAL) on an output directory
of real-schema shards with real PNGs; one test annotates the output of a real pipeline run.
"""

from __future__ import annotations

import io
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

from pipelines.agreement import compute_agreement, fleiss, kripp_alpha, majority
from pipelines.annotate import db
from schemas.pair import pair_schema, undecided_schema

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
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "annotate", str(out), "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
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
