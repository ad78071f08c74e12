"""pairforge pipelines: category recipes and the run / stats entry points (Ray Data graphs).

The few things a user imports:
    from pipelines import run, load_run_config, compute_stats
"""

from pipelines.run import run
from pipelines.stats import compute_stats
from schemas.config import load_run_config

__all__ = ["run", "load_run_config", "compute_stats"]
