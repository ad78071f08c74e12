"""Creating an annotation round: which pairs, which raters see them, in which order and on which side.

Sampling streams the shards' small columns (never the images) and keeps, per category, the `sample`
pairs with the smallest seeded hash of their id: the same output and seed give the same sample on any
machine, and no process holds more than `sample` rows per category.

Gold pairs carry a truth the pipeline constructed rather than judged: the label sources each category
declares as such (`Category.gold_sources`: alignment's construction, the image of the original prompt
over the image of the perturbed one; text_rendering's OCR decisions, one image reads the required text
exactly, the other does not). `gold` of them are shown to every rater, mixed into their queues, to measure each rater's accuracy.
"""

from __future__ import annotations

import heapq
import random
import secrets
from pathlib import Path

import pyarrow.parquet as pq

from schemas.annotate import AnnotateConfig
from schemas.category import is_gold
from schemas.pair import stable_hash


def _key(seed: int, salt: str, pair_id: str) -> int:
    return int(stable_hash("annotate", salt, seed, pair_id), 16)


def _smallest(heap: list, n: int, key: int, row: dict) -> None:
    """Keep the `n` rows with the smallest keys in a max-heap of (-key, pair_id, row)."""
    entry = (-key, row["pair_id"], row)
    if len(heap) < n:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


def sample_items(out: Path, cfg: AnnotateConfig) -> list[dict]:
    """The round's items (rows of db.items), sorted by pair id."""
    from pipelines.store import shard_files  # imports Ray: only when a round is created, not on resume

    per_category: dict[str, list] = {}
    gold_heap: list = []
    for kind in ("pairs", "undecided"):
        columns = ["pair_id", "category", "prompt"] + (["label_source", "confidence"] if kind == "pairs" else ["reason"])
        for shard in shard_files(out, kind):
            for row in pq.read_table(shard, columns=columns).to_pylist():
                source = row.get("label_source")
                truth = "A" if is_gold(row["category"], source) else None
                item = {"pair_id": row["pair_id"], "category": row["category"], "kind": kind,
                        "shard": str(shard.relative_to(out)), "prompt": row["prompt"] or "",
                        "label": "A" if kind == "pairs" else None, "label_source": source,
                        "confidence": row.get("confidence"), "reason": row.get("reason"), "truth": truth, "gold": False}
                heap = per_category.setdefault(row["category"], [])
                _smallest(heap, cfg.sample, _key(cfg.seed, "sample", row["pair_id"]), item)
                if truth and cfg.gold:
                    _smallest(gold_heap, cfg.gold, _key(cfg.seed, "gold", row["pair_id"]), item)
    chosen = {e[1]: e[2] for heap in per_category.values() for e in heap}
    for _, pair_id, item in gold_heap:
        chosen[pair_id] = {**item, "gold": True}
    return [chosen[k] for k in sorted(chosen)]


def assign(items: list[dict], cfg: AnnotateConfig) -> list[dict]:
    """Rows of db.assignments. Each non-gold item goes to `raters_per_pair` raters (all of them when
    there are fewer), the least loaded first, ties broken by the seeded draw; gold items go to
    everyone. Each rater's queue is shuffled, and the letter shown on the left drawn per rater and
    pair."""
    rng = random.Random(cfg.seed)
    k = min(cfg.raters_per_pair, len(cfg.raters))
    given: dict[str, list[str]] = {r: [] for r in cfg.raters}
    regular = [i["pair_id"] for i in items if not i["gold"]]
    rng.shuffle(regular)
    for pair_id in regular:
        order = sorted(cfg.raters, key=lambda r: (len(given[r]), rng.random()))
        for rater in order[:k]:
            given[rater].append(pair_id)
    for item in items:
        if item["gold"]:
            for rater in cfg.raters:
                given[rater].append(item["pair_id"])
    rows = []
    for rater in cfg.raters:
        queue = sorted(given[rater])
        rng.shuffle(queue)
        rows += [{"rater": rater, "pair_id": p, "position": n, "left": rng.choice("AB")} for n, p in enumerate(queue)]
    return rows


def new_tokens(raters: list[str]) -> dict[str, str]:
    """A random 128-bit URL-safe secret per rater (whoever has it can answer as that rater)."""
    return {r: secrets.token_urlsafe(16) for r in raters}
