"""Test helpers: prompt files (well-formed or deliberately broken) and small run configs."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (written as JSON) or raw strings/bytes (written verbatim, for malformed input)."""
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, dict):
                f.write(json.dumps(r).encode() + b"\n")
            else:
                f.write((r.encode() if isinstance(r, str) else r) + b"\n")
    return path


def small_run_config(tmp_path: Path, n_prompts: int = 8, overrides: dict | None = None,
                     categories: tuple[str, ...] = ("composition",), **dotted):
    """The demo config restricted to `categories`, pointed at the first `n_prompts` prompts of each of them
    in the bundled set, writing to a temp output. Overrides: `dotted` keys ("a.b.c") or `overrides` with
    tuple keys (for names that contain dots)."""
    import yaml

    from schemas.config import RunConfig

    prompts = [json.loads(line) for line in (REPO / "prompts/pairforge-v1.jsonl").read_text().splitlines()]
    chosen = [p for c in categories for p in [p for p in prompts if p["category"] == c][:n_prompts]]
    src = write_jsonl(tmp_path / "prompts.jsonl", chosen)
    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    data["output"] = {"path": str(tmp_path / "out"), "rows_per_file": 4}
    data["prompts"] = [{"path": str(src), "source": "test"}]
    data["categories"] = {c: {**data["categories"][c], "target_pairs": None} for c in categories}
    for key, value in {**{tuple(k.split(".")): v for k, v in dotted.items()}, **(overrides or {})}.items():
        node = data
        *parents, leaf = key
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RunConfig.model_validate(data)
