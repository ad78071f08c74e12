"""Training throughput: steps/s of the Ray Train loop (TorchTrainer, Ray Data streaming from the pair
shards) against a plain single-process torch loop, same tiny model, same pairs, same batch size.

    make demo && python benchmarks/train_loop.py --pairs out/demo --steps 30
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from diffusers import DiffusionPipeline

    from schemas.config import TrainConfig
    from training.data import decode_batch, pair_files, tensor_column
    from training.train import PreferenceTrainer, train
    from workers.model_refs import resolve_model_ref
    from workers.runtime import setup_worker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="out/demo", help="output directory of a pairforge run")
    ap.add_argument("--model", default="tiny:sd")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available(),
                    help="both loops on the GPU, bf16 autocast (default: when there is one)")
    args = ap.parse_args()
    setup_worker(1)
    device = "cuda" if args.gpu else "cpu"
    out = tempfile.mkdtemp(prefix="pf-bench-")
    cfg = TrainConfig(name="bench", model=args.model, output=out, batch_size=args.batch, max_steps=args.steps,
                      checkpoint_every=args.steps, data={"paths": [args.pairs], "resolution": args.resolution},
                      ray={"num_cpus": 4}, use_gpu=args.gpu, mixed_precision="bf16" if args.gpu else "no")
    warmup = min(5, args.steps // 3)

    # plain loop: decode every pair up front (what a single process would do), then step
    files = [f for fs in pair_files(cfg.data).values() for f in fs]
    decoded = decode_batch(pq.read_table(files, columns=["pair_id", "prompt", "image_w", "image_l"]), cfg.data)
    data = {"prompt": np.array(decoded.column("prompt").to_pylist(), dtype=object),
            "pixels_w": tensor_column(decoded, "pixels_w"), "pixels_l": tensor_column(decoded, "pixels_l")}
    trainer = PreferenceTrainer(DiffusionPipeline.from_pretrained(resolve_model_ref(args.model)), cfg, device)
    rng = torch.Generator().manual_seed(0)
    n = len(data["prompt"])
    times = []
    for step in range(args.steps):
        idx = np.arange(step * args.batch, (step + 1) * args.batch) % n
        batch = {k: v[idx] for k, v in data.items()}
        t0 = time.perf_counter()
        trainer.step(batch, rng)
        if args.gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    plain = 1 / np.mean(times[warmup:])

    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    with open(Path(out) / "bench" / "metrics.csv") as f:
        step_s = [float(r["step_s"]) for r in csv.DictReader(f)]
    ray_rate = 1 / np.mean(step_s[warmup:])
    print(f"plain torch loop: {plain:6.2f} steps/s  (batch {args.batch} pairs, {args.resolution}px, {n} pairs, {device})")
    print(f"Ray Train loop:   {ray_rate:6.2f} steps/s  (steady state; whole fit incl. start-up {wall:.1f} s)")
    print(f"Ray Train / plain = {ray_rate / plain:.2f}x")


if __name__ == "__main__":
    main()
