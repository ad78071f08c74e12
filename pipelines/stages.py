"""Worker pools as Ray Data stages: one actor pool per configured model, shared by every category.

Rows name the models they need (`perturber`, `gen_a`/`gen_b`, `frame_gen`, `ocr_engine`, `judges`,
`reward_models`); each pool fills in the rows that name it and passes the rest through, so a model
is loaded once per actor however many categories use it. Order: perturbers (they write the prompts
generators draw), image generators, video generators (they may animate a frame drawn in the row), OCR
(it decides some text-rendering pairs before any judge runs), judges, reward models.

Every pool actor runs its worker inside a `PoolStage`, which reports to the run's progress actor
(pipelines/progress.py) and catches errors row by row: when a worker raises on a batch, the batch is
retried one row at a time, and a row that still fails gets `stage_error` and passes through the later
stages untouched, to become an error record (OUT/errors/, retried by the next run) counted against
the run's error budget. That is the choice over Ray Data's `max_errored_blocks`, which drops a whole
block (every row of it, with no record of which) and logs nothing a re-run can use.
"""

from __future__ import annotations

import logging
import os
import time

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import ActorPoolStrategy

from pipelines.cascade import escalation_gate, order_judges, small_judges
from pipelines.routing import run_categories
from schemas.config import PoolConfig, RunConfig
from workers.generator import DiffusersGenerator, VideoGenerator
from workers.judge import VLMJudge
from workers.ocr import OcrReader
from workers.perturber import LLMPerturber
from workers.reward import RewardScorer
from workers.runtime import column, with_columns

log = logging.getLogger(__name__)


class PoolStage:
    """One actor of a pool: builds its worker (`worker_cls(**kwargs)`), reports loading, batches and their
    ends to `progress` (a RunProgress actor, or None), and turns rows the worker raises on into error rows.
    `pool_stage` makes one subclass per pool, named after it, which Ray Data's logs and `ray list actors`
    then show (e.g. `MapWorker(MapBatches(generator:flux))`)."""

    worker_cls: type
    stage: str

    def __init__(self, progress=None, **kwargs):
        import ray

        self.progress = progress
        ctx = ray.get_runtime_context()
        self.actor = ctx.get_actor_id()
        self._report("loading", self.stage, self.actor, os.getpid(), ctx.get_node_id())
        self.worker = self.worker_cls(**kwargs)
        self._report("ready", self.actor)

    def _report(self, event: str, *args) -> None:
        if self.progress is not None:
            getattr(self.progress, event).remote(*args)  # fire and forget: never wait on bookkeeping

    def _call(self, rows: pa.Table) -> pa.Table:
        try:
            return with_columns(self.worker(rows), stage_error=pa.nulls(rows.num_rows, pa.string()))
        except Exception as e:  # noqa: BLE001 (a bad row must not sink its batch: isolate it)
            if rows.num_rows == 1:
                return with_columns(rows, stage_error=pa.array([f"{self.stage}: {type(e).__name__}: {e}"[:500]]))
            log.warning("%s: a batch of %d rows failed (%s: %s); retrying row by row", self.stage, rows.num_rows,
                        type(e).__name__, str(e)[:200])
            return pa.concat_tables([self._call(rows.slice(i, 1)) for i in range(rows.num_rows)],
                                    promote_options="permissive")

    def __call__(self, batch: pa.Table) -> pa.Table:
        self._report("started", self.actor, batch.num_rows)
        start = time.perf_counter()
        failed = pc.is_valid(pa.array(column(batch, "stage_error"), pa.string()))
        todo, passed = batch.filter(pc.invert(failed)), batch.filter(failed)  # failed rows skip the later stages
        out = self._call(todo) if todo.num_rows else todo
        if passed.num_rows:
            out = pa.concat_tables([out, passed], promote_options="permissive") if out.num_rows else passed
        # Busy seconds, measured here (the progress actor's clock would add the reports' latency), and the
        # batch's rows per category, so the run can say what each category's pairs cost in this pool.
        categories = pc.value_counts(pa.array(column(batch, "category"), pa.string())).to_pylist()
        self._report("finished", self.actor, batch.num_rows, time.perf_counter() - start,
                     {c["values"]: c["counts"] for c in categories})
        return out


def pool_stage(worker_cls: type, stage: str) -> type:
    return type(stage, (PoolStage,), {"worker_cls": worker_cls, "stage": stage})


def pool_args(pool: PoolConfig, runtime_env: dict | None) -> dict:
    """map_batches arguments of an actor pool: its size (fixed, or between `actors` and `max_actors`: Ray
    Data adds actors while the pool's input backs up), CPUs, GPUs and custom resources (a cluster's node
    pools), and the workers' env vars."""
    size = dict(min_size=pool.actors, max_size=pool.max_actors) if pool.max_actors else dict(size=pool.actors)
    args = dict(compute=ActorPoolStrategy(**size), num_cpus=pool.num_cpus, runtime_env=runtime_env, batch_format="pyarrow")
    if pool.num_gpus:
        args["num_gpus"] = pool.num_gpus
    if pool.resources:
        args["resources"] = pool.resources
    return args


