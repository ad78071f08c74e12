"""Synthetic pairforge outputs for benchmarks: real Parquet shards of the real record schema
(`schemas.pair.pair_schema`, `undecided_schema`) with the images left null, written one shard at a time so
that any size fits in memory.

    from benchmarks.synthetic import write_synthetic_output
    files = write_synthetic_output(Path("/tmp/out"), 1_000_000)

What is real: the layout (`OUT/<kind>/<category>/part-<run>-<key>-<k>.parquet`, the names
`pipelines.store.shard_files` lists), the schemas and their Hugging Face metadata, one category per shard,
rows sorted by `pair_id` (as `ShardSink` writes them), zstd compression. What is not: `pair_id` and
`prompt_id` are seeded random hex strings of the real lengths (24 / 16) rather than hashes of a config, so
they are unique without a config to hash; each side's quality is drawn from N(mu, sigma^2) of its
generator (`generators`: name -> (mu, sigma)) and the better side wins, so an Arena fit has a truth to find;
the votes are a 3-judge panel in both orders that agrees with that outcome. Equal arguments write equal rows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.pair import GENERATOR, IMAGE_CATEGORIES, VOTE, pair_schema, undecided_schema

DEFAULT_GENERATORS = {"sd": (0.0, 0.6), "flux": (0.6, 0.4), "sd3": (0.3, 0.9)}
JUDGES = ("j1", "j2", "j3")
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def random_hex(rng: np.random.Generator, n: int, length: int) -> pa.Array:
    """`n` random lowercase hex strings of `length` characters (ids shaped like `schemas.pair.stable_hash`)."""
    digits = _HEX[rng.integers(0, 16, (n, length), dtype=np.uint8)]
    return pa.array(digits.view(f"S{length}").ravel()).cast(pa.string())


def _sides(rng: np.random.Generator, n: int, names: list[str], winner: np.ndarray, seeds: np.ndarray) -> pa.StructArray:
    return pa.StructArray.from_arrays([
        pa.array(np.asarray(names, object)[winner], pa.string()),
        pa.array(np.asarray([f"tiny:{g}" for g in names], object)[winner], pa.string()),
        pa.array(seeds, pa.int64()), pa.repeat(pa.scalar(4, pa.int32()), n), pa.repeat(pa.scalar(3.5, pa.float32()), n),
        pa.repeat("{}", n),
    ], fields=list(GENERATOR))


def _votes(rng: np.random.Generator, n: int, agree: np.ndarray) -> pa.ListArray:
    """Three judges in both orders; judge k < agree[i] picks the winner (shown as A in order AB, B in BA)."""
    judge = np.tile(np.repeat(np.arange(3), 2), n)
    ba = np.tile([False, True], 3 * n)
    for_winner = judge < np.repeat(agree, 6)
    choice = np.where(for_winner != ba, "A", "B")
    lp_chosen, lp_other = -rng.exponential(0.2, 6 * n), -1.0 - rng.exponential(1.0, 6 * n)
    structs = pa.StructArray.from_arrays([
        pa.array(np.asarray(JUDGES, object)[judge], pa.string()), pa.array(np.where(ba, "BA", "AB"), pa.string()),
        pa.array(choice, pa.string()), pa.array(np.where(choice == "A", lp_chosen, lp_other)),
        pa.array(np.where(choice == "B", lp_chosen, lp_other)), pa.nulls(6 * n, pa.string()),
    ], fields=list(VOTE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 6 * n + 1, 6, dtype=np.int32)), structs)


def synthetic_shard(rng: np.random.Generator, n: int, category: str, generators: dict[str, tuple[float, float]],
                    *, decided: bool = True, now: datetime | None = None) -> pa.Table:
    """One shard's rows: `n` pairs of `category` (decided: `pair_schema`, else `undecided_schema`), sorted by id."""
    names = list(generators)
    mu, sigma = np.array([generators[g] for g in names], np.float64).T
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    a_wins = rng.normal(mu[a], sigma[a]) >= rng.normal(mu[b], sigma[b])
    w, lo = np.where(a_wins, a, b), np.where(a_wins, b, a)
    seeds = rng.integers(0, 2**31 - 1, n)
    agree = rng.choice([2, 3], n, p=[0.3, 0.7])
    prompt_id = random_hex(rng, n, 16)
    now = now or datetime.now(timezone.utc)
    columns = {
        "pair_id": random_hex(rng, n, 24), "category": pa.repeat(category, n), "prompt_id": prompt_id,
        "prompt": pc.binary_join_element_wise(pa.repeat("a synthetic prompt #", n), prompt_id, ""),
        "prompt_source": pa.repeat("synthetic", n), "width": pa.repeat(pa.scalar(512, pa.int32()), n),
        "height": pa.repeat(pa.scalar(512, pa.int32()), n), "votes": _votes(rng, n, agree),
        "created_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
        "pipeline_version": pa.repeat("synthetic", n), "config_hash": pa.repeat("synthetic", n),
    }
    if decided:
        schema = pair_schema()
        columns.update(generator_w=_sides(rng, n, names, w, seeds), generator_l=_sides(rng, n, names, lo, seeds),
                       label_source=pa.repeat("vlm_panel", n), agreement=pa.array(agree / 3),
                       confidence=pa.array(0.5 + 0.5 * rng.random(n)))
    else:
        schema = undecided_schema()
        columns.update(generator_a=_sides(rng, n, names, a, seeds), generator_b=_sides(rng, n, names, b, seeds),
                       reason=pa.repeat("tie", n))
    table = pa.Table.from_arrays([columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema],
                                 schema=schema)
    return table.sort_by("pair_id")


def write_synthetic_output(out: Path, n_pairs: int, *, rows_per_file: int = 100_000,
                           categories: tuple[str, ...] = IMAGE_CATEGORIES,
                           generators: dict[str, tuple[float, float]] | None = None, seed: int = 0,
                           undecided_fraction: float = 0.0) -> list[Path]:
    """Write `n_pairs` decided pairs, split evenly over `categories`, and `undecided_fraction * n_pairs`
    undecided ones into `out` as shards of at most `rows_per_file` rows; return the files written.
    `generators` maps a generator name to (mu, sigma) of its output quality (default DEFAULT_GENERATORS,
    at least two). Existing files of the same names are overwritten: point it at an empty directory."""
    generators = generators or DEFAULT_GENERATORS
    if len(generators) < 2:
        raise ValueError("write_synthetic_output: needs at least two generators")
    out, now, files = Path(out), datetime.now(timezone.utc), []
    for kind, total in (("pairs", n_pairs), ("undecided", round(n_pairs * undecided_fraction))):
        for c, category in enumerate(categories):
            n_cat = total // len(categories) + (c < total % len(categories))
            for k, start in enumerate(range(0, n_cat, rows_per_file)):
                rng = np.random.default_rng([seed, kind == "pairs", c, k])
                table = synthetic_shard(rng, min(rows_per_file, n_cat - start), category, generators,
                                        decided=kind == "pairs", now=now)
                path = out / kind / category / f"part-synthetic{seed}-{k:05d}-000.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path, compression="zstd")
                files.append(path)
    return files
