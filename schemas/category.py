"""What a category is, and the registry of them.

A category is one object in one file: its name, media, what it needs from the run config, its own
config model, its rubric, its extra record fields and its `accepts` / `plan` / `label` steps. The
built-in ones live in `pipelines/categories/` (one module each); a new one is a `Category` subclass
passed to `register()` (see the README, "Adding a category, a worker kind or a backend").

Layering: this module is the bottom (schemas) half: it imports nothing from `pipelines` or `workers`.
The built-ins register themselves when `pipelines.categories` is imported, which `registered()` does
by name the first time the registry is read (the one place the registry discovers plugins, as an entry
point would), so the config schema, the rubric lookup, the record schema and the router all see the
same set, in the same order: built-ins first, then plugins in registration order.

Only the driver reads the registry. Ray workers get what they need from it passed in (the run's
category objects, the rubrics, the shard schemas), so a category defined in a notebook or a test
module, which workers cannot import, runs like a built-in one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

BUILTINS = "pipelines.categories"  # imported once, on first read of the registry; it registers the built-ins


class CascadeConfig(BaseModel):
    """A judge cascade (`categories.<name>.cascade`): the small panel labels every pair first; the category's
    `panel` (the large one) judges only the pairs the small panel escalates (rule: pipelines/cascade.py)."""

    model_config = ConfigDict(extra="forbid")

    panel: str = Field(description="the small panel (name in `panels`), run before the category's `panel`")
    escalate_below: float = Field(
        0.8, gt=0.5, le=1, description="a small-panel label whose confidence (the winner's probability) is below "
                                       "this goes to the large panel; so does every pair it leaves undecided")


class CategoryConfig(BaseModel):
    """The settings every category has (`categories.<name>` in the run config); a category that needs more
    subclasses this and names its subclass in `Category.config`."""

    model_config = ConfigDict(extra="forbid")

    target_pairs: int | None = Field(None, ge=1, description="stop once this many pairs exist in the output")
    sources: list[str] | None = Field(
        None, description="prompt sources routed here (default: prompts whose category hint names this category)")
    generators: list[str] = Field(min_length=1, description="as many as the category needs (`Category.generators`): "
                                                            "two for A-vs-B categories, one with existing_images")
    panel: str | None = Field(None, description="the VLM panel that labels the category's pairs (name in `panels`)")
    cascade: CascadeConfig | None = Field(
        None, description="a first panel of small judges; `panel` sees only the pairs it is unsure of "
                          "(pipelines/cascade.py)")
    score_judges: list[str] = Field([], description="judges that also give each image of a pair a 1-10 score "
                                                    "distribution by the category's rubric (stored in `scores`)")
    rewards: list[str] = []
    existing_images: bool = Field(False, description="side A is the prompt's existing image (sources with image_field)")
    best_of_n: int | None = Field(None, ge=2, description="A-vs-B categories: draw N images per prompt (round-robin "
                                                          "over the generators) and pick the pair by the rewards: "
                                                          "best vs worst, or CaPO calibration + Pareto fronts")


class DerivedConfig(CategoryConfig):
    """Categories that plan from decided image pairs (`Category.derived`) rather than prompts."""

    parents_from: str | None = Field(
        None, description="output directory whose pairs/ this category builds on (default: this run's output; its "
                          "image categories run first, in the same `pairforge run`)")


@dataclass(frozen=True)
class Label:
    """A category's decision on one finished pair."""

    winner: str | None            # "a" | "b" | None (undecided)
    source: str                   # label_source of the record
    reason: str | None = None     # why undecided
    agreement: float | None = None
    confidence: float | None = None
    decided_by: str | None = None  # panel labels: "cascade:small" | "panel" (the record's `decided_by`)
    cascade_small: dict | None = None  # a cascade's small-panel verdict, sides "a" / "b" (the record's `cascade_small`)


