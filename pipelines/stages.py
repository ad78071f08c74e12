"""Worker pools as Ray Data stages: one actor pool per configured model, shared by every category.

Rows name the models they need (`gen_a`/`gen_b`, `judges`, `reward_models`); each pool fills in the
rows that name it and passes the rest through, so a model is loaded once per actor however many
categories use it.
"""

from __future__ import annotations

from schemas.config import PoolConfig, RunConfig
from workers.generator import DiffusersGenerator
from workers.judge import VLMJudge
from workers.reward import ClipScorer


def _pool_args(pool: PoolConfig, runtime_env: dict | None) -> dict:
    args = dict(concurrency=pool.actors, num_cpus=pool.num_cpus, runtime_env=runtime_env)
    if pool.num_gpus:
        args["num_gpus"] = pool.num_gpus
    if pool.resources:
        args["resources"] = pool.resources
    return args


def used_models(cfg: RunConfig) -> tuple[list[str], list[str], list[str]]:
    """(generators, judges, reward models) that some category of this run uses, in config order."""
    gens = {g for c in cfg.categories.values() for g in c.generators}
    judges = {j for c in cfg.categories.values() if c.panel for j in cfg.panels[c.panel].judges}
    rewards = {r for c in cfg.categories.values() for r in c.rewards}
    return ([g for g in cfg.generators if g in gens], [j for j in cfg.judges if j in judges],
            [r for r in cfg.rewards if r in rewards])


def apply_worker_pools(ds, cfg: RunConfig, model_paths: dict[str, str], runtime_env: dict | None = None):
    """generators -> judges -> reward models, each a streaming actor-pool stage. `runtime_env` (env vars)
    is set per stage so it merges with, rather than replaces, a submitted job's runtime env."""
    gens, judges, rewards = used_models(cfg)
    for name in gens:
        g = cfg.generators[name]
        ds = ds.map_batches(
            DiffusersGenerator, fn_constructor_kwargs=dict(name=name, cfg=g.model_dump(), model_path=model_paths[g.model]),
            batch_size=g.batch_size, batch_format="pyarrow", **_pool_args(g.pool, runtime_env))
    for name in judges:
        j = cfg.judges[name]
        ds = ds.map_batches(
            VLMJudge, fn_constructor_kwargs=dict(name=name, cfg=j.model_dump(), model_path=model_paths[j.model]),
            batch_size=j.batch_size, batch_format="pyarrow", **_pool_args(j.pool, runtime_env))
    for name in rewards:
        r = cfg.rewards[name]
        ds = ds.map_batches(
            ClipScorer, fn_constructor_kwargs=dict(name=name, cfg=r.model_dump(), model_path=model_paths[r.model]),
            batch_size=r.batch_size, batch_format="pyarrow", **_pool_args(r.pool, runtime_env))
    return ds
