"""The output directory: atomic shard writes, resume by pair id, and the manifest.

Layout of OUT:
    pairs/<category>/part-<run>-<task>-<k>.parquet      decided pairs (schemas.pair.pair_schema)
    undecided/<category>/part-....parquet               pairs the labeler left undecided (undecided_schema)
    errors/<category>/part-....parquet                  rows that could not be generated (retried next run)
    rejects/prompts.parquet                             rejected prompts with file, line and reason
    manifest.json                                       counts, file checksums, runs with resolved configs
    marker_nonce                                        the nonce of the judges' data markers (workers/rubrics.py)
    stats.json                                          the stats report

The shards are the source of truth for resume: a re-run reads the `pair_id` column of `pairs/` and
`undecided/` and skips those ids. A shard is written under a dot-prefixed temporary name and renamed
into place when complete, so a killed run leaves no partial shard visible (readers skip dot-files),
and a written shard is never opened for writing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from schemas.pair import pair_schema, undecided_schema

KINDS = ("pairs", "undecided", "errors")
RESUME_KINDS = ("pairs", "undecided")
TMP_PREFIX = ".tmp-"

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
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_run_id() -> str:
    """Sortable, and free of '-' so it can be read back out of a shard's name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "_" + uuid.uuid4().hex[:6]


def run_id_of(shard: Path) -> str:
    return shard.name.split("-")[1]


def shard_files(out: Path, kind: str, category: str | None = None) -> list[Path]:
    base = out / kind
    pattern = f"{category}/*.parquet" if category else "*/*.parquet"
    return sorted(p for p in base.glob(pattern) if not p.name.startswith("."))


class ShardSink(Datasink):
    """Writes each write task's rows into `<out>/<kind>/<category>/` shards of at most `rows_per_file`
    rows, cast to the kind's schema; the `_kind` column routes a row. Returns one entry per file."""

    def __init__(self, out: str | Path, run_id: str, rows_per_file: int):
        self.out, self.run_id, self.rows_per_file = Path(out), run_id, rows_per_file
        self.written: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> list[dict]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables, promote_options="permissive")
        task = f"{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}"
        entries = []
        for kind in KINDS:
            schema = schema_for(kind)
            of_kind = table.filter(pa.compute.equal(table["_kind"], kind))
            if not of_kind.num_rows:
                continue
            for category in sorted(set(of_kind["category"].to_pylist())):
                rows = of_kind.filter(pa.compute.equal(of_kind["category"], category))
                rows = rows.select(schema.names).cast(schema)
                for k, start in enumerate(range(0, rows.num_rows, self.rows_per_file)):
                    part = rows.slice(start, self.rows_per_file)
                    path = self.out / kind / category / f"part-{self.run_id}-{task}-{k:03d}.parquet"
                    write_table_atomic(part, path)
                    entries.append({"path": str(path.relative_to(self.out)), "kind": kind, "category": category,
                                    "rows": part.num_rows, "bytes": path.stat().st_size,
                                    "sha256": sha256_file(path), "run_id": self.run_id})
        return entries

    def on_write_complete(self, write_result) -> None:
        self.written = [e for task_entries in write_result.write_returns for e in task_entries]


class OutputStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def prepare(self) -> None:
        """Create the layout and remove temporary files a killed run left behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (self.path / kind).mkdir(exist_ok=True)
        for tmp in self.path.rglob(f"{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)

    def marker_nonce(self) -> str:
        """The nonce of the judges' data markers for this output: drawn on first use and kept in
        OUT/marker_nonce, so every run that resumes the output shows the judges the same prompt."""
        from workers.rubrics import new_nonce

        path = self.path / "marker_nonce"
        if not path.exists():
            write_atomic(path, new_nonce().encode())
        return path.read_text().strip()

    def done_pair_ids(self) -> set[str]:
        """Ids of every pair already written (decided or undecided), read column-wise, file by file."""
        done: set[str] = set()
        for kind in RESUME_KINDS:
            for f in shard_files(self.path, kind):
                done.update(pq.read_table(f, columns=["pair_id"]).column("pair_id").to_pylist())
        return done

    def decided_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in shard_files(self.path, "pairs"):
            counts[f.parent.name] = counts.get(f.parent.name, 0) + pq.ParquetFile(f).metadata.num_rows
        return counts

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
                entry = known.get(rel)
                if entry is None:
                    entry = {"path": rel, "kind": kind, "category": f.parent.name,
                             "rows": pq.ParquetFile(f).metadata.num_rows, "bytes": f.stat().st_size,
                             "sha256": sha256_file(f), "run_id": run_id_of(f)}
                files.append(entry)
        counts: dict[str, dict[str, int]] = {}
        for e in files:
            counts.setdefault(e["category"], {k: 0 for k in KINDS})[e["kind"]] += e["rows"]
        manifest.update(format="pairforge-shards/1", updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        counts=counts, files=files)
        manifest["runs"].append(run)
        write_atomic(self.manifest_path(), json.dumps(manifest, indent=1).encode())
        return manifest
