"""Run and training configs: YAML validated by pydantic, with errors that name the file and the key.

Relative paths in a config resolve against the current working directory (the repo root under
`make demo`, the uploaded working dir under `ray job submit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.pair import CATEGORIES, stable_hash


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolConfig(Strict):
    """Where a worker pool runs. Locally: fractional CPUs (a pool that takes every CPU starves Ray
    Data's read/write tasks and the run hangs). On clusters: GPUs, or custom resources that name a
    GPU pool declared in cluster.yaml (e.g. `{judge_gpu: 1}`)."""

    actors: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    resources: dict[str, float] = {}


class GeneratorConfig(Strict):
    model: str = Field(description="diffusers pipeline: hub id, local path, or tiny:<name>")
    width: int = Field(512, ge=16, le=4096)
    height: int = Field(512, ge=16, le=4096)
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = 5.0
    batch_size: int = Field(4, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    call_kwargs: dict = Field({}, description="extra pipeline __call__ arguments (e.g. max_sequence_length)")
    pool: PoolConfig = PoolConfig()

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE's downsampling factor), got {v}")
        return v


class JudgeConfig(Strict):
    model: str = Field(description="VLM: hub id, local path, tiny:<name>; for `openai`, the served model name")
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="transformers: CPU default; vllm: in-process engine (GPU default); "
                                    "openai: an OpenAI-compatible server at `endpoint`")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(8, ge=1, description="pairs per call; both orders go in one batch")
    max_prompt_chars: int = Field(600, ge=16, description="cap on the untrusted prompt text shown to the judge")
    max_pixels: int | None = Field(None, ge=784, description="the judge's pixel budget per image (resized to fit)")
    min_option_mass: float = Field(
        0.0, ge=0, le=1,
        description="abstain when P(A) + P(B) over the full vocabulary is below this (the judge is not answering)")
    engine_kwargs: dict = Field({}, description="vllm: extra vllm.LLM arguments (max_model_len, "
                                                "gpu_memory_utilization, tensor_parallel_size, ...)")
    endpoint: str | None = Field(None, description="openai: base URL, e.g. http://judge-host:8000/v1")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key")
    max_concurrency: int = Field(16, ge=1, description="openai: requests in flight per actor")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout")
    max_retries: int = Field(4, ge=0, description="openai: retries on timeouts, 429 and 5xx, with backoff")
    backoff_s: float = Field(1.0, ge=0, description="openai: first retry delay; doubles each retry, jittered")
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _endpoint_for_openai(self):
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend openai needs `endpoint` (the server's base URL, e.g. http://host:8000/v1)")
        return self


class PanelConfig(Strict):
    judges: list[str] = Field(min_length=1)
    quorum: int = Field(2, ge=1, description="judges that must pick the same image for it to win")
    tie_margin: float = Field(
        0.0, ge=0, lt=0.5,
        description="a judge whose order-averaged P(a better) is within this of 0.5 counts as a tie")

    @model_validator(mode="after")
    def _quorum_fits(self):
        if self.quorum > len(self.judges):
            raise ValueError(f"quorum {self.quorum} exceeds the panel size {len(self.judges)}")
        return self


class RewardConfig(Strict):
    model: str = Field(description="open_clip model: 'local-dir:PATH', 'hf-hub:ORG/REPO', a local dir, or tiny:clip")
    kind: Literal["clip_score"] = "clip_score"
    batch_size: int = Field(16, ge=1)
    pool: PoolConfig = PoolConfig()


class PromptSource(Strict):
    path: str
    source: str | None = Field(None, description="name stored with each prompt; default: the file's stem")
    format: Literal["auto", "jsonl", "txt", "parquet"] = "auto"
    text_field: str = "prompt"
    category_field: str | None = Field("category", description="column with a category hint, if any")

    @property
    def name(self) -> str:
        return self.source or Path(self.path).stem


class PromptFilters(Strict):
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(1000, ge=1)


class CategoryConfig(Strict):
    target_pairs: int | None = Field(None, ge=1, description="stop once this many pairs exist in the output")
    generators: list[str] = Field(min_length=2, max_length=2)
    panel: str
    rewards: list[str] = []


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; default: $RAY_ADDRESS, else a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: logical CPUs (default: all cores)")
    object_store_memory_mb: int | None = Field(None, ge=64)
    include_dashboard: bool = Field(True, description="local Ray only; Ray Train's state checks use it")
    env_vars: dict[str, str] = {}


class OutputConfig(Strict):
    path: str
    rows_per_file: int = Field(1000, ge=1, description="upper bound on rows per Parquet shard")


class RunConfig(Strict):
    name: str
    seed: int = 0
    output: OutputConfig
    ray: RayConfig = RayConfig()
    prompts: list[PromptSource] = Field(min_length=1)
    filters: PromptFilters = PromptFilters()
    generators: dict[str, GeneratorConfig]
    judges: dict[str, JudgeConfig] = {}
    panels: dict[str, PanelConfig] = {}
    rewards: dict[str, RewardConfig] = {}
    categories: dict[str, CategoryConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self):
        def check(kind: str, names: list[str], known: dict, where: str):
            for n in names:
                if n not in known:
                    raise ValueError(f"{where}: unknown {kind} {n!r} (defined: {sorted(known) or 'none'})")

        for cat, c in self.categories.items():
            if cat not in CATEGORIES:
                raise ValueError(f"categories: unknown category {cat!r} (known: {', '.join(CATEGORIES)})")
            check("generator", c.generators, self.generators, f"categories.{cat}.generators")
            check("panel", [c.panel], self.panels, f"categories.{cat}.panel")
            check("reward", c.rewards, self.rewards, f"categories.{cat}.rewards")
        for p, panel in self.panels.items():
            check("judge", panel.judges, self.judges, f"panels.{p}.judges")
        return self

    def config_hash(self) -> str:
        """Hash of what decides the data: everything but where it runs and where it is written."""
        return stable_hash(self.model_dump(mode="json", exclude={"ray": True, "output": {"path"}}))


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the file and key."""


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict:
    """`["a.b=3", "c=[x, y]"]` -> `{"a.b": 3, "c": ["x", "y"]}` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. categories.composition.target_pairs=10")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_yaml_model(path: str | Path, model: type[BaseModel], overrides: dict | None = None):
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(path, e)) from None


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    return load_yaml_model(path, RunConfig, overrides)


class TrainData(Strict):
    paths: list[str] = Field(min_length=1, description="output directories of `pairforge run` (their pairs/)")
    categories: dict[str, float] | None = Field(
        None, description="categories to train on with their mixture weights (default: all, as stored)")
    min_agreement: float = Field(0.0, ge=0, le=1)
    min_confidence: float = Field(0.0, ge=0, le=1)
    resolution: int = Field(512, ge=16, description="images are resized and center-cropped to this square")

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v):
        for c, w in (v or {}).items():
            if c not in CATEGORIES:
                raise ValueError(f"unknown category {c!r} (known: {', '.join(CATEGORIES)})")
            if w <= 0:
                raise ValueError(f"category {c!r}: mixture weight must be > 0, got {w}")
        return v


class TrainConfig(Strict):
    name: str
    model: str = Field(description="diffusers pipeline to fine-tune: hub id, local path, or tiny:<name>")
    output: str = Field(description="directory for Ray Train results, checkpoints and metrics")
    data: TrainData
    loss: Literal["sigmoid", "poly"] = Field(
        "poly", description="sigmoid: Diffusion-DPO; poly: Poly-DPO, -log p + alpha (1 - p) (alpha 0 = DPO)")
    alpha: float = Field(0.0, description="Poly-DPO alpha: > 0 for noisy labels, < 0 for trivially easy pairs")
    beta: float = Field(500.0, gt=0, description="KL strength (ViPO: 500 for SD1.5/SD3.5/FLUX, 1000 SDXL)")
    learning_rate: float = Field(1e-6, gt=0)
    batch_size: int = Field(4, ge=1, description="pairs per worker per step")
    max_steps: int = Field(100, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = {"CPU": 1}
    ray: RayConfig = RayConfig()


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    return load_yaml_model(path, TrainConfig, overrides)
