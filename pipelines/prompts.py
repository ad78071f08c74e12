"""Prompt sources -> normalised, filtered, deduplicated prompts routed to categories (a Ray Dataset).

Sources: JSONL, plain text, Parquet and WebDataset (the last two may carry an existing image per
prompt). Every input line is accounted for: it becomes a kept prompt, or a reject with its file,
line and reason (malformed JSON, missing field, empty, too short/long, blocked, bad image, duplicate,
near duplicate); blank lines are skipped. Rejects are written to
`OUT/rejects/prompts.parquet` on every run.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource
from ray.data.expressions import col

from schemas.category import get_category
from schemas.config import PromptFilters, PromptSource, RunConfig
from schemas.pair import make_prompt_id, stable_hash

RAW_COLUMNS = ("file", "line", "text", "category_hint", "error")  # + source_image (None for text files)
_BLOCK_ROWS = 8192


class PromptsError(ValueError):
    """The prompt sources cannot be read, or leave nothing for the run to do; the message is one line."""


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
            table = _raw_table(rows["file"], rows["line"], rows["text"], rows["category_hint"], rows["error"],
                               [None] * len(rows["file"]))
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


def _load_image(value, base_dir: str) -> tuple[bytes | None, str | None]:
    """Image bytes from a column value: raw bytes, a `{bytes, path}` struct, or a path (relative paths
    resolve against the data file's folder). Returns (bytes, error)."""
    import os

    if value is None:
        return None, "missing_image"
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        return value, None
    path = value if os.path.isabs(value) else os.path.join(base_dir, value)
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as e:
        return None, f"missing_image: {e.strerror}: {value}"


def _raw_table(files, lines, texts, hints, errors, images) -> pa.Table:
    return pa.table({"file": pa.array(files, pa.string()), "line": pa.array(lines, pa.int64()),
                     "text": pa.array(texts, pa.string()), "category_hint": pa.array(hints, pa.string()),
                     "error": pa.array(errors, pa.string()), "source_image": pa.array(images, pa.binary())})


def read_source(src: PromptSource):
    """A prompt source as raw rows: file, line, text, category_hint, error, source_image."""
    fmt = src.format
    if fmt == "auto":
        suffix = src.path.rsplit(".", 1)[-1].lower()
        fmt = {"jsonl": "jsonl", "json": "jsonl", "txt": "txt", "parquet": "parquet", "tar": "webdataset"}.get(suffix)
        if fmt is None:
            raise PromptsError(f"prompts: cannot tell the format of {src.path!r} from its suffix; "
                               "set format: jsonl | txt | parquet | webdataset")
    try:
        return _read(src, fmt)
    except FileNotFoundError:
        raise PromptsError(f"prompts: {src.path}: no such file or directory") from None


def _read(src: PromptSource, fmt: str):
    import os

    import ray

    if fmt in ("jsonl", "txt"):
        if src.image_field:
            raise PromptsError(f"prompts: {src.path}: image_field needs a parquet or webdataset source")
        return ray.data.read_datasource(PromptLinesDatasource(
            src.path, fmt=fmt, text_field=src.text_field, category_field=src.category_field))

    def to_raw(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        files = batch.column("path").to_pylist() if "path" in batch.column_names else [src.path] * n
        texts = batch.column(src.text_field).to_pylist()
        texts = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in texts]
        hints = batch.column(src.category_field).to_pylist() if src.category_field in batch.column_names else [None] * n
        images, errors = [None] * n, [None] * n
        if src.image_field:
            loaded = [_load_image(v, os.path.dirname(f)) for v, f in zip(batch.column(src.image_field).to_pylist(), files)]
            images, errors = [b for b, _ in loaded], [e for _, e in loaded]
        errors = [e or (None if isinstance(t, str) else f"not_text: {src.text_field!r}") for e, t in zip(errors, texts)]
        texts = [t if isinstance(t, str) else None for t in texts]
        return _raw_table(files, [None] * n, texts, [h if isinstance(h, str) else None for h in hints], errors, images)

    if fmt == "parquet":
        cols = [c for c in (src.text_field, src.category_field, src.image_field) if c]
        try:
            ds = ray.data.read_parquet(src.path, columns=cols, include_paths=True)
        except FileNotFoundError:
            raise
        except Exception as e:  # pyarrow names the missing column; say which source and what to set
            raise PromptsError(f"prompts: {src.path}: cannot read columns {cols}: {e}") from None
    else:
        ds = ray.data.read_webdataset(src.path, decoder=None, include_paths=True)
    return ds.map_batches(to_raw, batch_format="pyarrow")


def normalize_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def dedup_key(text: str) -> str:
    """Exact-duplicate key: the normalised text, case-folded."""
    return stable_hash("dedup", text.casefold())


def blocklist_terms(filters: PromptFilters) -> list[str]:
    terms = list(filters.blocklist)
    if filters.blocklist_file:
        with open(filters.blocklist_file, encoding="utf-8") as f:
            terms += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return terms


def classify(batch: pa.Table, source: str, filters: PromptFilters, blocklist: list[str]) -> pa.Table:
    """Raw rows -> adds prompt, prompt_id, prompt_source, dedup_key and reject_reason (None = kept)."""
    from workers.media import decode_image

    blocked = re.compile(r"(?<!\w)(" + "|".join(re.escape(t) for t in blocklist) + r")(?!\w)", re.IGNORECASE) \
        if blocklist else None
    prompts, ids, keys, reasons = [], [], [], []
    for text, error, image in zip(*(batch.column(c).to_pylist() for c in ("text", "error", "source_image"))):
        reason = error
        prompt = normalize_text(text) if text is not None else ""
        if reason is None:
            if not prompt:
                reason = "empty"
            elif len(prompt) < filters.min_chars:
                reason = f"too_short: {len(prompt)} < {filters.min_chars} chars"
            elif len(prompt) > filters.max_chars:
                reason = f"too_long: {len(prompt)} > {filters.max_chars} chars"
            elif blocked and (hit := blocked.search(prompt)):
                reason = f"blocked: {hit.group(0).lower()}"
        if reason is None and image is not None:
            try:
                decode_image(image)
            except ValueError as e:
                reason = f"bad_image: {e}"
        prompts.append(prompt[: filters.max_chars])
        ids.append(make_prompt_id(source, prompt))
        keys.append(dedup_key(prompt))
        reasons.append(reason)
    n = batch.num_rows
    return batch.drop_columns(["text", "error"]).append_column("prompt", pa.array(prompts, pa.string())) \
        .append_column("prompt_id", pa.array(ids, pa.string())) \
        .append_column("prompt_source", pa.array([source] * n, pa.string())) \
        .append_column("dedup_key", pa.array(keys, pa.string())) \
        .append_column("reject_reason", pa.array(reasons, pa.string()))


def _mark(group: pa.Table, reasons: list[str | None]) -> pa.Table:
    return group.set_column(group.schema.get_field_index("reject_reason"), "reject_reason", pa.array(reasons, pa.string()))


def keep_first(group: pa.Table) -> pa.Table:
    """Exact duplicates: the first source, then the first line, wins."""
    group = group.sort_by([("source_order", "ascending"), ("line", "ascending")])
    first = group["prompt_id"][0].as_py()
    return _mark(group, [None] + [f"duplicate_of: {first}"] * (group.num_rows - 1))


def keep_distinct(group: pa.Table, threshold: float) -> pa.Table:
    """Near duplicates within a cluster, greedily in source/line order: a prompt whose embedding has
    cosine >= threshold with an already kept one is rejected."""
    import numpy as np

    group = group.sort_by([("source_order", "ascending"), ("line", "ascending")])
    vectors = np.asarray(group.column("embedding").to_pylist(), dtype=np.float32)
    ids = group.column("prompt_id").to_pylist()
    kept: list[int] = []
    reasons: list[str | None] = []
    for i, v in enumerate(vectors):
        sims = vectors[kept] @ v if kept else np.empty(0)
        if sims.size and sims.max() >= threshold:
            j = kept[int(sims.argmax())]
            reasons.append(f"near_duplicate_of: {ids[j]} (cosine {sims.max():.3f})")
        else:
            kept.append(i)
            reasons.append(None)
    return _mark(group, reasons).drop_columns(["embedding", "cluster"])


def semantic_dedup(valid, cfg: RunConfig, partitions: int, runtime_env: dict | None = None):
    """Embed every prompt (an actor pool), cluster the embeddings (k-means on a sample, ~10k prompts per
    cluster, as in SemDeDup) and drop near duplicates within each cluster."""
    import numpy as np
    from scipy.cluster.vq import kmeans2

    from pipelines.stages import pool_args
    from workers.embedder import PromptEmbedder
    from workers.model_refs import resolve_model_ref

    f = cfg.filters
    embedded = valid.map_batches(
        PromptEmbedder, fn_constructor_kwargs=dict(model_path=resolve_model_ref(f.dedup_model)), batch_size=256,
        **pool_args(f.dedup_pool, runtime_env)).materialize()
    n = embedded.count()
    k = max(1, n // 10_000)
    centroids = None
    if k > 1:
        sample = embedded.random_sample(min(1.0, 50_000 / n), seed=0).select_columns(["embedding"]).take_all()
        centroids = kmeans2(np.asarray([r["embedding"] for r in sample], np.float32), k, seed=0, minit="++")[0]

    def assign(batch: pa.Table) -> pa.Table:
        if centroids is None:
            cluster = np.zeros(batch.num_rows, np.int64)
        else:
            cluster = (np.asarray(batch.column("embedding").to_pylist(), np.float32) @ centroids.T).argmax(1)
        return batch.append_column("cluster", pa.array(cluster, pa.int64()))

    return embedded.map_batches(assign, batch_format="pyarrow").groupby("cluster", num_partitions=partitions) \
        .map_groups(keep_distinct, fn_kwargs=dict(threshold=f.dedup_threshold), batch_format="pyarrow")


def plan_prompts(cfg: RunConfig, runtime_env: dict | None = None):
    """Returns (kept prompts, rejects) as Ray Datasets. Kept prompts are unique across all sources
    (exactly, and semantically when enabled and some prompt goes to a category) and carry the `category`
    they are routed to (None when no category of this run takes them)."""
    from pipelines.routing import route_batch, run_categories

    terms = blocklist_terms(cfg.filters)
    parts = []
    for order, src in enumerate(cfg.prompts):
        parts.append(read_source(src).map_batches(
            classify, fn_kwargs=dict(source=src.name, filters=cfg.filters, blocklist=terms), batch_format="pyarrow")
            .add_column("source_order", lambda b, o=order: pa.array([o] * len(b), pa.int64()),
                        batch_format="pyarrow"))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.materialize()  # read once; it feeds both the rejects and the kept prompts
    rejected = [ds.filter(expr=col("reject_reason").is_not_null())]
    valid = ds.filter(expr=col("reject_reason").is_null())
    # One shuffle partition per ~50k prompts: the default (200) is far too fine for prompt sets.
    partitions = max(1, min(200, valid.count() // 50_000))
    valid = valid.groupby("dedup_key", num_partitions=partitions).map_groups(keep_first, batch_format="pyarrow").materialize()
    rejected.append(valid.filter(expr=col("reject_reason").is_not_null()))
    valid = valid.filter(expr=col("reject_reason").is_null())
    # Routed before semantic dedup (routing is per prompt, so the result is the same) so that the embedder,
    # a model load, is skipped when no prompt goes to a category of this run: that run has nothing to do.
    kept = valid.map_batches(route_batch, fn_kwargs=dict(cfg=cfg, categories=run_categories(cfg)),
                             batch_format="pyarrow").materialize()
    if cfg.filters.semantic_dedup and kept.filter(expr=col("category").is_not_null()).count():
        kept = semantic_dedup(kept, cfg, partitions, runtime_env).materialize()
        rejected.append(kept.filter(expr=col("reject_reason").is_not_null()).drop_columns(["category"]))
        kept = kept.filter(expr=col("reject_reason").is_null())
    rejects = rejected[0].union(*rejected[1:]).drop_columns(["source_image"])
    return kept, rejects


def _top(counts: Counter, n: int = 3) -> str:
    # Most frequent first, ties by name: rejects arrive from Ray tasks in any order, and the line must not.
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{k} {v}" for k, v in top) + (", ..." if len(counts) > n else "")


def nothing_to_do(cfg: RunConfig, kept: list[dict], rejects: pa.Table | None, rejects_path: str) -> str:
    """The one line that ends a run whose prompts leave it nothing to do: per source, how many lines were
    read; when none is usable, the top reject reasons and where every rejected line is; when none goes to
    a category, which categories the run has, how a prompt reaches one and what the sources' hints are.
    `kept`: the usable prompts' prompt_source and category_hint."""
    rejected = Counter(rejects.column("prompt_source").to_pylist()) if rejects is not None else Counter()
    usable = Counter(r["prompt_source"] for r in kept)
    sources = ", ".join(f"{src.path} ({usable[src.name] + rejected[src.name] or 'no'} lines)" for src in cfg.prompts)
    if not kept:
        if not rejected:
            return f"prompts: nothing usable in {sources}: no non-blank lines to read"
        reasons = Counter(r.split(":")[0] for r in rejects.column("reject_reason").to_pylist())
        return (f"prompts: nothing usable in {sources}: every line was rejected ({_top(reasons)}); each rejected "
                f"line, with its file, line number and reason, is in {rejects_path}")
    hints = {src.name: _top(Counter(r["category_hint"] or "(none)" for r in kept if r["prompt_source"] == src.name))
             for src in cfg.prompts}
    found = "; ".join(f"source {src.name!r} ({src.path}): {usable[src.name]} usable"
                      + (f", {src.category_field!r} = {hints[src.name]}" if usable[src.name] and src.category_field else "")
                      for src in cfg.prompts)
    wants = "; ".join([f"{c}: {get_category(c).prompt_filter}" for c in cfg.categories if get_category(c).prompt_filter]
                      + ["existing_images: an image"])
    return (f"prompts: none of the {len(kept)} usable prompts goes to a category of this run "
            f"({', '.join(cfg.categories)}). A category takes the prompts of the sources it lists "
            "(categories.<name>.sources), else those whose category field names it, and of those only what its "
            f"filter accepts ({wants}). {found}")
