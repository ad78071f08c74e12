"""Pair planning and record building shared by every category (schemas/category.py).

A category plans *pair specs* (which generator draws each side from which prompt and seed, who labels
it) and decides a winner; this module turns specs into work rows (schemas/work.py: the typed columns
the worker pools read and write), and finished rows into typed records of the pair, undecided or error
kind. A row that a pool failed on (`stage_error`, pipelines/stages.py) becomes an error record.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from pipelines.calibration import calibrated_rewards, pair_reward_consistency, pareto_fronts, select_pair
from pipelines.store import ERROR_SCHEMA
from schemas.category import Category
from schemas.config import RunConfig
from schemas.pair import PIPELINE_VERSION, make_pair_id, pair_schema, stable_hash, undecided_schema
from schemas.work import PLANNED_SCHEMA

EXISTING = ""  # gen_a of a side that is the prompt's existing image, not a generator's


def row_schema() -> pa.Schema:
    """The labelled rows' schema: every column of the pair, undecided and error records, and `_kind` (which
    of the three a row is). Built on the driver from the registered categories and passed to the label
    step, since a worker's registry may lack a category defined in the driver's session."""
    fields: dict[str, pa.DataType] = {}
    for f in [*pair_schema(), *undecided_schema(), *ERROR_SCHEMA]:
        fields.setdefault(f.name, f.type)
    return pa.schema(list(fields.items()) + [("_kind", pa.string())])


# Planned extras that decide a pair's content, hashed into its pair id with the side specs.
_HASHED_EXTRAS = ("perturber", "edit_k", "edit_dimensions", "required_text", "parent_pair_id", "frame", "motion_prompt",
                  "alignment_kind")


def derive_seed(run_seed: int, prompt_id: str, salt: str = "") -> int:
    """A per-prompt seed that does not depend on row order or on how the data was sharded."""
    return int(stable_hash("seed", run_seed, prompt_id, salt), 16) % (2**31 - 1)


def side_spec(cfg: RunConfig, generator: str, prompt: str | None, seed: int) -> dict:
    """Everything that decides one side's image, hashed into the pair id."""
    g = cfg.generators[generator]
    spec = {"generator": generator, "model": g.model, "width": g.width, "height": g.height, "steps": g.steps,
            "guidance_scale": g.guidance_scale, "call_kwargs": g.call_kwargs, "prompt": prompt, "seed": seed}
    if g.media == "video":  # only then: image pairs keep the ids they had before video existed
        spec.update(num_frames=g.num_frames, fps=g.fps)
    return spec


def fit_image(data: bytes, width: int, height: int) -> bytes:
    """An existing image, center-cropped to the aspect ratio and resized to width x height (PNG)."""
    from PIL import ImageOps

    from workers.media import decode_image, png_bytes

    return png_bytes(ImageOps.fit(decode_image(data), (width, height)))


def plan_table(cfg: RunConfig, category: str, rows: list[dict]) -> pa.Table:
    """Working rows from planned pairs. Each `rows` item has the prompt fields plus `a` and `b` side specs
    (`a` is None for an existing image, which the item then carries as `image_a`) and optional extras
    (perturber, edit_k, prompt_b, edit_dimensions, ocr_engine, required_text; for video rows frame_a,
    frame_b, parent_pair_id, and `frame`, the side spec of a first frame to draw). Extras that decide the
    pair's content (`_HASHED_EXTRAS`) go into the pair id."""
    ccfg = cfg.categories[category]
    # With a cascade, rows name its small panel; the escalation gate adds the large panel (pipelines/cascade.py).
    first_panel = ccfg.cascade.panel if ccfg.cascade else ccfg.panel
    judges = list(cfg.panels[first_panel].judges) if first_panel else []
    out = []
    for r in rows:
        if r.get("candidates"):
            cands = r["candidates"]
            out.append({
                "pair_id": make_pair_id(category, r["prompt_id"], {"candidates": cands}), "category": category,
                "prompt": r["prompt"], "prompt_id": r["prompt_id"], "prompt_source": r["prompt_source"],
                "prompt_a": r["prompt"], "prompt_b": r["prompt"], "judges": [], "reward_models": ccfg.rewards,
                "cand_gens": [c["generator"] for c in cands], "cand_seeds": [c["seed"] for c in cands],
            })
            continue
        a, b = r["a"], r["b"]
        extra = {k: r[k] for k in _HASHED_EXTRAS if r.get(k) is not None}
        spec = {"a": a if a is not None else {"existing": r["prompt_source"]}, "b": b, **extra}
        out.append({
            "pair_id": make_pair_id(category, r["prompt_id"], spec), "category": category, "prompt": r["prompt"],
            "prompt_id": r["prompt_id"], "prompt_source": r["prompt_source"],
            "gen_a": a["generator"] if a else EXISTING, "gen_b": b["generator"],
            "prompt_a": a["prompt"] if a else r["prompt"], "prompt_b": b["prompt"],
            "seed_a": a["seed"] if a else 0, "seed_b": b["seed"], "image_a": r.get("image_a"),
            "judges": judges if r.get("judged", True) else [], "score_judges": ccfg.score_judges,
            "reward_models": ccfg.rewards, "perturber": r.get("perturber"), "edit_k": r.get("edit_k"),
            "edit_dimensions": r.get("edit_dimensions"), "ocr_engine": r.get("ocr_engine"),
            "required_text": r.get("required_text"),
            "frame_a": r.get("frame_a"), "frame_b": r.get("frame_b"), "parent_pair_id": r.get("parent_pair_id"),
            "motion_prompt": r.get("motion_prompt"), "alignment_kind": r.get("alignment_kind"),
            "frame_gen": r["frame"]["generator"] if r.get("frame") else None,
            "seed_frame": r["frame"]["seed"] if r.get("frame") else None,
        })
    return pa.Table.from_pylist(out, schema=PLANNED_SCHEMA)


