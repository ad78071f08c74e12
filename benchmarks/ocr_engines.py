"""OCR latency per engine on the same rendered images: seconds per image for RapidOCR and PaddleOCR (on
RapidOCR's models converted for it, or the folders given), and the PaddleOCR / RapidOCR ratio measured in
this run, plus how many images each read exactly.

    python benchmarks/ocr_engines.py                          # one thread per engine, 384 px images
    python benchmarks/ocr_engines.py --threads 4 --size 1024 --paddleocr-kwargs '{"enable_mkldnn": false}'
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_ocr import FONTS, PHRASES, render

    from schemas.config import OcrConfig
    from workers.ocr import OCR_BACKENDS
    from workers.runtime import setup_worker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--det", default="rapidocr:PP-OCRv6_det_small")
    ap.add_argument("--rec", default="rapidocr:PP-OCRv6_rec_small")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--paddleocr-kwargs", default="{}", help="JSON: more PaddleOCR(...) arguments")
    args = ap.parse_args()
    setup_worker(args.threads)  # as the OCR actors run

    images = [Image.open(io.BytesIO(render(p, FONTS[i % 4], args.size))) for i, p in enumerate(PHRASES)]
    configs = {"rapidocr": OcrConfig(), "paddleocr": OcrConfig(backend="paddleocr", det_model_dir=args.det,
                                                                 rec_model_dir=args.rec,
                                                                 paddleocr_kwargs=json.loads(args.paddleocr_kwargs))}
    backends = {}
    for name, cfg in configs.items():
        t = time.perf_counter()
        backends[name] = OCR_BACKENDS[cfg.backend](cfg, args.threads)
        backends[name].read(images[0])  # warm-up
        print(f"{name:10s} load + first read {time.perf_counter() - t:5.1f} s")
    # Engines alternate image by image, so a busy machine slows both alike; medians resist outliers.
    seconds, exact = {n: [] for n in backends}, dict.fromkeys(backends, 0)
    for _ in range(args.rounds):
        for phrase, image in zip(PHRASES, images):
            for name, backend in backends.items():
                t = time.perf_counter()
                exact[name] += backend.read(image) == phrase
                seconds[name].append(time.perf_counter() - t)
    median = {n: statistics.median(s) for n, s in seconds.items()}
    for name in backends:
        print(f"{name:10s} {median[name]:.3f} s/image (median of {len(seconds[name])}), "
              f"{exact[name]}/{len(seconds[name])} read exactly")
    print(f"paddleocr / rapidocr latency: {median['paddleocr'] / median['rapidocr']:.2f}x")


if __name__ == "__main__":
    main()
