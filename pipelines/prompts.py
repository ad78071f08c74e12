"""Prompt sources -> normalised, filtered, deduplicated prompts routed to categories (a Ray Dataset).

Every input line is accounted for: it becomes a kept prompt, or a reject with its file, line and
reason (malformed JSON, missing field, empty, too short/long, duplicate); blank lines are skipped. Rejects are written to
`OUT/rejects/prompts.parquet` on every run.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource
from ray.data.expressions import col

from schemas.config import PromptFilters, PromptSource, RunConfig
from schemas.pair import make_prompt_id, stable_hash

RAW_COLUMNS = ("file", "line", "text", "category_hint", "error")
_BLOCK_ROWS = 8192


class PromptLinesDatasource(FileBasedDatasource):
    """JSONL (one object per line) or plain-text (one prompt per line) files, streamed in blocks with
    the file and 1-based line number of every row, so a bad line can be reported where it is."""

    _FILE_EXTENSIONS = None

    def __init__(self, paths, *, fmt: str, text_field: str, category_field: str | None, **kwargs):
        super().__init__(paths, **kwargs)
        self.fmt, self.text_field, self.category_field = fmt, text_field, category_field

    def _parse(self, raw: bytes) -> tuple[object, object, str | None]:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, None, f"invalid_utf8: {e.reason} at byte {e.start}"
        if self.fmt == "txt":
            return line, None, None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            return None, None, f"malformed_json: {e.msg} (column {e.colno})"
        if not isinstance(obj, dict):
            return None, None, f"malformed_json: expected an object, got {type(obj).__name__}"
        if self.text_field not in obj:
            return None, None, f"missing_field: {self.text_field!r}"
        hint = obj.get(self.category_field) if self.category_field else None
        return obj[self.text_field], hint, None

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: dict[str, list] = {c: [] for c in RAW_COLUMNS}

        def flush():
            table = pa.table({
                "file": pa.array(rows["file"], pa.string()), "line": pa.array(rows["line"], pa.int64()),
                "text": pa.array(rows["text"], pa.string()),
                "category_hint": pa.array(rows["category_hint"], pa.string()),
                "error": pa.array(rows["error"], pa.string())})
            for c in rows.values():
                c.clear()
            return table

        def lines() -> Iterator[bytes]:
            buf = b""
            while chunk := f.read(1 << 22):
                *complete, buf = (buf + chunk).split(b"\n")
                yield from complete
            if buf:
                yield buf

        for lineno, raw in enumerate(lines(), start=1):
            raw = raw.rstrip(b"\r")
            if not raw.strip():
                continue  # blank lines separate nothing in JSONL or text; they are not prompts
            text, hint, error = self._parse(raw)
            if text is not None and not isinstance(text, str):
                text, error = None, f"not_text: {self.text_field!r} is {type(text).__name__}"
            rows["file"].append(path)
            rows["line"].append(lineno)
            rows["text"].append(text)
            rows["category_hint"].append(hint if isinstance(hint, str) else None)
            rows["error"].append(error)
            if len(rows["file"]) >= _BLOCK_ROWS:
                yield flush()
        if rows["file"]:
            yield flush()


def read_source(src: PromptSource):
    import ray

    fmt = src.format
    if fmt == "auto":
        suffix = src.path.rsplit(".", 1)[-1].lower()
        fmt = {"jsonl": "jsonl", "json": "jsonl", "txt": "txt", "parquet": "parquet"}.get(suffix)
        if fmt is None:
            raise ValueError(f"prompts: cannot tell the format of {src.path!r} from its suffix; "
                             "set format: jsonl | txt | parquet")
    if fmt == "parquet":
        cols = [src.text_field] + ([src.category_field] if src.category_field else [])
        ds = ray.data.read_parquet(src.path, columns=cols, include_paths=True)

        def to_raw(batch: pa.Table) -> pa.Table:
            n = batch.num_rows
            hint = batch.column(src.category_field).cast(pa.string()) if src.category_field else pa.nulls(n, pa.string())
            return pa.table({"file": batch.column("path"), "line": pa.nulls(n, pa.int64()),
                             "text": batch.column(src.text_field).cast(pa.string()), "category_hint": hint,
                             "error": pa.nulls(n, pa.string())})

        return ds.map_batches(to_raw, batch_format="pyarrow")
    return ray.data.read_datasource(PromptLinesDatasource(
        src.path, fmt=fmt, text_field=src.text_field, category_field=src.category_field))


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def dedup_key(text: str) -> str:
    """Exact-duplicate key: the normalised text, case-folded."""
    return stable_hash("dedup", text.casefold())


def classify(batch: dict, source: str, filters: PromptFilters) -> dict:
    """Adds prompt, prompt_id, prompt_source, dedup_key and reject_reason (None = kept) to raw rows."""
    prompts, ids, keys, reasons = [], [], [], []
    for text, error in zip(batch["text"], batch["error"]):
        reason = error
        prompt = normalize_text(text) if text is not None else ""
        if reason is None:
            if not prompt:
                reason = "empty"
            elif len(prompt) < filters.min_chars:
                reason = f"too_short: {len(prompt)} < {filters.min_chars} chars"
            elif len(prompt) > filters.max_chars:
                reason = f"too_long: {len(prompt)} > {filters.max_chars} chars"
        prompts.append(prompt[: filters.max_chars])
        ids.append(make_prompt_id(source, prompt))
        keys.append(dedup_key(prompt))
        reasons.append(reason)
    batch.update(prompt=prompts, prompt_id=ids, prompt_source=[source] * len(ids), dedup_key=keys,
                 reject_reason=reasons)
    del batch["text"], batch["error"]
    return batch


def route(hint: str | None, categories: list[str]) -> str | None:
    """A prompt goes to the category its source names, if that category is in this run."""
    return hint if hint in categories else None


def plan_prompts(cfg: RunConfig):
    """Returns (kept prompts, rejects) as Ray Datasets. Kept prompts are unique by dedup key across all
    sources (the first source, then the first line, wins) and carry their `category`."""

    parts = []
    for order, src in enumerate(cfg.prompts):
        parts.append(read_source(src).map_batches(
            classify, fn_kwargs=dict(source=src.name, filters=cfg.filters), batch_format="numpy")
            .add_column("source_order", lambda b, o=order: pa.array([o] * len(b), pa.int64()),
                        batch_format="pyarrow"))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.materialize()  # read once; it feeds both the rejects and the kept prompts
    rejected = ds.filter(expr=col("reject_reason").is_not_null())
    valid = ds.filter(expr=col("reject_reason").is_null())

    def keep_first(group: pa.Table) -> pa.Table:
        group = group.set_column(group.schema.get_field_index("reject_reason"), "reject_reason",
                                 group.column("reject_reason").cast(pa.string()))
        group = group.sort_by([("source_order", "ascending"), ("line", "ascending")])
        first = group.slice(0, 1)
        dups = group.slice(1)
        reason = pa.array([f"duplicate_of: {first['prompt_id'][0].as_py()}"] * dups.num_rows, pa.string())
        dups = dups.set_column(dups.schema.get_field_index("reject_reason"), "reject_reason", reason)
        return pa.concat_tables([first, dups])

    # One shuffle partition per ~50k prompts: the default (200) is far too fine for prompt sets.
    partitions = max(1, min(200, valid.count() // 50_000))
    deduped = valid.groupby("dedup_key", num_partitions=partitions).map_groups(keep_first, batch_format="pyarrow").materialize()
    categories = list(cfg.categories)
    kept = deduped.filter(expr=col("reject_reason").is_null()).map_batches(
        lambda b: {**b, "category": [route(h, categories) for h in b["category_hint"]]}, batch_format="numpy")
    rejects = rejected.union(deduped.filter(expr=col("reject_reason").is_not_null()))
    return kept, rejects
