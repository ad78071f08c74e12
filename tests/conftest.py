"""Shared fixtures: one local Ray per session, the tiny-model kit built once, small run configs.

Everything is real: Ray, the tiny models loaded through their libraries' loaders, Parquet on disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import DECISIVE_PANELS, small_run_config

REPO = Path(__file__).resolve().parents[1]

for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "RAY_DEDUP_LOGS": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(key, value)
os.environ.pop("RAY_ADDRESS", None)  # tests run on their own local Ray, never on a cluster


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory) -> Path:
    """The tiny-model kit, built once (in $PAIRFORGE_CACHE when set, so `make test` reuses it)."""
    from workers.model_refs import default_cache_dir
    from workers.runtime import setup_worker
    from workers.tiny_models import KIT_VERSION, ensure_tiny_models

    setup_worker(1)
    root = default_cache_dir() / f"tiny-v{KIT_VERSION}" if "PAIRFORGE_CACHE" in os.environ \
        else tmp_path_factory.mktemp("kit") / f"tiny-v{KIT_VERSION}"
    os.environ["PAIRFORGE_CACHE"] = str(root.parent)
    return ensure_tiny_models(root)


@pytest.fixture(scope="session")
def ray_session(tiny_kit):
    import ray

    from workers.runtime import WORKER_ENV

    ray.init(address="local", num_cpus=4, object_store_memory=768 * 2**20, include_dashboard=True, logging_level=logging.WARNING,
             runtime_env={"env_vars": {**WORKER_ENV, "HF_HUB_OFFLINE": "1",
                                       "PAIRFORGE_CACHE": os.environ["PAIRFORGE_CACHE"]}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def composition_run(ray_session, tmp_path_factory):
    """One real composition run on 8 prompts (shared by the tests that read its output), with judges whose
    evidence is large enough to decide (helpers.DECISIVE_PANELS)."""
    from pipelines.run import run

    tmp = tmp_path_factory.mktemp("composition")
    cfg = small_run_config(tmp, overrides=DECISIVE_PANELS)
    report = run(cfg)
    return cfg, Path(cfg.output.path), report
