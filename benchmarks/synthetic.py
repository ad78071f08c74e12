"""Synthetic pairforge outputs for benchmarks: real Parquet shards of the real record schemas
(`schemas.pair.pair_schema` / `undecided_schema`) with the images left null, written one file at a time
so that any size fits in memory.

    from benchmarks.synthetic import write_synthetic_output
    write_synthetic_output(Path("/tmp/out"), 1_000_000)

What is real and what is not:
- Layout: `OUT/pairs/<category>/part-<run>-<task>-<k>.parquet` (and `OUT/undecided/...` when asked for),
  the names `pipelines.store.shard_files` lists; one category per file, as `ShardSink` writes them.
- `pair_id` / `prompt_id`: 24 / 16 hex characters like `make_pair_id` / `make_prompt_id`, but random (seeded)
  rather than hashes of a config, so they are unique without a config to hash. Equal seeds give equal ids.
- Outcomes follow the Arena's generative model: each side's quality q ~ N(mu_g, sigma_g^2) from
  `generators` (name -> (mu, sigma)) and the higher quality wins, so a fit has a known truth to find.
  A generator named "existing" stands for a prompt's existing image (its record names the prompt source,
  as `pipelines.records.generator_record` writes it).
- Labels per category as the recipes write them: `alignment` pairs one generator with itself
  (`construction`, agreement and confidence 1); `text_rendering` is `ocr` (agreement 1, no confidence);
  every other category is a 3-judge `vlm_panel` with both orders' votes (2 or 3 judges for the winner,
  some position flips and abstentions), agreement and a confidence in [0.5, 1).
- `rewards` (two models, scores that mostly agree with the label) and `votes` can be turned off to
  write lighter files; candidates, OCR reads and images are always null.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.pair import CATEGORIES, IMAGE_CATEGORIES, UNDECIDED_REASONS, pair_schema, undecided_schema

DEFAULT_GENERATORS = {"sd": (0.0, 0.6), "flux": (0.6, 0.4), "sd3": (0.3, 0.9), "existing": (-0.3, 0.7)}
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_CREATED = datetime(2025, 1, 1, tzinfo=timezone.utc)  # fixed, so that equal arguments write equal files


def _hex_ids(rng: np.random.Generator, n: int, length: int) -> pa.Array:
    digits = _HEX[rng.integers(0, 16, (n, length), dtype=np.uint8)]
    return pa.array(digits.view(f"S{length}").ravel()).cast(pa.string())


def _generators(names: np.ndarray, seeds: np.ndarray, generators: list[str], source: str) -> pa.StructArray:
    existing = np.array([g == "existing" for g in generators])[names]

    def column(values, dtype):
        return pa.array(np.asarray(values)[names], dtype)

    return pa.StructArray.from_arrays([
        column(generators, pa.string()),
        column([source if g == "existing" else f"tiny:{g}" for g in generators], pa.string()),
        pa.array(np.where(existing, 0, seeds), pa.int64()),
        pa.array(np.where(existing, 0, 4), pa.int32()),
        pa.array(np.where(existing, 0.0, 3.5), pa.float32()),
        pa.array(np.full(len(names), "{}", object), pa.string()),
    ], fields=list(pair_schema().field("generator_w").type))


def _votes(rng: np.random.Generator, n: int, a_is_winner: np.ndarray, n_agree: np.ndarray) -> pa.ListArray:
    """3 judges x 2 orders per pair: judge k < n_agree picks the winner; some follow the position, a few abstain."""
    judge = np.repeat(np.arange(3), 2)[None, :].repeat(n, 0)
    order_ba = np.tile([False, True], 3)[None, :].repeat(n, 0)
    picks_a = (judge < n_agree[:, None]) == a_is_winner[:, None]
    letter_b = picks_a == order_ba                     # in order BA image a is shown second, as "B"
    follows_position = (rng.random((n, 3)) < 0.1).repeat(2, 1) & order_ba
    letter_b = np.where(follows_position, ~letter_b, letter_b)
    abstain = rng.random((n, 6)) < 0.02
    choice = np.where(abstain, 2, letter_b.astype(np.int8)).ravel()
    lp_chosen, lp_other = -rng.exponential(0.2, 6 * n), -1.0 - rng.exponential(1.0, 6 * n)
    lp_a = np.where(choice == 0, lp_chosen, lp_other)
    lp_b = np.where(choice == 0, lp_other, lp_chosen)
    mask = choice == 2
    structs = pa.StructArray.from_arrays([
        pa.array(np.array(["j1", "j2", "j3"])[judge.ravel()]), pa.array(np.array(["AB", "BA"])[order_ba.ravel().astype(int)]),
        pa.array(np.array(["A", "B", None], object)[choice], pa.string()),
        pa.array(lp_a, mask=mask), pa.array(lp_b, mask=mask), pa.nulls(6 * n, pa.string()),
    ], fields=list(pair_schema().field("votes").type.value_type))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 6 * n + 1, 6, dtype=np.int32)), structs)


def _table(schema: pa.Schema, n: int, columns: dict) -> pa.Table:
    return pa.Table.from_arrays([columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema],
                                schema=schema)


def _shard(rng: np.random.Generator, n: int, category: str, generators: dict[str, tuple[float, float]],
           *, decided: bool, votes: bool, rewards: bool, source: str) -> pa.Table:
    names = list(generators)
    mu, sigma = np.array([generators[g] for g in names], np.float64).T
    own = np.array([i for i, g in enumerate(names) if g != "existing"])
    pool = np.arange(len(names)) if category in ("aesthetics", "human_quality") else own
    if category == "alignment":            # one generator, original vs perturbed prompt
        first = second = own[rng.integers(0, len(own), n)]
    else:
        first = pool[rng.integers(0, len(pool), n)]
        second = pool[(np.searchsorted(pool, first) + rng.integers(1, len(pool), n)) % len(pool)]
    q1, q2 = rng.normal(mu[first], sigma[first]), rng.normal(mu[second], sigma[second])
    w, lo = np.where(q1 >= q2, first, second), np.where(q1 >= q2, second, first)
    seeds = rng.integers(0, 2**31 - 1, n)
    prompt_id = _hex_ids(rng, n, 16)
    panel = category not in ("alignment", "text_rendering")
    n_agree = np.where(rng.random(n) < 0.3, 2, 3)
    a_is_winner = rng.random(n) < 0.5
    columns = {
        "pair_id": _hex_ids(rng, n, 24), "category": pa.repeat(category, n), "prompt_id": prompt_id,
        "prompt": pc.binary_join_element_wise(pa.repeat("a synthetic prompt #", n), prompt_id, ""),
        "prompt_source": pa.repeat(source, n), "created_at": pa.repeat(pa.scalar(_CREATED, pa.timestamp("us", tz="UTC")), n),
        "pipeline_version": pa.repeat("synthetic", n), "config_hash": pa.repeat("synthetic", n),
        "width": pa.repeat(pa.scalar(512, pa.int32()), n), "height": pa.repeat(pa.scalar(512, pa.int32()), n),
    }
    if panel and votes:
        columns["votes"] = _votes(rng, n, a_is_winner, n_agree if decided else rng.integers(0, 2, n))
    else:
        columns["votes"] = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)),
                                                    pa.array([], pair_schema().field("votes").type.value_type))
    if not decided:
        a, b = np.where(a_is_winner, w, lo), np.where(a_is_winner, lo, w)
        columns.update(generator_a=_generators(a, seeds, names, source), generator_b=_generators(b, seeds, names, source),
                       reason=pa.array(np.array(UNDECIDED_REASONS)[rng.integers(0, len(UNDECIDED_REASONS), n)]))
        return _table(undecided_schema(), n, columns)
    columns.update(generator_w=_generators(w, seeds, names, source), generator_l=_generators(lo, seeds, names, source))
    if category == "alignment":
        columns.update(label_source=pa.repeat("construction", n), agreement=pa.repeat(1.0, n), confidence=pa.repeat(1.0, n),
                       prompt_l=pc.binary_join_element_wise(columns["prompt"], pa.repeat(", at night", n), ""),
                       edit_dimensions=pa.array([["time"]] * n, pa.list_(pa.string())))
    elif category == "text_rendering":
        columns.update(label_source=pa.repeat("ocr", n), agreement=pa.repeat(1.0, n),
                       required_text=pa.array([["OPEN"]] * n, pa.list_(pa.string())))
    else:
        columns.update(label_source=pa.repeat("vlm_panel", n), agreement=pa.array(n_agree / 3),
                       confidence=pa.array(0.5 + 0.5 * rng.random(n)))
    if rewards:
        k = 2
        scores = rng.normal(0, 1, (n, k, 2)) + np.array([0.5, 0.0])   # the winner's score is higher on average
        structs = pa.StructArray.from_arrays(
            [pa.array(np.tile(["clip", "pickscore"], n)), pa.array(scores[..., 0].ravel()), pa.array(scores[..., 1].ravel()),
             pa.nulls(k * n, pa.float64()), pa.nulls(k * n, pa.float64())],
            fields=list(pair_schema().field("rewards").type.value_type))
        columns["rewards"] = pa.ListArray.from_arrays(pa.array(np.arange(0, k * n + 1, k, dtype=np.int32)), structs)
        diff = scores[..., 0] - scores[..., 1]
        columns["reward_consistent"] = pa.array((diff > 0).all(1) | (diff < 0).all(1))
    return _table(pair_schema(), n, columns)


def write_synthetic_output(out: Path, n_pairs: int, *, rows_per_file: int = 100_000,
                           categories: tuple[str, ...] = IMAGE_CATEGORIES,
                           generators: dict[str, tuple[float, float]] | None = None, seed: int = 0,
                           undecided_fraction: float = 0.0, votes: bool = True, rewards: bool = True,
                           source: str = "synthetic") -> list[Path]:
    """Write `n_pairs` decided pairs (split evenly over `categories`) and `undecided_fraction * n_pairs`
    undecided ones into OUT as shards of at most `rows_per_file` rows (a run's default is 1,000: pass that
    for a realistic number of files); returns the files written. `generators` maps a name to the
    (mu, sigma) of its output quality (default DEFAULT_GENERATORS; at least two that are not "existing").
    The same arguments write the same files."""
    generators = generators or DEFAULT_GENERATORS
    if sum(g != "existing" for g in generators) < 2 or any(c not in CATEGORIES for c in categories):
        raise ValueError("write_synthetic_output: needs >= 2 generators besides 'existing' and known categories")
    out, files = Path(out), []
    for kind, total in (("pairs", n_pairs), ("undecided", round(n_pairs * undecided_fraction))):
        for c, category in enumerate(categories):
            n_cat = total // len(categories) + (c < total % len(categories))
            for k, start in enumerate(range(0, n_cat, rows_per_file)):
                rng = np.random.default_rng([seed, kind == "pairs", c, k])
                table = _shard(rng, min(rows_per_file, n_cat - start), category, generators, decided=kind == "pairs",
                               votes=votes, rewards=rewards, source=source)
                path = out / kind / category / f"part-synthetic{seed}-{k:05d}-000.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path, compression="zstd")
                files.append(path)
    return files
