"""The output directory: idempotent shard publication, resume by pair id, and the manifest.

Layout of OUT:
    pairs/<category>/part-<run>-<task>-<k>.parquet      decided pairs (schemas.pair.pair_schema)
    undecided/<category>/part-....parquet               pairs the labeler left undecided (undecided_schema)
    errors/<category>/part-....parquet                  rows that could not be generated (retried next run)
    rejects/prompts.parquet                             rejected prompts with file, line and reason
    manifest.json                                       counts, file checksums, runs with resolved configs
    marker_nonce                                        the nonce of the judges' data markers (workers/rubrics.py)
    stats.json                                          the stats report
    .lease.json                                         the running run's lease (pipelines/lease.py)

The shards are the source of truth for resume: a re-run anti-joins its planned pairs with the `pair_id`s
of `pairs/` and `undecided/` (a Ray Data join, so no process holds all the ids) and plans the rest.

Exactly once: a shard is written under a temporary dot-name and published with a no-overwrite link
(workers/publish.py), so no partial shard is ever visible and a published shard is never written again.
Its name is deterministic: `<task>` is a hash of the ids of the write task's input rows, `<k>` counts
that task's shards per kind and category. Ray retries a write task whose worker died (`max_retries=-1`,
with the same input blocks); the retry finds the shards its earlier attempt published, leaves their rows
out, and publishes the rest under the next names, so every row lands exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from schemas.pair import pair_schema, undecided_schema
from workers.publish import TMP_PREFIX, owned_temps, publish_atomically, remove

KINDS = ("pairs", "undecided", "errors")
RESUME_KINDS = ("pairs", "undecided")
OWNER = "store"
# Done ids per partition of the resume anti-join: ~70 MB of ids in one join worker.
DONE_IDS_PER_PARTITION = 1_000_000

ERROR_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("category", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()),
    ("error", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")), ("config_hash", pa.string()),
])


def schema_for(kind: str) -> pa.Schema:
    return {"pairs": pair_schema, "undecided": undecided_schema, "errors": lambda: ERROR_SCHEMA}[kind]()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step (for files meant to be replaced: manifest, stats)."""
    publish_atomically(path, OWNER, lambda tmp: tmp.write_bytes(data), replace=True)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    publish_atomically(path, OWNER, lambda tmp: pq.write_table(table, tmp, compression="zstd"), replace=True)


