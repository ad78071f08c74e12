"""The GPU benchmark suite (`benchmarks/gpu.sh`): the figures a run's budget rests on, in one command.

1. Generators: images/s (videos: s per clip) of SD 1.5, SDXL, FLUX.1-dev and Wan2.1-T2V-14B at their usual
   sizes and step counts, loaded through the workers' own loader (workers/generator.load_pipeline).
2. Judge: pairs/s (both orders per pair) of a Qwen2.5-VL-7B-sized judge on vLLM and on transformers, and the
   ratio (benchmarks/judge_backends.py).
3. Training: Ray Train steps/s against a plain torch loop on the same pairs (benchmarks/train_loop.py), with
   an SD 1.5-sized UNet.
4. Pipeline efficiency: end-to-end rows/s of a composition run against its slowest stage alone
   (benchmarks/pipeline.py).

Full size uses `random:` models (workers/random_models.py: the published architectures, random weights,
no hub); `--tiny` runs the same code on the tiny kit on CPU in about two minutes, so the suite cannot rot
(tests/test_gpu_suite.py). Each section runs in its own process (the GPU's memory is free again after it);
a failing section is reported and the others still run; the exit status is 1 if any failed.

    benchmarks/gpu.sh                 # one GPU, under 25 minutes (H100-class)
    benchmarks/gpu.sh --tiny          # CPU, tiny models
    benchmarks/gpu.sh --only judge    # one section: generators, judge, train, pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("generators", "judge", "train", "pipeline")

# name -> (model ref, width, height, steps, guidance, frames, call kwargs, images to time); full size: the usual
# published settings (SD 1.5 512 px and SDXL 1024 px at 50 steps, FLUX.1-dev 1024 px at 28, Wan 480p 81 frames).
FULL = {
    "sd15": ("random:sd15", 512, 512, 50, 7.5, None, {}, 8),
    "sdxl": ("random:sdxl", 1024, 1024, 50, 5.0, None, {}, 4),
    "flux-dev": ("random:flux-dev", 1024, 1024, 28, 3.5, None, {"max_sequence_length": 512}, 3),
    "wan2.1-t2v-14b": ("random:wan2.1-t2v-14b", 832, 480, 50, 5.0, 81, {}, 1),
}
TINY = {
    "sd15": ("tiny:sd", 64, 64, 4, 5.0, None, {}, 4),
    "sdxl": ("tiny:sdxl", 64, 64, 4, 5.0, None, {}, 4),
    "flux-dev": ("tiny:flux-dev", 64, 64, 4, 3.5, None, {"max_sequence_length": 64}, 4),
    "wan2.1-t2v-14b": ("tiny:wan-t2v", 64, 64, 4, 5.0, 5, {}, 1),
}
# A video's denoising steps are timed at two counts (VIDEO_STEPS) and extrapolated linearly to the
# configured count: text encoding and VAE decoding are the fixed part, and a 50-step 480p clip of a 14B
# model alone would take a quarter of the suite's time.
VIDEO_STEPS = (2, 6)


def _time_generator(name: str, spec: tuple, keep_models: bool) -> str:
    import torch

    from workers.generator import load_pipeline
    from workers.model_refs import resolve_model_ref

    ref, width, height, steps, guidance, frames, kwargs, n = spec
    t0 = time.perf_counter()
    path = resolve_model_ref(ref)
    _, device, pipe = load_pipeline(path, "auto")
    ready = time.perf_counter() - t0
    prompt = "a red chair in an empty room, soft morning light, wide shot"

    def draw(k: int, n_steps: int) -> float:
        gen = torch.Generator(device).manual_seed(k)
        args = dict(prompt=prompt, width=width, height=height, num_inference_steps=n_steps, guidance_scale=guidance,
                    generator=gen, **kwargs)
        if frames:
            args["num_frames"] = frames
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(**args)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    draw(0, 1)  # warm-up: kernels, allocator, compiled paths
    if frames:
        lo, hi = (min(s, steps) for s in VIDEO_STEPS)
        t_lo, t_hi = draw(1, lo), draw(2, hi)
        per_step = max((t_hi - t_lo) / (hi - lo), 0.0) if hi > lo else t_hi / hi  # >= 0 despite timing noise
        clip_s = t_lo + (steps - lo) * per_step
        line = (f"generator {name:<15} {width}x{height}x{frames} {steps:>2} steps: {1 / clip_s:8.4f} videos/s "
                f"({clip_s:.1f} s per clip; {per_step:.2f} s per step, measured at {lo} and {hi} steps)")
    else:
        total = sum(draw(k + 1, steps) for k in range(n))
        line = (f"generator {name:<15} {width}x{height} {steps:>2} steps: {n / total:8.3f} images/s "
                f"({total / n:.2f} s per image)")
    print(f"{line}  [load {ready:.0f} s, {device}]", flush=True)
    pipe = None  # frees the model before the next one loads (the closure above holds it otherwise)
    if device == "cuda":
        torch.cuda.empty_cache()
    if ref.startswith("random:") and not keep_models:
        shutil.rmtree(path, ignore_errors=True)  # tens of GB each: the disk holds one at a time
    return line


def generators(args) -> None:
    from workers.runtime import setup_worker

    setup_worker(args.threads)
    for name, spec in (TINY if args.tiny else FULL).items():
        _time_generator(name, spec, args.keep_models)


def _run(cmd: list[str], timeout: float) -> str:
    """Run a benchmark script, echo its output, return it; raise with its tail if it failed."""
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout
    print(out, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-1500:]}")
    return out


def judge(args) -> None:
    model = "tiny:qwen2.5-vl-b" if args.tiny else "random:qwen2.5-vl-7b"
    sizes = ["--pairs", "8", "--batch", "4", "--size", "64"] if args.tiny else \
        ["--pairs", "256", "--batch", "16", "--size", "512"]  # transformers keeps all positions' logits: ~15 GB at 32
    path = None
    if not args.tiny:
        from workers.model_refs import resolve_model_ref

        path = resolve_model_ref(model)  # built here, so neither backend's load time includes the build
    try:
        out = _run(["benchmarks/judge_backends.py", "--model", model, *sizes, "--backends", args.judge_backends],
                   timeout=900)
    finally:
        if path and not args.keep_models:
            shutil.rmtree(path, ignore_errors=True)
    ratio = re.search(r"vllm / transformers = ([\d.]+)x", out)
    rates = dict(re.findall(r"(\w+): +([\d.]+) pairs/s", out))
    print(f"judge {model}: " + ", ".join(f"{b} {rates[b] + ' pairs/s' if b in rates else 'not run'}"
                                         for b in ("transformers", "vllm")) + ", "
          f"vllm / transformers = {f'{ratio.group(1)}x' if ratio else 'n/a (needs both backends)'}", flush=True)


def training_pairs(out: Path, n: int, size: int) -> Path:
    """`n` decided pairs with noise images (real record schema, benchmarks/synthetic.py) to train on:
    the steps' cost does not depend on what the images show."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from benchmarks.synthetic import write_synthetic_output
    from schemas.pair import IMAGE
    from workers.media import png_bytes

    rng = np.random.default_rng(0)
    for path in write_synthetic_output(out, n, categories=("composition",), votes=False, rewards=False):
        table = pq.read_table(path)
        for col in ("image_w", "image_l"):
            images = [{"bytes": png_bytes(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))), "path": None}
                      for _ in range(table.num_rows)]
            table = table.set_column(table.schema.get_field_index(col), col, pa.array(images, IMAGE))
        pq.write_table(table, path)
    return out


