"""`pairforge stats` at scale: wall time and peak RSS of the real command over synthetic outputs of growing
size (real shards of the real pair schema with images null, written by benchmarks/synthetic.py), each run
in its own process so that its peak RSS is its own.

    python benchmarks/stats_scale.py 100000 1000000 10000000

Prints, per size, the write time of the synthetic output, the stats' wall and CPU time and peak RSS, and
their ratios to the smallest size, next to the RSS of a process that only imports what the stats import.
Goal: peak RSS flat in the number of pairs, wall time linear.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system: less disturbed by a busy machine) and peak RSS (MiB) of
    `python args...`, run from the repository root."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"stats_scale: `python {' '.join(args)}` exited with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000, 3_000_000], help="numbers of pairs")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pairforge-stats-scale"),
                    help="where the synthetic outputs go (one folder per size, reused by later runs)")
    ap.add_argument("--undecided", type=float, default=0.1, help="undecided pairs per decided pair")
    ap.add_argument("--rows-per-file", type=int, default=1000, help="rows per shard (a run's `rows_per_file` default)")
    ap.add_argument("--clean", action="store_true", help="delete each synthetic output after measuring it")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.synthetic import write_synthetic_output

    *_, base_rss = run(["-c", "import numpy, pyarrow.parquet, scipy.optimize, scipy.stats, pipelines.cli, pipelines.stats"])
    print(f"baseline: a process that only imports the stats' modules peaks at {base_rss:.0f} MiB")
    print(f"{'pairs':>11}{'files':>7}{'write s':>9}{'wall s':>8}{'cpu s':>8}{'peak MiB':>10}{'cpu s / M':>11}"
          f"{'cpu x':>7}{'RSS x':>7}")
    first = None
    for n in sorted(args.sizes):
        out = args.dir / f"pairs-{n}-{args.rows_per_file}"
        done = out / ".complete"
        start = time.perf_counter()
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            write_synthetic_output(out, n, rows_per_file=args.rows_per_file, undecided_fraction=args.undecided)
            done.touch()
        write_s = time.perf_counter() - start
        files = sum(1 for _ in out.glob("*/*/*.parquet"))
        wall, cpu, rss = run(["-m", "pipelines.cli", "stats", str(out)])
        first = first or (cpu, rss)
        print(f"{n:>11,}{files:>7}{write_s:>9.1f}{wall:>8.1f}{cpu:>8.1f}{rss:>10.0f}{cpu / n * 1e6:>11.1f}"
              f"{cpu / first[0]:>7.2f}{rss / first[1]:>7.2f}", flush=True)
        if args.clean:
            shutil.rmtree(out)
    print("cpu x / RSS x: against the smallest size (linear time = the ratio of the sizes; flat RSS = 1.00)")


if __name__ == "__main__":
    main()
