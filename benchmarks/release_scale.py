"""`pairforge release` at scale: wall time, CPU time and peak RSS of the real command over synthetic outputs
of growing size (real shards of the real pair schema, images null, from benchmarks/synthetic.py), each run in
its own process.

    python benchmarks/release_scale.py 100000 1000000 [--embedding]

Decontamination runs against a small eval set with exact and MinHash matching (and the embedder with
`--embedding`: it embeds every distinct prompt, the slow part on CPU). The images are null, so this measures
the selection, split and writing machinery, not moving pixels (which costs what reading and writing the bytes
costs). Goal: peak RSS flat in the number of pairs, time linear.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stats_scale import run  # noqa: E402
from benchmarks.synthetic import write_synthetic_output  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000], help="numbers of pairs")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pairforge-release-scale"))
    ap.add_argument("--embedding", action="store_true", help="also the embedding check (every distinct prompt)")
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
    *_, base_rss = run(["-c", "import pipelines.cli, pipelines.release, pipelines.release_card, datasketch, mlcroissant"])
    print(f"baseline: a process that only imports the release's modules peaks at {base_rss:.0f} MiB")
    print(f"{'pairs':>11}{'write s':>9}{'wall s':>8}{'cpu s':>8}{'peak MiB':>10}{'cpu s / M':>11}")
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
        wall, cpu, rss = run(["-m", "pipelines.release", str(out), str(dest), "--config", str(cfg)])
        print(f"{n:>11,}{write_s:>9.1f}{wall:>8.1f}{cpu:>8.1f}{rss:>10.0f}{cpu / n * 1e6:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
