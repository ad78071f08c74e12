"""What every worker process shares: quiet, single-threaded start-up, device and dtype choice, image I/O."""

from __future__ import annotations

import contextlib
import os

# Set in every Ray worker through the runtime env (and by the CLI for the driver).
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def setup_worker(num_threads: int = 1) -> None:
    """One intra-op thread per process unless asked otherwise: several model processes share few cores,
    and OpenMP oversubscription turned a 0.07 s training step into 29 s on a 2-core box."""
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    torch.set_num_threads(num_threads)
    for module in ("transformers.utils.logging", "diffusers.utils.logging"):
        with contextlib.suppress(ImportError):
            __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str):
    """`auto`: bf16 on GPUs that support it, fp32 on CPU (CPU half-precision kernels are slow or missing)."""
    import torch

    if name == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def column(table, name: str) -> list:
    """A column of a pyarrow batch as Python values; all None if the column is absent."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def with_columns(table, **columns):
    """The batch with these pyarrow arrays set (replaced if present, else appended). Explicit types keep
    a column whose values are all None from being inferred as the null type downstream."""
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    return table
