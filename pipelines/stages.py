"""Worker pools as Ray Data stages: one actor pool per configured model, shared by every category.

Rows name the models they need (`perturber`, `gen_a`/`gen_b`, `ocr_engine`, `judges`,
`reward_models`); each pool fills in the rows that name it and passes the rest through, so a model
is loaded once per actor however many categories use it. Order: perturbers (they write the prompts
generators draw), generators, OCR (it decides some text-rendering pairs before any judge runs),
judges, reward models.
"""

from __future__ import annotations

from ray.data import ActorPoolStrategy

from schemas.config import PoolConfig, RunConfig
from workers.generator import DiffusersGenerator
from workers.judge import VLMJudge
from workers.ocr import OcrReader
from workers.perturber import LLMPerturber
from workers.reward import RewardScorer


def pool_args(pool: PoolConfig, runtime_env: dict | None) -> dict:
    """map_batches arguments of an actor pool: its size, CPUs, GPUs and custom resources (a cluster's
    node pools), and the workers' env vars."""
    args = dict(compute=ActorPoolStrategy(size=pool.actors), num_cpus=pool.num_cpus, runtime_env=runtime_env,
                batch_format="pyarrow")
    if pool.num_gpus:
        args["num_gpus"] = pool.num_gpus
    if pool.resources:
        args["resources"] = pool.resources
    return args


def used_models(cfg: RunConfig) -> dict[str, list[str]]:
    """Per kind, the configured names some category of this run uses, in config order."""
    cats = cfg.categories.values()
    used = {
        "perturbers": {c.perturber for c in cats if c.perturber and cfg.perturbers[c.perturber].kind == "llm"},
        "generators": {g for c in cats for g in c.generators},
        "ocr": {c.ocr for c in cats if c.ocr},
        "judges": {j for c in cats if c.panel for j in cfg.panels[c.panel].judges} | {j for c in cats for j in c.score_judges},
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


def apply_worker_pools(ds, cfg: RunConfig, model_paths: dict[str, str], runtime_env: dict | None = None,
                       marker_nonce: str | None = None):
    """Each pool a streaming actor-pool stage. `runtime_env` (env vars) is set per stage so it merges
    with, rather than replaces, a submitted job's runtime env. `marker_nonce`: the run's data-marker nonce,
    the same for every judge and perturber actor."""
    used = used_models(cfg)
    for name in used["perturbers"]:
        p = cfg.perturbers[name]
        path = model_paths.get(p.model, p.model)
        ds = ds.map_batches(LLMPerturber, fn_constructor_kwargs=dict(name=name, cfg=p.model_dump(), model_path=path,
                                                                     nonce=marker_nonce),
                            batch_size=p.batch_size, **pool_args(p.pool, runtime_env))
    for name in used["generators"]:
        g = cfg.generators[name]
        ds = ds.map_batches(DiffusersGenerator, batch_size=g.batch_size, **pool_args(g.pool, runtime_env),
                            fn_constructor_kwargs=dict(name=name, cfg=g.model_dump(), model_path=model_paths[g.model]))
    for name in used["ocr"]:
        o = cfg.ocr[name]
        ds = ds.map_batches(OcrReader, fn_constructor_kwargs=dict(name=name, cfg=o.model_dump()),
                            batch_size=o.batch_size, **pool_args(o.pool, runtime_env))
    for name in used["judges"]:
        j = cfg.judges[name]
        ds = ds.map_batches(VLMJudge, batch_size=j.batch_size, **pool_args(j.pool, runtime_env),
                            fn_constructor_kwargs=dict(name=name, cfg=j.model_dump(), model_path=model_paths[j.model],
                                                       nonce=marker_nonce))
    for name in used["rewards"]:
        r = cfg.rewards[name]
        ds = ds.map_batches(RewardScorer, batch_size=r.batch_size, **pool_args(r.pool, runtime_env),
                            fn_constructor_kwargs=dict(name=name, cfg=r.model_dump(), model_path=model_paths[r.model],
                                                       checkpoint_path=model_paths.get(r.checkpoint)))
    return ds