class Category:
    """One kind of preference pair. Class attributes say what it is and needs (checked when the run config
    is validated); the three methods are its steps in the run:

    - `accepts(row, cfg)`: whether a routed prompt (a dict with prompt, prompt_id, prompt_source,
      category_hint, source_image) suits it (its prompt filter);
    - `plan(batch, cfg)`: a numpy batch of its prompts -> a pyarrow table of work rows (pair specs),
      usually via `pipelines.records.plan_table`;
    - `label(row, cfg)`: one finished work row -> a `Label`; the shared record builder turns it into a
      pair or undecided record, filling the category's `record_fields` from `record_values(row, sides, cfg)`.

    A `derived` category (the video categories that animate image pairs) takes no prompts: its `plan` gets
    batches of decided pair records of `parent_categories(cfg)`, read from `parents_from` (its config, a
    `DerivedConfig`) or from the run's own output after the run's other categories are done.
    """

    name: ClassVar[str]
    media: ClassVar[Literal["image", "video"]] = "image"
    config: ClassVar[type[CategoryConfig]] = CategoryConfig
    rubric: ClassVar[str]                     # the judges' criterion ("Judge X only: ..."), pairwise and score mode
    generators: ClassVar[tuple[int, int | None]] = (2, 2)  # (min, max) generators; max None = a pool
    existing_images: ClassVar[bool] = False   # side A may be the prompt's existing image (then 1 generator)
    best_of_n: ClassVar[bool] = False         # may draw N images and let the rewards pick the pair
    required: ClassVar[tuple[str, ...]] = ()  # config fields it cannot do without (panel may give way to best_of_n)
    record_fields: ClassVar[tuple[tuple[str, pa.DataType], ...]] = ()  # extra shard columns, null elsewhere
    prompt_filter: ClassVar[str] = ""         # what `accepts` wants, in a few words (for the "nothing to do" line)
    derived: ClassVar[bool] = False           # plans from decided image pairs, not prompts (see above)
    gold_sources: ClassVar[tuple[str, ...]] = ()  # label sources whose winner is constructed truth (annotation gold)

    def accepts(self, row: dict, cfg) -> bool:
        return True

    def plan(self, batch: dict, cfg) -> pa.Table:
        raise NotImplementedError

    def label(self, row: dict, cfg) -> Label:
        raise NotImplementedError

    def wants_panel(self, row: dict) -> bool:
        """Whether the panel still votes on a work row that reaches the judges (`row`: its columns but the
        media, after the pools before the judges). False when those pools' results already decide the
        pair, as text_rendering's OCR may: the category decides, the pools only read and score."""
        return True

    def parent_categories(self, cfg) -> list[str]:
        """A derived category: the categories whose decided pairs it plans from."""
        return []

    def record_values(self, row: dict, sides: dict[str, str], cfg) -> dict:
        """The values of `record_fields` for one record; `sides` maps the record's side tags to the work
        row's ("w"/"l" -> "a"/"b" in pairs, "a"/"b" -> themselves in undecided records); `cfg` the run's."""
        return {}

    @property
    def score_rubric(self) -> str:
        return score_rubric(self.rubric)


def score_rubric(rubric: str) -> str:
    """The score-mode wording of a pairwise rubric ("Judge X only" -> "Rate X only")."""
    return rubric.replace("Judge ", "Rate ", 1)


_REGISTRY: dict[str, Category] = {}
_builtins_loaded = False


def register(category: Category) -> Category:
    """Add a category (an instance); its name must be new. Returns it, so a module can write
    `register(MyCategory())` at top level."""
    registered()  # built-ins first, whatever imports first
    if not getattr(category, "name", None):
        raise ValueError(f"{type(category).__name__}: a category needs a `name`")
    if category.name in _REGISTRY and type(_REGISTRY[category.name]) is not type(category):
        raise ValueError(f"category {category.name!r} is already registered ({type(_REGISTRY[category.name]).__name__})")
    _REGISTRY[category.name] = category
    return category


def unregister(name: str) -> None:
    """Remove a category (tests and notebooks: the record schemas follow the registry)."""
    registered().pop(name, None)


def registered() -> dict[str, Category]:
    """Every registered category by name: the built-ins, then plugins in registration order."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # before the import: the built-ins' own register() calls come back here
        try:
            importlib.import_module(BUILTINS)
        except BaseException:
            _builtins_loaded = False
            raise
    return _REGISTRY


def is_gold(category: str, label_source: str | None) -> bool:
    """Whether a pair of `category` labelled by `label_source` has a constructed truth (the category's
    `gold_sources`); a category this session has not registered has none."""
    known = registered().get(category)
    return known is not None and label_source in known.gold_sources


def get_category(name: str) -> Category:
    known = registered()
    if name not in known:
        raise ValueError(f"unknown category {name!r} (known: {', '.join(known)})")
    return known[name]
