"""Resume planning at scale: the time and the driver's peak RSS of removing the already-done pairs from a
run's planned pairs, old approach against new, over synthetic outputs of growing size (real shards of the
real pair schema with images null, benchmarks/synthetic.py).

    python benchmarks/resume_plan.py 100000 1000000 10000000 --planned 200000

- old: every done id read into one driver set, shipped to every task as a `not_in` filter list
  (pipelines/run.py before the exactly-once work);
- new: `OutputStore.not_done`, a Ray Data left anti-join of the planned rows with the ids on disk, then
  the cast back to the work schema, as `pipelines.run.plan` does it.
Half of the planned pairs are done (their ids drawn from the shards), half are new; both approaches
must keep exactly the new half. Each measurement runs in its own process (local Ray, 2 CPUs) so that
the RSS is its own; it is sampled before planning (after Ray start-up and building the planned rows)
and throughout it. Prints per size and approach the plan time, the driver's peak RSS and its growth
during planning, and the ratios new / old.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "composition"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """The highest RSS of this process while the block runs, sampled every 5 ms (the process's lifetime
    high-water mark, ru_maxrss, would hide a peak below an earlier one such as Ray's start-up)."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def planned_rows(files: list[str], n: int):
    """`n` planned rows of the work schema, half of them with ids taken from `files` (done), half new."""
    import numpy as np
    import pyarrow as pa
    import ray

    from schemas.work import PLANNED_SCHEMA

    def as_planned(batch: pa.Table) -> pa.Table:
        ids = batch["pair_id"]
        return pa.Table.from_arrays([ids if f.name == "pair_id" else pa.repeat(pa.scalar(CATEGORY if f.name == "category"
                                     else None, f.type), len(ids)) for f in PLANNED_SCHEMA], schema=PLANNED_SCHEMA)

    def fresh(batch: dict) -> dict:
        rng = np.random.default_rng(int(batch["id"][0]))
        return {"pair_id": np.array([f"new{x:021x}" for x in rng.integers(0, 2**62, len(batch["id"]))], object)}

    done = ray.data.read_parquet(files, columns=["pair_id"]).limit(n // 2)
    new = ray.data.range(n - n // 2).map_batches(fresh)
    return done.union(new).map_batches(as_planned, batch_format="pyarrow").materialize()


def plan_old(out: Path, planned):
    import pyarrow.parquet as pq
    from ray.data.expressions import col

    from pipelines.store import RESUME_KINDS, shard_files

    done: set[str] = set()
    for kind in RESUME_KINDS:
        for f in shard_files(out, kind):
            done.update(pq.read_table(f, columns=["pair_id"]).column("pair_id").to_pylist())
    return planned.filter(expr=col("pair_id").not_in(sorted(done))).materialize()


def plan_new(out: Path, planned):
    from pipelines.run import as_work_rows
    from pipelines.store import OutputStore

    store = OutputStore(out)
    done_rows = store.decided_counts().get(CATEGORY, 0) + store.row_counts("undecided").get(CATEGORY, 0)
    return store.not_done(planned, [CATEGORY], done_rows).map_batches(as_work_rows, batch_format="pyarrow").materialize()


def child(approach: str, out: Path, n_planned: int) -> None:
    import ray

    from pipelines.store import shard_files

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=2 << 30)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    planned = planned_rows([str(f) for f in shard_files(out, "pairs", CATEGORY)], n_planned)
    with PeakRss() as rss:
        start = time.perf_counter()
        kept = (plan_old if approach == "old" else plan_new)(out, planned)
        seconds = time.perf_counter() - start
    n_kept = kept.count()
    if n_kept != n_planned - n_planned // 2:
        raise SystemExit(f"resume_plan: {approach} kept {n_kept} of {n_planned} planned rows, expected the new half")
    print(json.dumps({"seconds": seconds, "rss_before": rss.before, "rss_peak": rss.peak}))


def measure(approach: str, out: Path, n_planned: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", approach, "--dir", str(out), "--planned", str(n_planned)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"resume_plan: the {approach} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000], help="numbers of done pairs")
    ap.add_argument("--planned", type=int, default=200_000, help="planned pairs (half of them done)")
    ap.add_argument("--rows-per-file", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pairforge-resume-plan"))
    ap.add_argument("--approaches", nargs="+", default=["old", "new"], choices=["old", "new"])
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.dir, args.planned)

    sys.path.insert(0, str(REPO))
    from benchmarks.synthetic import write_synthetic_output

    print(f"{'done pairs':>11} {'approach':>8} {'plan s':>8} {'peak RSS MiB':>13} {'RSS growth MiB':>15}")
    for n in args.sizes:
        out = args.dir / f"done-{n}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic_output(out, n, rows_per_file=args.rows_per_file, categories=(CATEGORY,))
        print(f"{n:>11,} {'(write)':>8} {time.perf_counter() - start:>8.1f}")
        results = {}
        for approach in args.approaches:
            r = results[approach] = measure(approach, out, args.planned)
            print(f"{n:>11,} {approach:>8} {r['seconds']:>8.1f} {r['rss_peak']:>13.0f} {r['rss_peak'] - r['rss_before']:>15.0f}")
        if len(results) == 2:
            old, new = results["old"], results["new"]
            growth = (new["rss_peak"] - new["rss_before"]) / max(1.0, old["rss_peak"] - old["rss_before"])
            print(f"{n:>11,} {'new/old':>8} {new['seconds'] / old['seconds']:>8.2f} {new['rss_peak'] / old['rss_peak']:>13.2f} "
                  f"{growth:>15.2f}")
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
