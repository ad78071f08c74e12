"""pairforge pipelines: the categories (pipelines/categories/) and the run / stats entry points (Ray Data graphs).

The few things a user imports (loaded on first use, so importing one category module stays light):
    from pipelines import run, load_run_config, compute_stats
"""

__all__ = ["run", "load_run_config", "compute_stats"]


def __getattr__(name: str):
    if name == "run":
        from pipelines.run import run

        return run
    if name == "compute_stats":
        from pipelines.stats import compute_stats

        return compute_stats
    if name == "load_run_config":
        from schemas.config import load_run_config

        return load_run_config
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
