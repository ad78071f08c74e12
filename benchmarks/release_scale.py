"""`pairforge release` at scale: wall time, the driver's CPU time and peak RSS, and the largest Ray worker's
peak RSS, over synthetic outputs of growing size (real shards of the real pair schema, images null, from
benchmarks/synthetic.py). The benchmark starts one local Ray and runs each release as a separate driver process
that joins it (as `ray job submit` does), so the driver's figures are its own.

    python benchmarks/release_scale.py 100000 1000000 [--embedding] [--cpus 2]

Decontamination runs against a small eval set with exact and MinHash matching (and the embedder with
`--embedding`: it embeds every distinct prompt, the slow part on CPU). The images are null, so this measures
the selection, split and writing machinery, not moving pixels (which costs what reading and writing the bytes
costs). Goal: the driver's peak RSS flat in the number of pairs (it holds only the plan), each worker's
bounded by its batch and row group sizes, time linear.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.synthetic import write_synthetic_output  # noqa: E402


def run_driver(args: list[str], env: dict) -> tuple[float, float, float, float]:
    """Wall s, the driver's CPU s and peak RSS (MiB), and the largest Ray worker's RSS (MiB, sampled every 0.2 s)."""
    import psutil

    peak_worker = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_worker
        while not done.is_set():
            for p in psutil.Process().children(recursive=True):
                try:
                    if p.cmdline() and p.cmdline()[0].startswith(("ray::Map", "ray::MapWorker")):
                        peak_worker = max(peak_worker, p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"release_scale: `python {' '.join(args)}` failed")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, peak_worker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000], help="numbers of pairs")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pairforge-release-scale"))
    ap.add_argument("--embedding", action="store_true", help="also the embedding check (every distinct prompt)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    evals = args.dir / "eval.txt"
    evals.write_text("a synthetic prompt #0123456789abcdef\nan astronaut riding a horse on the moon\n")
    cfg = args.dir / "release.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "scale", "card": {"pretty_name": "scale", "license": "other"},
        "selection": {"min_confidence": {"vlm_panel": 0.6}, "max_pairs": {"composition": 10_000}},
        "decontamination": {"eval_sets": [{"path": str(evals)}],
                            "embedding_threshold": 0.9 if args.embedding else None}}))
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1"}
    *_, base_rss, _ = run_driver(["-c", "import pipelines.cli, pipelines.release, pipelines.release_card, ray.data, "
                                  "datasketch, mlcroissant; ray.init(); ray.data.range(2).count()"], env)
    print(f"baseline: a driver that imports the release's modules and runs a two-row Ray Data job peaks at {base_rss:.0f} MiB")
    print(f"{'pairs':>11}{'write s':>9}{'wall s':>8}{'drv cpu s':>10}{'drv MiB':>9}{'worker MiB':>11}"
          f"{'wall x':>8}{'drv RSS x':>10}")
    first = None
    for n in sorted(args.sizes):
        out = args.dir / f"pairs-{n}"
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            write_synthetic_output(out, n, rows_per_file=1000, undecided_fraction=0.1)
            (out / ".complete").touch()
            write_s = time.perf_counter() - start
        else:
            write_s = 0.0
        dest = args.dir / f"release-{n}"
        shutil.rmtree(dest, ignore_errors=True)
        wall, cpu, rss, worker = run_driver(["-m", "pipelines.release", str(out), str(dest), "--config", str(cfg)], env)
        first = first or (n, wall, rss)
        print(f"{n:>11,}{write_s:>9.1f}{wall:>8.1f}{cpu:>10.1f}{rss:>9.0f}{worker:>11.0f}"
              f"{wall / first[1] / (n / first[0]):>8.2f}{rss / first[2]:>10.2f}", flush=True)
    print("wall x: wall time per pair relative to the smallest size (1.0 = linear); drv RSS x: the driver's peak RSS "
          "relative to the smallest size (1.0 = flat)")


if __name__ == "__main__":
    main()
