"""Pipeline efficiency and scale of a composition run, against baselines measured in the same run.

1. Each pool's worker alone, in this process, one thread (what one actor does with the machine to
   itself): rows/s per stage on the same planned rows, the images flowing from stage to stage.
2. The composition pipeline (`run`, local Ray) on 1x, 4x and 10x the prompts.
Prints end-to-end rows/s after start-up (all pools loaded) against the slowest stage alone (the goal
on a cluster, where every pool has its own GPU: >= 0.9) and against the bound for pools sharing this
machine's cores (cores / sum of per-stage seconds per row), and the work time of 4x and 10x against
4 and 10 times that of 1x (goal: <= 1.05).

    python benchmarks/pipeline.py                 # the demo's composition pools, tiny models, 16/64/160 prompts
    python benchmarks/pipeline.py --base 8 --size 128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def composition_config(out: Path, n: int, size: int):
    """The demo config with one category, composition, taking the first `n` bundled prompts whatever
    their hint; semantic dedup off (planning is not what is measured)."""
    import yaml

    from schemas.config import RunConfig

    data = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    lines = (REPO / "prompts/pairforge-v1.jsonl").read_text().splitlines()[:n]
    prompts = out.parent / f"prompts-{n}.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    data.update(output={"path": str(out), "rows_per_file": 64}, prompts=[{"path": str(prompts), "source": "bench"}],
                run={"progress_s": 60})
    data["filters"]["semantic_dedup"] = False
    for g in data["generators"].values():
        g.update(width=size, height=size)
    data["categories"] = {"composition": {**data["categories"]["composition"], "target_pairs": None,
                                          "sources": ["bench"]}}
    import torch

    if torch.cuda.is_available():  # every model pool shares the one GPU (the in-process baselines use it too)
        pools = [m for section in ("generators", "judges", "rewards") for m in data[section].values()]
        for m in pools:
            m.setdefault("pool", {})["num_gpus"] = round(0.9 / len(pools), 3)
    return RunConfig.model_validate(data)


def isolated_rates(cfg, n: int) -> dict[str, float]:
    """rows/s of each pool's worker alone, in pipeline order, on `n` planned rows (one warm-up batch first)."""
    import numpy as np
    import pyarrow as pa

    from pipelines.run import resolve_models
    from pipelines.stages import pool_specs
    from schemas.category import get_category
    from schemas.pair import make_prompt_id
    from workers.runtime import setup_worker

    setup_worker(1)
    texts = [json.loads(line)["prompt"] for line in Path(cfg.prompts[0].path).read_text().splitlines()][:n]
    batch = {"prompt": np.array(texts, dtype=object), "prompt_source": np.array(["bench"] * n, dtype=object),
             "prompt_id": np.array([make_prompt_id("bench", t) for t in texts], dtype=object)}
    table = get_category("composition").plan(batch, cfg)
    rates = {}
    for worker_cls, stage, c, kwargs in pool_specs(cfg, resolve_models(cfg)):
        worker = worker_cls(**kwargs)
        worker(table.slice(0, c.batch_size))
        start = time.perf_counter()
        table = pa.concat_tables([worker(table.slice(i, c.batch_size)) for i in range(0, n, c.batch_size)],
                                 promote_options="permissive")
        rates[stage] = n / (time.perf_counter() - start)
        del worker
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=16, help="prompts of the 1x run")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--scales", default="1,4,10")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING)

    import ray

    from pipelines.run import init_ray, run

    scales = [int(k) for k in args.scales.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="pf-bench-"))
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rates = isolated_rates(composition_config(tmp / "isolated", args.base * max(scales), args.size), args.base * 2)
    for stage, r in rates.items():
        print(f"  alone  {stage:<20} {r:8.2f} rows/s")
    slowest = min(rates, key=rates.get)
    cores = os.cpu_count() or 1
    shared = min(rates[slowest], cores / sum(1 / r for r in rates.values()))

    runs = {}
    for k in scales:
        cfg = composition_config(tmp / f"run-{k}x", args.base * k, args.size)
        init_ray(cfg.ray)
        t = time.perf_counter()
        run(cfg)
        wall = time.perf_counter() - t
        timing = json.loads((Path(cfg.output.path) / "manifest.json").read_text())["runs"][-1]["timing"]
        work = timing["pools_s"] - timing["ready_s"]
        runs[k] = {"rows": args.base * k, "wall_s": wall, "startup_s": timing["ready_s"], "work_s": work}
        print(f"  run {k:>3}x {args.base * k:5d} rows: wall {wall:6.1f} s, pools ready after {timing['ready_s']:5.1f} s, "
              f"then {work:6.1f} s = {args.base * k / work:.2f} rows/s")
    ray.shutdown()

    big = runs[max(scales)]
    e2e = big["rows"] / big["work_s"]
    print(f"end-to-end {e2e:.2f} rows/s after start-up ({max(scales)}x run)")
    print(f"  / slowest stage alone ({slowest}, {rates[slowest]:.2f} rows/s): {e2e / rates[slowest]:.2f}  (goal >= 0.9 "
          "with a device per pool)")
    print(f"  / bound for pools sharing {cores} cores ({shared:.2f} rows/s): {e2e / shared:.2f}")
    one = runs[scales[0]]
    for k in scales[1:]:
        print(f"work time {k}x / ({k} x {scales[0]}x): {runs[k]['work_s'] / (k / scales[0] * one['work_s']):.2f}  "
              f"(wall, start-up included: {runs[k]['wall_s'] / (k / scales[0] * one['wall_s']):.2f}; goal <= 1.05)")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
