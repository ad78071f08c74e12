"""Pair planning and record building shared by every recipe.

A recipe plans *pair specs* (which generator draws each side from which prompt and seed, who labels
it) and decides a winner; this module turns specs into the working columns the worker pools read,
and finished rows into typed records of the pair, undecided or error kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow as pa

from pipelines.store import ERROR_SCHEMA
from schemas.config import RunConfig
from schemas.pair import PAIR_FIELDS, PIPELINE_VERSION, UNDECIDED_FIELDS, make_pair_id, stable_hash


def _row_schema() -> pa.Schema:
    fields: dict[str, pa.DataType] = {}
    for name, typ in PAIR_FIELDS + UNDECIDED_FIELDS + [(f.name, f.type) for f in ERROR_SCHEMA]:
        fields.setdefault(name, typ)
    return pa.schema(list(fields.items()) + [("_kind", pa.string())])


ROW_SCHEMA = _row_schema()


def derive_seed(run_seed: int, prompt_id: str, salt: str = "") -> int:
    """A per-prompt seed that does not depend on row order or on how the data was sharded."""
    return int(stable_hash("seed", run_seed, prompt_id, salt), 16) % (2**31 - 1)


def side_spec(cfg: RunConfig, generator: str, prompt: str, seed: int) -> dict:
    """Everything that decides one side's image, hashed into the pair id."""
    g = cfg.generators[generator]
    return {"generator": generator, "model": g.model, "width": g.width, "height": g.height, "steps": g.steps,
            "guidance_scale": g.guidance_scale, "call_kwargs": g.call_kwargs, "prompt": prompt, "seed": seed}


def plan_columns(batch: dict, cfg: RunConfig, category: str, sides: list[tuple[dict, dict]],
                 extra: dict | None = None) -> dict:
    """Working columns for planned pairs: `sides[i]` is the (a, b) side_spec pair of row i."""
    ccfg = cfg.categories[category]
    judges = ",".join(cfg.panels[ccfg.panel].judges) if ccfg.panel else ""
    pair_ids = [make_pair_id(category, pid, {"a": a, "b": b, **(extra or {})})
                for pid, (a, b) in zip(batch["prompt_id"], sides)]
    n = len(pair_ids)
    return {
        "pair_id": pair_ids, "category": [category] * n, "prompt": list(batch["prompt"]),
        "prompt_id": list(batch["prompt_id"]), "prompt_source": list(batch["prompt_source"]),
        "gen_a": [a["generator"] for a, _ in sides], "gen_b": [b["generator"] for _, b in sides],
        "prompt_a": [a["prompt"] for a, _ in sides], "prompt_b": [b["prompt"] for _, b in sides],
        "seed_a": [a["seed"] for a, _ in sides], "seed_b": [b["seed"] for _, b in sides],
        "judges": [judges] * n, "reward_models": [",".join(ccfg.rewards)] * n,
    }


def generator_record(cfg: RunConfig, name: str, seed: int) -> dict:
    g = cfg.generators[name]
    return {"name": name, "model": g.model, "seed": int(seed), "steps": g.steps,
            "guidance_scale": g.guidance_scale, "params": json.dumps(g.call_kwargs, sort_keys=True)}


def _image(data: bytes, pair_id: str, tag: str) -> dict:
    return {"bytes": data, "path": f"{pair_id}-{tag}.png"}


def _json_list(value) -> list:
    return json.loads(value) if isinstance(value, str) and value else []


# decide(row) -> (winner "a" | "b" | None, undecided reason, agreement, confidence)
Decision = tuple[str | None, str | None, float | None, float | None]


def build_records(rows: list[dict], cfg: RunConfig, label_source: str,
                  decide: Callable[[dict], Decision]) -> pa.Table:
    """Finished working rows -> one typed table of pair, undecided and error records (`_kind`)."""
    config_hash, now = cfg.config_hash(), datetime.now(timezone.utc)
    out = []
    for row in rows:
        common = {"pair_id": row["pair_id"], "category": row["category"], "prompt": row["prompt"],
                  "prompt_id": row["prompt_id"], "prompt_source": row["prompt_source"], "created_at": now,
                  "pipeline_version": PIPELINE_VERSION, "config_hash": config_hash}
        errors = [e for e in (row.get("error_a"), row.get("error_b")) if e]
        if errors or row.get("image_a") is None or row.get("image_b") is None:
            out.append({**common, "_kind": "errors", "error": "; ".join(errors) or "image missing"})
            continue
        gen = {s: generator_record(cfg, row[f"gen_{s}"], row[f"seed_{s}"]) for s in ("a", "b")}
        size = {"width": cfg.generators[row["gen_a"]].width, "height": cfg.generators[row["gen_a"]].height}
        votes = _json_list(row.get("votes"))
        winner, reason, agreement, confidence = decide(row)
        if winner is None:
            out.append({**common, **size, "_kind": "undecided", "reason": reason, "votes": votes,
                        "image_a": _image(row["image_a"], row["pair_id"], "a"),
                        "image_b": _image(row["image_b"], row["pair_id"], "b"),
                        "generator_a": gen["a"], "generator_b": gen["b"]})
            continue
        loser = "b" if winner == "a" else "a"
        rewards = [{"model": r["model"], "score_w": r[f"score_{winner}"], "score_l": r[f"score_{loser}"]}
                   for r in _json_list(row.get("rewards"))]
        out.append({**common, **size, "_kind": "pairs", "label_source": label_source, "votes": votes,
                    "agreement": agreement, "confidence": confidence, "rewards": rewards,
                    "image_w": _image(row[f"image_{winner}"], row["pair_id"], "w"),
                    "image_l": _image(row[f"image_{loser}"], row["pair_id"], "l"),
                    "generator_w": gen[winner], "generator_l": gen[loser]})
    return pa.Table.from_pylist(out, schema=ROW_SCHEMA)