def train(args) -> None:
    size = 64 if args.tiny else 512
    pairs = training_pairs(Path(args.work) / "train-pairs", 16 if args.tiny else 128, size)
    model = "tiny:sd" if args.tiny else "random:sd15"
    steps = "6" if args.tiny else "40"
    out = _run(["benchmarks/train_loop.py", "--pairs", str(pairs), "--model", model, "--steps", steps,
                "--batch", "2" if args.tiny else "8", "--resolution", str(size)], timeout=1200)
    ratio = re.search(r"Ray Train / plain = ([\d.]+)x", out)
    print(f"train {model}: Ray Train / plain loop = {ratio.group(1) if ratio else None}x", flush=True)


def pipeline(args) -> None:
    sizes = ["--base", "4", "--scales", "1", "--size", "64"] if args.tiny else \
        ["--base", "32", "--scales", "1,4", "--size", "256"]
    out = _run(["benchmarks/pipeline.py", *sizes], timeout=1800)
    ratio = re.search(r"/ slowest stage alone \(([^,]+), [\d.]+ rows/s\): ([\d.]+)", out)
    print(f"pipeline efficiency (end-to-end / slowest stage alone, {ratio.group(1) if ratio else '?'}): "
          f"{ratio.group(2) if ratio else None}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny kit on CPU (minutes), instead of full size on a GPU")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--judge-backends", default="transformers,vllm",
                    help="judge backends to time (the ratio needs both; vLLM's engine start takes minutes on CPU)")
    ap.add_argument("--keep-models", action="store_true", help="keep the built random: models in the cache")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--section", help=argparse.SUPPRESS)  # one section, run by main() in a child process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.section:
        globals()[args.section](args)
        return
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        sys.exit(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"pairforge GPU benchmark suite on {device}{' (--tiny)' if args.tiny else ''}", flush=True)
    if not args.tiny and not torch.cuda.is_available():
        print("no GPU: full-size models on CPU would take hours; use --tiny", flush=True)
    work = tempfile.mkdtemp(prefix="pf-gpu-bench-")
    summary, failed, started = [], [], time.perf_counter()
    for section in args.only.split(","):
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--section", section, "--work", work, "--threads", str(args.threads)]
        cmd += ["--tiny"] * args.tiny + ["--keep-models"] * args.keep_models + ["--judge-backends", args.judge_backends]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        print(proc.stdout, end="", flush=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("generator ", "judge ", "train ", "pipeline "))]
        summary += lines
        if proc.returncode:
            failed.append(section)
            print(f"[{section}] FAILED (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        print(f"[{section}] {time.perf_counter() - t0:.0f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n== summary ({device}, {time.perf_counter() - started:.0f} s) ==")
    print("\n".join(summary))
    print(json.dumps({"failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