def new_run_id() -> str:
    """Sortable, and free of '-' so it can be read back out of a shard's name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "_" + uuid.uuid4().hex[:6]


def run_id_of(shard: Path) -> str:
    return shard.name.split("-")[1]


def shard_files(out: Path, kind: str, category: str | None = None) -> list[Path]:
    base = out / kind
    pattern = f"{category}/*.parquet" if category else "*/*.parquet"
    return sorted(p for p in base.glob(pattern) if not p.name.startswith("."))


def task_key(pair_ids: pa.ChunkedArray) -> str:
    """A write task's name: a hash of its input rows' ids, the same for every attempt of the task."""
    h = hashlib.sha256()
    for pid in sorted(pair_ids.to_pylist()):
        h.update(pid.encode() + b"\n")
    return h.hexdigest()[:16]


def shard_entry(out: Path, path: Path, kind: str, run_id: str) -> dict:
    return {"path": str(path.relative_to(out)), "kind": kind, "category": path.parent.name,
            "rows": pq.ParquetFile(path).metadata.num_rows, "bytes": path.stat().st_size,
            "sha256": sha256_file(path), "run_id": run_id}


class ShardSink(Datasink):
    """Writes each write task's rows into `<out>/<kind>/<category>/` shards of at most `rows_per_file`
    rows, sorted by pair_id and cast to the kind's schema; the `_kind` column routes a row. Idempotent
    under task retries (see the module docstring). Returns one entry per shard of the task."""

    def __init__(self, out: str | Path, run_id: str, rows_per_file: int):
        self.out, self.run_id, self.rows_per_file = Path(out), run_id, rows_per_file
        # Built here, on the driver: the record schemas follow the registered categories, and a write
        # task's registry may lack one registered only in the driver's session.
        self.schemas = {kind: schema_for(kind) for kind in KINDS}
        self.written: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def shard_path(self, kind: str, category: str, task: str, k: int) -> Path:
        return self.out / kind / category / f"part-{self.run_id}-{task}-{k:03d}.parquet"

    def publish(self, part: pa.Table, path: Path) -> None:
        """Publish one shard; a name already taken holds the same rows (same task, same part)."""
        publish_atomically(path, OWNER, lambda tmp: pq.write_table(part, tmp, compression="zstd"))

    def write(self, blocks: Iterable, ctx) -> list[dict]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables, promote_options="permissive")
        task = task_key(table["pair_id"])
        categories = sorted(set(table["category"].to_pylist()))
        # Shards an earlier attempt of this task published: keep them, leave their rows out (in any kind,
        # so a row whose kind differs on the retry is not written twice).
        entries, next_k = [], {}
        for kind in KINDS:
            for category in categories:
                k = 0
                while (path := self.shard_path(kind, category, task, k)).exists():
                    entries.append(shard_entry(self.out, path, kind, self.run_id))
                    k += 1
                next_k[kind, category] = k
        if entries:
            done = pa.concat_arrays([pq.read_table(self.out / e["path"], columns=["pair_id"])["pair_id"].combine_chunks()
                                     for e in entries])
            table = table.filter(pc.invert(pc.is_in(table["pair_id"], value_set=done)))
        for kind in KINDS:
            schema = self.schemas[kind]
            of_kind = table.filter(pc.equal(table["_kind"], kind))
            for category in sorted(set(of_kind["category"].to_pylist())):
                rows = of_kind.filter(pc.equal(of_kind["category"], category))
                rows = rows.select(schema.names).cast(schema).sort_by("pair_id")
                for k, start in enumerate(range(0, rows.num_rows, self.rows_per_file), start=next_k[kind, category]):
                    path = self.shard_path(kind, category, task, k)
                    self.publish(rows.slice(start, self.rows_per_file), path)
                    entries.append(shard_entry(self.out, path, kind, self.run_id))
        return entries

    def on_write_complete(self, write_result) -> None:
        self.written = [e for task_entries in write_result.write_returns for e in task_entries]


class OutputStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def prepare(self) -> None:
        """Create the layout and remove the temporary files of the store's earlier writers (call it
        holding the lease: an in-flight writer's temporaries look the same)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (self.path / kind).mkdir(exist_ok=True)
        self.remove_temps()

    def marker_nonce(self) -> str:
        """The nonce of the judges' data markers for this output: drawn on first use and kept in
        OUT/marker_nonce, so every run that resumes the output shows the judges the same prompt."""
        from workers.rubrics import new_nonce

        path = self.path / "marker_nonce"
        if not path.exists():
            write_atomic(path, new_nonce().encode())
        return path.read_text().strip()

    def remove_temps(self) -> None:
        """The store's temporaries only: any `.tmp-*` file in the directories it alone writes (the shard
        directories and rejects/), and its own tagged ones in OUT (manifest, stats). Whatever else lives
        in OUT (the latent cache, a user's dot-files) is left alone."""
        for tmp in owned_temps(self.path, OWNER):
            remove(tmp)
        owned = [self.path / "rejects", *(d for kind in KINDS for d in (self.path / kind).glob("*/") if d.is_dir())]
        for directory in owned:
            for tmp in directory.glob(f"{TMP_PREFIX}*"):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)

    def row_counts(self, kind: str) -> dict[str, int]:
        """Rows per category of `kind`, from the shards' Parquet footers (no rows are read)."""
        counts: dict[str, int] = {}
        for f in shard_files(self.path, kind):
            counts[f.parent.name] = counts.get(f.parent.name, 0) + pq.ParquetFile(f).metadata.num_rows
        return counts

    def decided_counts(self) -> dict[str, int]:
        return self.row_counts("pairs")

    def not_done(self, planned, categories: list[str], done_rows: int):
        """The rows of the Ray Dataset `planned` whose `pair_id` no `pairs/` or `undecided/` shard of
        `categories` holds: a streaming left anti-join with the ids on disk, hash-partitioned so that no
        process holds more than about DONE_IDS_PER_PARTITION of them. `done_rows` (from `row_counts`)
        sizes the partitions. The result has `planned`'s columns; types may widen (string ->
        large_string) on the way through the join."""
        import ray

        files = [str(f) for kind in RESUME_KINDS for c in categories for f in shard_files(self.path, kind, c)]
        if not files:
            return planned
        done = ray.data.read_parquet(files, columns=["pair_id"])
        return planned.join(done, join_type="left_anti", on=("pair_id",),
                            num_partitions=max(1, math.ceil(done_rows / DONE_IDS_PER_PARTITION)))

    def write_rejects(self, table: pa.Table | None) -> None:
        """Replace the rejects file (it is derived from the prompt sources, so each run rewrites it)."""
        path = self.path / "rejects" / "prompts.parquet"
        if table is None:
            path.unlink(missing_ok=True)
        else:
            write_table_atomic(table, path)

    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def load_manifest(self) -> dict:
        p = self.manifest_path()
        return json.loads(p.read_text()) if p.exists() else {"files": [], "runs": []}

    def update_manifest(self, run: dict) -> dict:
        """Re-list every shard on disk (a run that died after renaming shards but before this point
        is picked up here), reuse known checksums, count rows per category, append `run`."""
        manifest = self.load_manifest()
        known = {e["path"]: e for e in manifest["files"]}
        files = []
        for kind in KINDS:
            for f in shard_files(self.path, kind):
                rel = str(f.relative_to(self.path))
                files.append(known.get(rel) or shard_entry(self.path, f, kind, run_id_of(f)))
        counts: dict[str, dict[str, int]] = {}
        for e in files:
            counts.setdefault(e["category"], {k: 0 for k in KINDS})[e["kind"]] += e["rows"]
        manifest.update(format="pairforge-shards/1", updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        counts=counts, files=files)
        manifest["runs"].append(run)
        write_atomic(self.manifest_path(), json.dumps(manifest, indent=1).encode())
        return manifest