def used_models(cfg: RunConfig) -> dict[str, list[str]]:
    """Per kind, the configured names some category of this run uses, in config order. `perturber` and `ocr`
    are fields of some categories' own config models only."""
    cats = cfg.categories.values()
    perturbers = {getattr(c, "perturber", None) for c in cats} - {None}
    used = {
        "perturbers": {p for p in perturbers if cfg.perturbers[p].kind == "llm"},
        "generators": {g for c in cats for g in c.generators} | ({getattr(c, "frame_generator", None) for c in cats} - {None}),
        "ocr": {getattr(c, "ocr", None) for c in cats} - {None},
        "judges": {j for c in cats if c.panel for j in cfg.panels[c.panel].judges} | {j for c in cats for j in c.score_judges}
                  | {j for c in cats if c.cascade for j in cfg.panels[c.cascade.panel].judges},
        "rewards": {r for c in cats for r in c.rewards},
    }
    return {kind: [n for n in getattr(cfg, kind) if n in names] for kind, names in used.items()}


def model_refs(cfg: RunConfig) -> list[str]:
    """The model refs a run loads (what `tiny:` / `pkg:` / `rapidocr:` resolution and the manifest care about)."""
    used = used_models(cfg)
    return ([cfg.perturbers[p].model for p in used["perturbers"] if cfg.perturbers[p].backend == "vllm"]
            + [cfg.generators[g].model for g in used["generators"]]
            + [cfg.judges[j].model for j in used["judges"]] + [cfg.rewards[r].model for r in used["rewards"]]
            + [cfg.rewards[r].checkpoint for r in used["rewards"] if cfg.rewards[r].checkpoint]
            + [d for o in used["ocr"] for d in (cfg.ocr[o].det_model_dir, cfg.ocr[o].rec_model_dir) if d])


def pool_specs(cfg: RunConfig, model_paths: dict[str, str], marker_nonce: str | None = None) -> list[tuple]:
    """The run's pools in pipeline order: (worker class, stage name `kind:name`, its config, constructor kwargs)."""
    used = used_models(cfg)
    specs = []
    for name in used["perturbers"]:
        p = cfg.perturbers[name]
        specs.append((LLMPerturber, "perturber", name, p, dict(model_path=model_paths.get(p.model, p.model), nonce=marker_nonce)))
    # Image generators before video generators: a video may start from an image drawn in the same row.
    for name in sorted(used["generators"], key=lambda n: cfg.generators[n].media == "video"):
        g = cfg.generators[name]
        worker = VideoGenerator if g.media == "video" else DiffusersGenerator
        specs.append((worker, "generator", name, g, dict(model_path=model_paths[g.model])))
    for name in used["ocr"]:
        specs.append((OcrReader, "ocr", name, cfg.ocr[name], {}))
    rubrics = {name: category.rubric for name, category in run_categories(cfg).items()}
    for name in order_judges(cfg, used["judges"]):  # a cascade's small judges first (pipelines/cascade.py)
        j = cfg.judges[name]
        specs.append((VLMJudge, "judge", name, j, dict(model_path=model_paths[j.model], nonce=marker_nonce,
                                                          rubrics=rubrics)))
    for name in used["rewards"]:
        r = cfg.rewards[name]
        specs.append((RewardScorer, "reward", name, r, dict(model_path=model_paths[r.model],
                                                               checkpoint_path=model_paths.get(r.checkpoint))))
    return [(cls, f"{kind}:{name}", c, dict(name=name, cfg=c.model_dump(), **kw)) for cls, kind, name, c, kw in specs]


def apply_worker_pools(ds, cfg: RunConfig, model_paths: dict[str, str], runtime_env: dict | None = None,
                       progress=None, marker_nonce: str | None = None):
    """Each pool a streaming actor-pool stage (a `PoolStage` reporting to `progress`). `runtime_env` (env
    vars) is set per stage so it merges with, rather than replaces, a submitted job's runtime env.
    `marker_nonce`: the run's data-marker nonce, the same for every judge and perturber actor."""
    specs = pool_specs(cfg, model_paths, marker_nonce)
    # Blocks no bigger than the smallest pool batch: a pool task takes a block and passes its rows on only
    # when the whole block is done, so a big block (the planner's are up to 8192 rows) keeps the next pool
    # idle meanwhile, and a killed actor loses the whole block's work.
    ds = ds.repartition(target_num_rows_per_block=min(c.batch_size for _, _, c, _ in specs))
    early = small_judges(cfg)
    gate_after = max((i for i, (_, stage, _, _) in enumerate(specs) if stage.startswith("judge:") and stage[6:] in early),
                     default=None)
    for i, (worker_cls, stage, c, kwargs) in enumerate(specs):
        ds = ds.map_batches(pool_stage(worker_cls, stage), batch_size=c.batch_size, **pool_args(c.pool, runtime_env),
                            fn_constructor_kwargs=dict(progress=progress, **kwargs))
        if i == gate_after:
            ds = ds.map_batches(escalation_gate, fn_kwargs=dict(cfg=cfg), batch_format="pyarrow")
    return ds
