"""Judge throughput per backend on the same model and pairs: pairs/s (both orders per pair), and the
vLLM / transformers ratio measured in this run.

    python benchmarks/judge_backends.py                       # tiny Qwen2-VL on CPU
    python benchmarks/judge_backends.py --model Qwen/Qwen2.5-VL-7B-Instruct --pairs 512 --size 512
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


def main() -> None:
    import numpy as np
    from PIL import Image

    from schemas.config import JudgeConfig
    from workers.judge_backends import make_backend
    from workers.model_refs import resolve_model_ref
    from workers.rubrics import OPTIONS, new_nonce, pairwise_messages
    from workers.runtime import pick_device, setup_worker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:qwen2-vl-a")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="pairs per call")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--backends", default="transformers,vllm")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()
    setup_worker(args.threads)

    path = resolve_model_ref(args.model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(16)]
    nonce = new_nonce()
    pairs = [(pairwise_messages("composition", f"two chairs facing a window, variant {i}", nonce),
              images[i % 16], images[(i * 7 + 3) % 16]) for i in range(args.pairs)]

    rates = {}
    for name in args.backends.split(","):
        t0 = time.perf_counter()
        backend = make_backend(path, JudgeConfig(model=path, backend=name))
        load = time.perf_counter() - t0
        backend.option_logprobs([(pairs[0][0], [pairs[0][1], pairs[0][2]])], list(OPTIONS))  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(pairs), args.batch):
            chunk = pairs[start:start + args.batch]
            requests = [(m, order) for m, a, b in chunk for order in ([a, b], [b, a])]
            backend.option_logprobs(requests, list(OPTIONS))
        rates[name] = len(pairs) / (time.perf_counter() - t0)
        print(f"{name:>12}: {rates[name]:8.1f} pairs/s   (load {load:.1f} s, device {pick_device()}, "
              f"{args.pairs} pairs, {args.size}px, batch {args.batch} pairs)", flush=True)
        if hasattr(backend, "close"):
            backend.close()
        del backend  # free the model (a GPU's memory) before the next backend loads
        gc.collect()
        if pick_device() == "cuda":
            import torch

            torch.cuda.empty_cache()
    if {"vllm", "transformers"} <= rates.keys():
        print(f"vllm / transformers = {rates['vllm'] / rates['transformers']:.2f}x")


if __name__ == "__main__":
    main()