def prompt_rows(batch: dict) -> list[dict]:
    """A numpy batch of planned prompts as a list of row dicts."""
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


def generator_record(cfg: RunConfig, name: str, seed: int, source: str) -> dict:
    if name == EXISTING:
        return {"name": "existing", "model": source, "seed": 0, "steps": 0, "guidance_scale": 0.0, "params": "{}"}
    g = cfg.generators[name]
    return {"name": name, "model": g.model, "seed": int(seed), "steps": g.steps,
            "guidance_scale": g.guidance_scale, "params": json.dumps(g.call_kwargs, sort_keys=True)}


def _image(data: bytes | None, pair_id: str, tag: str) -> dict | None:
    return {"bytes": data, "path": f"{pair_id}-{tag}.png"} if data is not None else None


def _video(data: bytes, pair_id: str, tag: str) -> dict:
    return {"bytes": data, "path": f"{pair_id}-{tag}.mp4"}


def _media(row: dict, video: bool) -> tuple[dict, dict]:
    """Per working side, what the record stores: image pairs their images; video pairs their videos and, as
    `image_*`, the first frames they were animated from. And the pair's size (and frames, fps)."""
    if not video:
        width, height = _image_size(row["image_b"])
        return {s: {"image": row[f"image_{s}"]} for s in "ab"}, {"width": width, "height": height}
    from workers.media import video_info

    info = video_info(row["video_b"])
    return ({s: {"image": row.get(f"frame_{s}"), "video": row[f"video_{s}"]} for s in "ab"},
            {"width": info.width, "height": info.height, "frames": info.frames, "fps": info.fps})


