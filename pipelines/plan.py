"""`pairforge plan`: what N pairs of a config will cost, from measurements of the same config.

The measurements are the per-stage cost accounting of earlier runs (manifest `runs[].cost`, `timing`):
busy seconds per stage and category, rows per category, the model-loading time and the time the pools
took. A short calibration run on the target hardware (`--calibrate K`) or any earlier run of the config
(`--from OUT`) provides them. The model:

- rows to plan per category = pairs wanted / decided share (undecided and error rows cost the same work);
- busy seconds of stage s = sum over categories of rows x (its busy seconds per row of that category), at
  the stage's steady rate (each actor's first batch, which carries its warm-up, is counted once per actor,
  not per row: a short calibration run would otherwise over-state the cost of a long one several times);
- with A_s actors, stage s needs busy_s / A_s seconds; the pools stream, so the run takes about
  start-up + max_s(busy_s / A_s) + overhead, where the overhead is what the calibration run took beyond its
  own bottleneck's seconds (pipeline fill and drain, Ray's block handling): a constant, not a share, so a
  short calibration run does not inflate a long run's time. CPU contention between pools on a small box is
  already in the measured busy seconds;
- for a deadline: the actors per pool that bring every stage inside it; for a fixed GPU count: the
  split across GPU pools that gives each the same time (so none idles waiting for the others).

GPU-hours are busy seconds x GPUs per actor (what the work needs) and, for the deadline plan, actors x
GPUs x the predicted time (what the pools hold).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from schemas.config import RunConfig


class PlanError(ValueError):
    """No usable measurements for the config (one line says which and what to run)."""


def stage_pools(cfg: RunConfig) -> dict[str, object]:
    """Stage name (`kind:name`, as the cost accounting names it) -> its PoolConfig, for the config's pools."""
    from pipelines.stages import model_refs, pool_specs

    return {stage: c.pool for _, stage, c, _ in pool_specs(cfg, {ref: ref for ref in model_refs(cfg)})}


def pools_up(timing: dict) -> float:
    """Seconds from the pools' start until every pool has its model loaded and a batch has run: the run's
    start-up. (A pool that loads slowly starts after the first batch of a fast one.)"""
    return max(timing["first_batch_s"], timing.get("ready_s") or 0.0)


def measurements(outputs: list[Path]) -> dict:
    """Sum the cost accounting of every run recorded in the outputs' manifests: per stage busy seconds
    and busy seconds per category; per category rows worked and the decided share (pairs over pairs,
    undecided and errors, from the output's counts); the start-up and processing time and the pipeline
    fill-and-drain overhead of the run that worked the most rows."""
    busy: dict[str, dict[str, float]] = {}
    rows: dict[str, int] = {}
    totals: dict[str, dict[str, float]] = {}  # per stage: busy_s, rows, warmup_s, warmup_rows, actors
    counts: dict[str, dict[str, int]] = {}
    best = None
    for out in outputs:
        path = Path(out) / "manifest.json"
        if not path.exists():
            raise PlanError(f"plan: {path} does not exist: --from takes the output directory of a run")
        manifest = json.loads(path.read_text())
        for c, kinds in manifest.get("counts", {}).items():
            for k, v in kinds.items():
                counts.setdefault(c, {}).setdefault(k, 0)
                counts[c][k] += v
        for run in manifest.get("runs", []):
            cost, timing = run.get("cost") or {}, run.get("timing") or {}
            if not cost.get("pairs"):
                continue
            for stage, by_cat in cost["busy_by_category"].items():
                for c, s in by_cat.items():
                    busy.setdefault(stage, {}).setdefault(c, 0.0)
                    busy[stage][c] += s
            for c, n in cost["pairs"].items():
                rows[c] = rows.get(c, 0) + n
            for stage, st in cost["stages"].items():
                t = totals.setdefault(stage, {})
                for k in ("busy_s", "rows", "warmup_s", "warmup_rows", "actors"):
                    t[k] = t.get(k, 0) + (st.get(k) or 0)
            worked = sum(cost["pairs"].values())
            if timing.get("first_batch_s") is not None and (best is None or worked > best[0]):
                best = (worked, cost, timing)
    if not rows or best is None:
        raise PlanError(f"plan: no measured run in {', '.join(map(str, outputs))}: run a short calibration first "
                        f"(`pairforge plan CONFIG --pairs N --calibrate 8`)")
    _, cost, timing = best
    startup = pools_up(timing)
    processing = timing["pools_s"] - startup
    bound = max(st["busy_s"] / max(st["actors"], 1) for st in cost["stages"].values())
    return {"busy": busy, "rows": rows, "warmup": {s: _warmup(t) for s, t in totals.items()},
            "decided": {c: counts.get(c, {}).get("pairs", 0) / n for c, n in rows.items()},
            "startup_s": startup, "overhead_s": max(processing - bound, 0.0)}


def _warmup(t: dict) -> dict:
    """A stage's steady cost against its average one, and the extra seconds each actor's first batch took:
    `steady` = (busy - first batches) / (rows - their rows) over busy / rows (1 when every batch was a first
    one), `per_actor_s` = the first batches' seconds beyond the steady rate, per actor."""
    steady_rows = t["rows"] - t["warmup_rows"]
    if steady_rows <= 0 or t["busy_s"] <= 0 or t["busy_s"] <= t["warmup_s"]:
        return {"steady": 1.0, "per_actor_s": 0.0}
    rate = (t["busy_s"] - t["warmup_s"]) / steady_rows
    return {"steady": rate / (t["busy_s"] / t["rows"]),
            "per_actor_s": max(t["warmup_s"] - rate * t["warmup_rows"], 0.0) / max(t["actors"], 1)}


def make_plan(cfg: RunConfig, pairs: int, measured: dict, deadline_h: float | None = None,
              gpus: int | None = None) -> dict:
    """The plan for `pairs` pairs of `cfg`, split over its categories as their `target_pairs` (evenly when
    unset). See the module docstring for the model."""
    pools = stage_pools(cfg)
    weights = {c: (cc.target_pairs or 1) for c, cc in cfg.categories.items()}
    total_w = sum(weights.values())
    want = {c: pairs * w / total_w for c, w in weights.items()}
    per_category = {}
    for c, n in want.items():
        if c not in measured["rows"]:
            raise PlanError(f"plan: category {c!r} has no measured rows: calibrate with this config "
                            f"(measured: {', '.join(sorted(measured['rows']))})")
        decided = measured["decided"][c]
        if decided <= 0:
            raise PlanError(f"plan: no decided pair of {c!r} in the measurements (all undecided or errors): "
                            f"fix the run first (see its stats) or calibrate on more pairs")
        per_category[c] = {"pairs": round(n, 2), "rows": round(n / decided, 2), "decided_share": round(decided, 4)}
    stages = {}
    for stage, pool in pools.items():
        if stage not in measured["busy"]:
            raise PlanError(f"plan: pool {stage} has no measurements: calibrate with this config")
        warm = measured["warmup"].get(stage, {"steady": 1.0, "per_actor_s": 0.0})
        work = warm["steady"] * sum(per_category[c]["rows"] * measured["busy"][stage].get(c, 0.0) / measured["rows"][c]
                                    for c in per_category) + pool.actors * warm["per_actor_s"]
        stages[stage] = {"busy_s": round(work, 2), "gpus_per_actor": pool.num_gpus, "actors": pool.actors,
                         "gpu_hours": round(work * pool.num_gpus / 3600, 4), "time_s": round(work / pool.actors, 2)}
    overhead, startup = measured["overhead_s"], measured["startup_s"]
    bottleneck = max(stages, key=lambda s: stages[s]["time_s"])
    plan = {"pairs": pairs, "categories": per_category, "stages": stages, "bottleneck": bottleneck,
            "startup_s": round(startup, 2), "overhead_s": round(overhead, 2),
            "processing_s": round(stages[bottleneck]["time_s"] + overhead, 1),
            "predicted_s": round(startup + stages[bottleneck]["time_s"] + overhead, 1),
            "gpu_hours_busy": round(sum(s["gpu_hours"] for s in stages.values()), 4)}
    if deadline_h is not None:
        budget = deadline_h * 3600 - startup - overhead
        if budget <= 0:
            raise PlanError(f"plan: a {deadline_h:g} h deadline is shorter than the pools' start-up and the pipeline's "
                            f"fill and drain ({startup + overhead:.0f} s)")
        for s in stages.values():
            s["actors_for_deadline"] = max(1, math.ceil(s["busy_s"] / budget))
        held = max(startup + overhead + s["busy_s"] / s["actors_for_deadline"] for s in stages.values())
        plan["deadline"] = {"hours": deadline_h, "predicted_s": round(held, 1),
                            "gpus": sum(s["actors_for_deadline"] * s["gpus_per_actor"] for s in stages.values()),
                            "gpu_hours_held": round(sum(s["actors_for_deadline"] * s["gpus_per_actor"]
                                                        for s in stages.values()) * held / 3600, 3)}
    if gpus is not None:
        plan["gpu_split"] = split_gpus(stages, gpus, startup + overhead)
    return plan