def build_records(rows: list[dict], cfg: RunConfig, category: Category, schema: pa.Schema) -> pa.Table:
    """Finished working rows of one category -> one table of pair, undecided and error records (`_kind`) in
    `schema` (`row_schema()`): the category's `label` decides, its `record_values` fill its own fields."""
    config_hash, now = cfg.config_hash(), datetime.now(timezone.utc)
    out = []
    for row in rows:
        if row.get("cand_gens"):
            row = pick_from_candidates(row, cfg.categories[row["category"]].rewards)
        common = {"pair_id": row["pair_id"], "category": row["category"], "prompt": row["prompt"],
                  "prompt_id": row["prompt_id"], "prompt_source": row["prompt_source"], "created_at": now,
                  "pipeline_version": PIPELINE_VERSION, "config_hash": config_hash}
        errors = [e for e in (row.get("stage_error"), row.get("error_a"), row.get("error_b")) if e]
        video = category.media == "video"
        media_col = "video" if video else "image"
        if errors or row.get(f"{media_col}_a") is None or row.get(f"{media_col}_b") is None:
            out.append({**common, "_kind": "errors", "error": "; ".join(errors) or f"{media_col} missing"})
            continue
        gen = {s: generator_record(cfg, row[f"gen_{s}"], row[f"seed_{s}"], row["prompt_source"]) for s in ("a", "b")}
        media, size = _media(row, video)
        details = {**size, "votes": row.get("votes") or []}
        scores = row.get("scores")
        label = category.label(row, cfg)
        details["decided_by"] = label.decided_by
        if label.winner is None:
            out.append({**common, **details, **category.record_values(row, {"a": "a", "b": "b"}, cfg), "_kind": "undecided",
                        "cascade_small": _cascade_small(label.cascade_small, {"a": "a", "b": "b"}),
                        "reason": label.reason, "prompt_b": row["prompt_b"] if row["prompt_b"] != row["prompt"] else None,
                        **{f"{k}_{s}": (_video if k == "video" else _image)(v, row["pair_id"], s)
                           for s in "ab" for k, v in media[s].items()},
                        "generator_a": gen["a"], "generator_b": gen["b"], "scores": _scores(scores, {"a": "a", "b": "b"})})
            continue
        w, lo = label.winner, "b" if label.winner == "a" else "a"
        rewards = [{"model": r["model"], "score_w": r[f"score_{w}"], "score_l": r[f"score_{lo}"],
                    "calibrated_w": r.get(f"calibrated_{w}"), "calibrated_l": r.get(f"calibrated_{lo}")}
                   for r in row.get("rewards") or []]
        loser_prompt = row[f"prompt_{lo}"]
        out.append({**common, **details, **category.record_values(row, {"w": w, "l": lo}, cfg), "_kind": "pairs",
                    "label_source": label.source, "agreement": label.agreement, "confidence": label.confidence,
                    "cascade_small": _cascade_small(label.cascade_small, {w: "w", lo: "l"}),
                    "rewards": rewards,
                    "reward_consistent": pair_reward_consistency(rewards),
                    "prompt_l": loser_prompt if loser_prompt != row["prompt"] else None,
                    **{f"{k}_{tag}": (_video if k == "video" else _image)(v, row["pair_id"], tag)
                       for s, tag in ((w, "w"), (lo, "l")) for k, v in media[s].items()},
                    "generator_w": gen[w], "generator_l": gen[lo], "scores": _scores(scores, {w: "w", lo: "l"}),
                    "candidates": row.get("candidates")})
    return pa.Table.from_pylist(out, schema=schema)


def pick_from_candidates(row: dict, models: list[str]) -> dict:
    """A best-of-N row -> the pair its rewards choose, as an ordinary two-sided row (winner on side a).
    Raw scores -> CaPO calibrated rewards per model -> Pareto selection (one model: best vs worst); every
    candidate's scores, calibrated rewards and front are kept in `candidates`."""
    images, gens, seeds = row.get("cand_images") or [], row["cand_gens"], row["cand_seeds"]
    scores = {s["model"]: s["scores"] for s in row.get("cand_scores") or []}
    raw = np.array([[s if s is not None else np.nan for s in scores.get(m, [None] * len(gens))] for m in models],
                   dtype=np.float64).T
    if len(images) != len(gens) or any(im is None for im in images) or np.isnan(raw).any():
        return {**row, "image_a": None, "image_b": None,
                "error_a": row.get("error_a") or "best-of-N: a candidate image or score is missing"}
    cal = calibrated_rewards(raw)
    w, lo = select_pair(cal)
    front = {int(i): rank for rank, members in enumerate(pareto_fronts(cal)) for i in members}
    candidates = [{"generator": g, "seed": seeds[k], "front": front[k], "role": {w: "w", lo: "l"}.get(k),
                   "rewards": [{"model": m, "score": raw[k, j], "calibrated": cal[k, j]} for j, m in enumerate(models)]}
                  for k, g in enumerate(gens)]
    rewards = [{"model": m, "score_a": raw[w, k], "score_b": raw[lo, k], "calibrated_a": cal[w, k],
                "calibrated_b": cal[lo, k]} for k, m in enumerate(models)]
    return {**row, "image_a": images[w], "image_b": images[lo], "gen_a": gens[w], "gen_b": gens[lo],
            "seed_a": seeds[w], "seed_b": seeds[lo], "rewards": rewards, "candidates": candidates}


def _cascade_small(small: dict | None, tags: dict[str, str]) -> dict | None:
    """The small panel's verdict with its working sides renamed to the record's tags."""
    if small is None:
        return None
    return {**small, "winner": tags.get(small["winner"]), "lean": tags.get(small["lean"])}


def _scores(scores: list[dict] | None, tags: dict[str, str]) -> list[dict] | None:
    """The score judges' records with each working side ("a" / "b") renamed to its tag in the record."""
    if not scores:
        return None
    return [{**s, "side": tags[s["side"]]} for s in scores]


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def seeded_rng(run_seed: int, prompt_id: str, salt: str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(run_seed, prompt_id, salt))