def split_gpus(stages: dict, gpus: int, fixed_s: float) -> dict:
    """Actors per GPU pool for a fixed GPU count, balancing the pools' times: greedily give the next actor to
    the pool that is slowest now, while its GPUs fit. CPU-only pools keep their configured actors."""
    gpu_pools = {s: v for s, v in stages.items() if v["gpus_per_actor"] > 0}
    need = sum(v["gpus_per_actor"] for v in gpu_pools.values())
    if gpus < need:
        raise PlanError(f"plan: {gpus} GPUs cannot hold one actor of each GPU pool ({need:g} GPUs: "
                        + ", ".join(f"{s} {v['gpus_per_actor']:g}" for s, v in gpu_pools.items()) + ")")
    actors = {s: 1 for s in gpu_pools}
    left = gpus - need
    while True:
        fits = [s for s in gpu_pools if gpu_pools[s]["gpus_per_actor"] <= left + 1e-9]
        if not fits:
            break
        slowest = max(fits, key=lambda s: gpu_pools[s]["busy_s"] / actors[s])
        actors[slowest] += 1
        left -= gpu_pools[slowest]["gpus_per_actor"]
    times = {s: stages[s]["busy_s"] / (actors.get(s) or stages[s]["actors"]) for s in stages}
    return {"gpus": gpus, "actors": actors, "unused_gpus": round(left, 3),
            "predicted_s": round(fixed_s + max(times.values()), 1)}


def format_plan(plan: dict) -> str:
    """The plan as a table: one line per pool, then the totals."""
    deadline = "actors_for_deadline" in next(iter(plan["stages"].values()))
    head = f"{'pool':<28}{'busy s':>10}{'GPUs/actor':>11}{'GPU-h':>9}{'actors':>8}{'time s':>10}"
    head += f"{'for deadline':>14}" if deadline else ""
    lines = [f"plan: {plan['pairs']} pairs ("
             + ", ".join(f"{c} {v['pairs']:g}: {v['rows']:g} rows at {v['decided_share']:.0%} decided"
                         for c, v in plan["categories"].items()) + ")", head]
    for s, v in plan["stages"].items():
        line = f"{s:<28}{v['busy_s']:>10.1f}{v['gpus_per_actor']:>11g}{v['gpu_hours']:>9.3f}{v['actors']:>8}{v['time_s']:>10.1f}"
        lines.append(line + (f"{v['actors_for_deadline']:>14}" if deadline else ""))
    lines.append(f"bottleneck: {plan['bottleneck']}; predicted {plan['predicted_s']:.0f} s with the configured actors "
                 f"(start-up {plan['startup_s']:.0f} s, fill and drain {plan['overhead_s']:.0f} s, measured); "
                 f"{plan['gpu_hours_busy']:.3f} GPU-hours of work")
    if "deadline" in plan:
        d = plan["deadline"]
        lines.append(f"deadline {d['hours']:g} h: {d['gpus']:g} GPUs, predicted {d['predicted_s']:.0f} s, "
                     f"{d['gpu_hours_held']:.3f} GPU-hours held")
    if "gpu_split" in plan:
        g = plan["gpu_split"]
        lines.append(f"{g['gpus']} GPUs: " + ", ".join(f"{s} x{n}" for s, n in g["actors"].items())
                     + f" ({g['unused_gpus']:g} unused), predicted {g['predicted_s']:.0f} s")
    return "\n".join(lines)


def calibration_config(config: str, output: str, pairs_per_category: int, overrides: dict) -> RunConfig:
    """The config itself (with the user's overrides), `pairs_per_category` pairs per category, into `output`."""
    from schemas.config import load_run_config

    cfg = load_run_config(config, overrides)
    targets = {f"categories.{c}.target_pairs": pairs_per_category for c in cfg.categories}
    return load_run_config(config, {**overrides, **targets, "output.path": output})
