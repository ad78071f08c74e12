"""`pairforge release OUT [OUT ...] DEST --config release.yaml`: run outputs -> a Hub-ready dataset.

DEST mirrors a Hub dataset repo that `datasets.load_dataset(DEST, name, split=...)` reads with no loading
script:

    README.md                                   dataset card (YAML: configs per category + `all`, features, splits)
    data/<category>/<split>-NNNNN-of-NNNNN.parquet   the pairs, images and videos as {bytes, path} structs
                                                (datasets' Image / Video)
    no_images/<category>/<split>-...parquet     the same rows without pixels (generator + seed reproduce them)
    release_report.json                         what was read, dropped (and why) and released
    decontamination.json                        every removed prompt with the eval prompt it matched and how
    croissant.json                              Croissant metadata with its responsible-AI fields
    sources/<k>-<name>/manifest.json, stats.json    each run output's manifest and stats
    SHA256SUMS                                  every other file (`sha256sum -c SHA256SUMS`)

Three passes over Ray Data, each a set of independent tasks over shared storage (no process holds the rows):
1. `Selector`, an actor pool, one input shard a call: thresholds, decontamination of the shard's distinct
   prompts, the seeded sample and each row's split; the surviving rows ("candidates") go to one intermediate
   Parquet per split under the staging directory's `.work/`, named by the input shard's index, and a small
   summary comes back to the driver (counts, matches, the `max_pairs` smallest sample hashes, each test pair's
   prompt key and hash);
1b. the driver merges the summaries (every merge is order-free) into the plan: a hash threshold per capped
   category and each test prompt's smallest hash (`test_unique`, 16 bytes a test prompt in numpy arrays);
   `count_kept` tasks count what those keep of each intermediate (two numeric columns read);
2. `shard_specs` cuts each (category, split) into output shards from those counts and the intermediates' bytes
   per row only, and `write_shard` tasks write one shard each (row groups close at `row_group_mb`) straight
   to its final `-NNNNN-of-NNNNN` name, hashing it for SHA256SUMS and the card.
Why this is byte-reproducible although tasks finish in any order: the order of rows in a shard (input shards
in sorted order, rows in file order), the cut points and the row groups depend only on the input and the
config, never on Ray's blocks or scheduling. Why it is exactly-once: every file a task writes has a
deterministic name and is published by rename, so a retried task (Ray retries killed workers) rewrites the
same bytes; a killed attempt's temporary file is swept when all tasks are done. The driver's memory is the plan.
Costs: the released rows are written twice (intermediates, then shards), so the staging directory needs
about the release's size again while it runs. On a cluster, OUTs and DEST must be on storage every node
reads and writes (as a run's output must be); `ray job submit -- python -m pipelines.release ...`.

Splits: a prompt's split is a hash of its normalised text (so the same prompt, however it is cased or
punctuated, never lands in two splits, and a release of grown outputs keeps every earlier pair's split).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import re
import shutil
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.store import sha256_file, shard_files
from schemas.pair import PIPELINE_VERSION, pair_schema, stable_hash
from schemas.release import EvalSet, ReleaseConfig
from workers.publish import TMP_PREFIX, owned_temps, publish_atomically, remove, temp_path

OWNER = "release"
SPLITS = ("train", "validation", "test")
_SPLIT_ORDER = {s: k for k, s in enumerate((*SPLITS, "test_unique"))}
RUNTIME_KEYS = {"ray", "workers"}  # how the release runs, not what it holds: out of the report's config and hash
WORK = ".work"                      # pass 1's intermediates, inside the staging directory
IMAGE_COLUMNS = ("image_w", "image_l")
VIDEO_COLUMNS = ("video_w", "video_l")    # video categories' videos; their image_w / image_l are the first frames
MEDIA_COLUMNS = IMAGE_COLUMNS + VIDEO_COLUMNS
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


class ReleaseError(ValueError):
    """Bad input (an output directory, an eval file, DEST): the message is one line naming it."""


# ---------------------------------------------------------------- prompts, hashes, splits

def normalize_prompt(text: str) -> str:
    """The form prompts are compared and split in: NFKC, case-folded, punctuation and whitespace runs -> one
    space. "A Cat, sitting!" and "a cat sitting" are one prompt."""
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def unit_hash(*parts: object) -> float:
    """A stable uniform number in [0, 1) from `parts` (the same on every machine and every release)."""
    return int(stable_hash(*parts, length=15), 16) / 16**15


def split_of(prompt: str, splits) -> str:
    u = unit_hash("split", splits.salt, normalize_prompt(prompt))
    if u < splits.train:
        return "train"
    return "validation" if u < splits.train + splits.validation else "test"


def is_video(category: str) -> bool:
    from schemas.category import registered

    return category in registered() and registered()[category].media == "video"


def sample_hash(seed: int, pair_id: str) -> float:
    return unit_hash("sample", seed, pair_id)


def prompt_key(text: str) -> int:
    """A 64-bit key of a prompt's normalised text (the `test_unique` map's keys; a collision between two of a
    billion test prompts has odds of ~3%, and would only drop one of them from `test_unique`)."""
    return int.from_bytes(hashlib.blake2b(normalize_prompt(text).encode(), digest_size=8).digest(), "little")


class UniqueTest:
    """Each test prompt's smallest sample hash (its `test_unique` pair), in two sorted numpy arrays: 16 bytes a
    test prompt instead of a dict entry (~200 bytes). The driver adds each input shard's test pairs as numpy
    arrays; they are reduced (per key, the minimum) once `chunk` are pending, so the state is the distinct test
    prompts plus at most one chunk."""

    chunk = 1 << 20

    def __init__(self):
        self.keys = np.empty(0, np.uint64)
        self.hashes = np.empty(0, np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._n = 0

    def add(self, key: int, h: float) -> None:
        self.add_many(np.array([key], np.uint64), np.array([h], np.float64))

    def add_many(self, keys: np.ndarray, hashes: np.ndarray) -> None:
        self._pending.append((keys, hashes))
        self._n += len(keys)
        if self._n >= self.chunk:
            self._reduce()

    def _reduce(self) -> None:
        keys = np.concatenate([self.keys, *(k for k, _ in self._pending)])
        hashes = np.concatenate([self.hashes, *(h for _, h in self._pending)])
        self._pending, self._n = [], 0
        order = np.lexsort((hashes, keys))                      # by key, then hash: the first of a key is its minimum
        keys, hashes = keys[order], hashes[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        self.keys, self.hashes = keys[first], hashes[first]

    def finish(self) -> UniqueTest:
        self._reduce()
        return self

    def chosen(self, key: int, h: float) -> bool:
        return bool(self.chosen_many(np.array([key], np.uint64), np.array([h], np.float64))[0])

    def chosen_many(self, keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """For each (prompt key, sample hash): is it its prompt's `test_unique` pair?"""
        if not len(self.keys):
            return np.zeros(len(keys), bool)
        i = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return (self.keys[i] == keys) & (self.hashes[i] == hashes)

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------- eval sets and decontamination

def read_eval_prompts(es: EvalSet) -> list[str]:
    path = Path(es.path)
    fmt = es.format if es.format != "auto" else {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}.get(path.suffix)
    if not path.is_file():
        raise ReleaseError(f"{path}: eval prompt file not found (decontamination.eval_sets)")
    if fmt is None:
        raise ReleaseError(f"{path}: unknown eval file type; use .txt, .jsonl or .parquet, or set `format`")
    if fmt == "text":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if fmt == "parquet":
        try:
            return [t for t in pq.read_table(path, columns=[es.text_field])[es.text_field].to_pylist() if t]
        except (KeyError, pa.ArrowInvalid) as e:
            raise ReleaseError(f"{path}: cannot read column {es.text_field!r} ({str(e).splitlines()[0]})") from None
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)[es.text_field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ReleaseError(f"{path}:{n}: expected a JSON object with a {es.text_field!r} string") from None
        if value:
            prompts.append(str(value))
    return prompts


def shingles(norm: str, n: int) -> set[str]:
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


class Decontaminator:
    """Matches prompts against the eval prompts: normalised exact, then MinHash LSH candidates confirmed by
    their exact shingle Jaccard, then embedding cosine. Eval sets are small and held in memory."""

    def __init__(self, cfg, evals: list[tuple[str, str]]):
        self.cfg, self.evals = cfg, evals          # (eval set name, eval prompt)
        norms = [normalize_prompt(t) for _, t in evals]
        self.exact = {n: i for i, n in enumerate(norms)} if cfg.exact else {}
        self.lsh = None
        if cfg.minhash_threshold is not None and evals:
            from datasketch import MinHashLSH

            self.eval_shingles = [shingles(n, cfg.ngram) for n in norms]
            self.lsh = MinHashLSH(threshold=cfg.minhash_threshold, num_perm=cfg.num_perm)
            for i, m in enumerate(self._minhashes(self.eval_shingles)):
                self.lsh.insert(str(i), m)
        self.embedder = self.eval_vectors = None
        if cfg.embedding_threshold is not None and evals:
            from workers.embedder import PromptEmbedder
            from workers.model_refs import resolve_model_ref

            self.embedder = PromptEmbedder(resolve_model_ref(cfg.embedder))
            self.eval_vectors = self._embed([t for _, t in evals])

    def _minhashes(self, shingle_sets: list[set[str]]) -> list:
        """One MinHash per set; `bulk` shares the permutations (initialising them is most of a MinHash's cost)."""
        from datasketch import MinHash

        return MinHash.bulk([[s.encode() for s in sh] for sh in shingle_sets], num_perm=self.cfg.num_perm, seed=1)

    def _embed(self, texts: list[str]) -> np.ndarray:
        emb = self.embedder(pa.table({"prompt": texts}))["embedding"].combine_chunks()
        return np.asarray(emb.flatten(), np.float32).reshape(len(texts), -1)

    def match(self, texts: list[str]) -> list[dict | None]:
        """For each text, its first match {method, eval_set, eval_prompt, score}, or None."""
        found: list[dict | None] = [None] * len(texts)

        def hit(k, i, method, score):
            found[k] = {"method": method, "eval_set": self.evals[i][0], "eval_prompt": self.evals[i][1],
                        "score": round(float(score), 4)}

        norms = [normalize_prompt(t) for t in texts]
        for k, norm in enumerate(norms):
            if norm in self.exact:
                hit(k, self.exact[norm], "exact", 1.0)
        if self.lsh is not None:
            rest = [k for k in range(len(texts)) if found[k] is None]
            sets = [shingles(norms[k], self.cfg.ngram) for k in rest]
            for k, sh, m in zip(rest, sets, self._minhashes(sets)):
                scored = [(len(sh & self.eval_shingles[i]) / len(sh | self.eval_shingles[i]), i)
                          for i in map(int, self.lsh.query(m))]
                best = max(scored, default=None)
                if best and best[0] >= self.cfg.minhash_threshold:
                    hit(k, best[1], "minhash", best[0])
        rest = [k for k in range(len(texts)) if found[k] is None]
        if self.embedder is not None and rest:
            sims = self._embed([texts[k] for k in rest]) @ self.eval_vectors.T
            for k, row in zip(rest, sims):
                i = int(row.argmax())
                if row[i] >= self.cfg.embedding_threshold:
                    hit(k, i, "embedding", row[i])
        return found


# ---------------------------------------------------------------- inputs

def check_outputs(outs: list[Path]) -> None:
    seen = set()
    for out in outs:
        if not (out / "pairs").is_dir():
            raise ReleaseError(f"{out}: not a pairforge output directory (no pairs/ inside)")
        if out.resolve() in seen:
            raise ReleaseError(f"{out}: given twice (each run output may be released once)")
        seen.add(out.resolve())


def input_files(outs: list[Path], categories: list[str] | None) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = defaultdict(list)
    for out in outs:
        for f in shard_files(out, "pairs"):
            if categories is None or f.parent.name in categories:
                files[f.parent.name].append(f)
    return dict(sorted(files.items()))


def row_counts(outs: list[Path], kind: str) -> Counter:
    """Rows per category of a kind (from the Parquet footers): what the release leaves out by construction."""
    counts: Counter = Counter()
    for out in outs:
        for f in shard_files(out, kind):
            counts[f.parent.name] += pq.ParquetFile(f).metadata.num_rows
    return counts


def read_batches(files: list[Path], columns: list[str] | None, batch_rows: int, batch_bytes: int | None = None,
                 schema: pa.Schema | None = None):
    """One record batch at a time, of at most `batch_rows` rows and (from the shard's own row sizes) about
    `batch_bytes`; columns an older shard lacks come back as nulls (the release's schema is the current pair
    schema)."""
    schema = schema or pair_schema()
    names = columns or schema.names
    for f in files:
        shard = pq.ParquetFile(f)
        present = [c for c in names if c in shard.schema_arrow.names]
        rows = batch_rows
        meta = shard.metadata
        if batch_bytes and meta.num_rows and meta.num_row_groups:
            row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)) / meta.num_rows
            rows = max(1, min(batch_rows, int(batch_bytes // max(row_bytes, 1))))
        for batch in shard.iter_batches(columns=present, batch_size=rows):
            table = pa.Table.from_batches([batch])
            for c in names:
                if c not in table.column_names:
                    table = table.append_column(schema.field(c), pa.nulls(table.num_rows, schema.field(c).type))
            yield table.select(names)


# ---------------------------------------------------------------- selection

def quality_reasons(table: pa.Table, cfg: ReleaseConfig) -> list[str | None]:
    """Why each row fails the thresholds (None = it passes). A threshold applies only to rows that store the
    field (OCR and reward labels store no confidence)."""
    sel = cfg.selection
    sources = table["label_source"].to_pylist()
    conf, agree = table["confidence"].to_pylist(), table["agreement"].to_pylist()
    reasons = []
    for s, c, a in zip(sources, conf, agree):
        if c is not None and s in sel.min_confidence and c < sel.min_confidence[s]:
            reasons.append(f"below_min_confidence:{s}")
        elif a is not None and s in sel.min_agreement and a < sel.min_agreement[s]:
            reasons.append(f"below_min_agreement:{s}")
        else:
            reasons.append(None)
    return reasons


def texts_of(row_prompt: str, row_prompt_l: str | None) -> list[str]:
    return [row_prompt] + ([row_prompt_l] if row_prompt_l and row_prompt_l != row_prompt else [])


def candidate_schema() -> pa.Schema:
    """Pass 1's intermediates: the pair schema plus each row's sample hash and prompt key (what the caps and
    `test_unique` decide by in pass 2)."""
    schema = pair_schema()
    return pa.schema([*schema, pa.field("_h", pa.float64()), pa.field("_key", pa.uint64())], metadata=schema.metadata)


def part_path(work: Path, category: str, split: str, index: int) -> Path:
    return work / category / split / f"{index:07d}.parquet"


class Selector:
    """Pass 1 over one input shard a call (a Ray Data actor, so the decontamination's MinHash index and embedder
    are built once per actor). It makes every decision a row's own values settle: thresholds, decontamination
    of the shard's distinct prompts, the seeded sample, the split. The survivors ("candidates": the caps and
    `test_unique` may still thin them out) go to one intermediate Parquet per split named by the shard's index,
    published atomically, so a retried call writes the same files again. Returns a small summary."""

    def __init__(self, cfg: dict, evals: list[tuple[str, str]], work: str):
        self.cfg = ReleaseConfig.model_validate(cfg)
        self.decon = Decontaminator(self.cfg.decontamination, evals) if evals else None
        self.work, self.schema = Path(work), candidate_schema()

    def __call__(self, item: dict) -> dict:
        cfg, sel = self.cfg, self.cfg.selection
        index, category = item["index"], item["category"]
        cap = sel.max_pairs.get(category)
        read, dropped, contaminated = 0, Counter(), {}
        smallest: list[float] = []        # max-heap (negated) of the `cap` smallest sample hashes
        test_keys, test_hashes = [], []
        writers: dict[str, tuple[Path, pq.ParquetWriter]] = {}
        try:
            for table in read_batches([Path(item["path"])], None, cfg.read_batch_rows, int(cfg.read_batch_mb * 2**20)):
                read += table.num_rows
                reasons = quality_reasons(table, cfg)
                prompts, prompts_l = table["prompt"].to_pylist(), table["prompt_l"].to_pylist()
                if self.decon is not None:
                    distinct = sorted({t for k, (p, pl) in enumerate(zip(prompts, prompts_l)) if reasons[k] is None
                                       for t in texts_of(p, pl) if normalize_prompt(t) not in contaminated})
                    for text, m in zip(distinct, self.decon.match(distinct)):
                        if m is not None:
                            contaminated[normalize_prompt(text)] = {"prompt": text, "category": category, "pairs": 0, **m}
                keep, splits, hashes, keys = [], [], [], []
                for k, pair_id in enumerate(table["pair_id"].to_pylist()):
                    if reasons[k] is None:
                        norms = [normalize_prompt(t) for t in texts_of(prompts[k], prompts_l[k])]
                        bad = next((contaminated[n] for n in norms if n in contaminated), None)
                        if bad is not None:
                            bad["pairs"] += 1
                            reasons[k] = f"decontaminated:{bad['method']}"
                    h = sample_hash(sel.seed, pair_id)
                    if reasons[k] is None and h >= sel.sample:
                        reasons[k] = "not_sampled"
                    if reasons[k] is not None:
                        dropped[reasons[k]] += 1
                        continue
                    keep.append(k)
                    hashes.append(h)
                    keys.append(prompt_key(prompts[k]))
                    splits.append(split_of(prompts[k], cfg.splits))
                    if cap is not None:
                        if len(smallest) < cap:
                            heapq.heappush(smallest, -h)
                        elif -smallest[0] > h:
                            heapq.heapreplace(smallest, -h)
                    if cfg.splits.test_unique and splits[-1] == "test":
                        test_keys.append(keys[-1])
                        test_hashes.append(h)
                if not keep:
                    continue
                rows = table.take(pa.array(keep, pa.int64())) \
                    .append_column("_h", pa.array(hashes, pa.float64())).append_column("_key", pa.array(keys, pa.uint64()))
                split_col = pa.array(splits)
                for split in SPLITS:
                    part = rows.filter(pc.equal(split_col, split))
                    if part.num_rows:
                        if split not in writers:
                            final = part_path(self.work, category, split, index)
                            final.parent.mkdir(parents=True, exist_ok=True)
                            tmp = temp_path(final, OWNER)
                            writers[split] = (tmp, pq.ParquetWriter(tmp, self.schema, compression="zstd"))
                        writers[split][1].write_table(part.cast(self.schema))
            parts = {}
            for split, (tmp, writer) in writers.items():
                writer.close()
                meta = pq.ParquetFile(tmp).metadata
                meta_bytes = sum(rg.column(j).total_compressed_size for rg in map(meta.row_group, range(meta.num_row_groups))
                                 for j in range(rg.num_columns) if rg.column(j).path_in_schema.split(".")[0] not in MEDIA_COLUMNS)
                parts[split] = [meta.num_rows, tmp.stat().st_size, meta_bytes]
                os.replace(tmp, part_path(self.work, category, split, index))  # a retry's file replaces its twin
        finally:
            for tmp, writer in writers.values():
                if tmp.exists():   # failed before it was published
                    writer.close()
                    tmp.unlink()
        summary = {"index": index, "category": category, "read": read, "dropped": dropped,
                   "contaminated": contaminated, "parts": parts}
        return {"summary": json.dumps(summary), "cap_hashes": np.sort(-np.array(smallest, np.float64)).tobytes(),
                "test_keys": np.array(test_keys, np.uint64).tobytes(), "test_hashes": np.array(test_hashes, np.float64).tobytes()}


@dataclass
class Plan:
    """What pass 1 found, all of it small: counts, the contaminated prompts, a hash threshold per capped
    category, the test pair chosen for each test prompt, and the intermediates (index, rows, bytes, bytes
    without pixels) of each (category, split)."""

    read: Counter = field(default_factory=Counter)                       # category -> decided pairs read
    dropped: dict = field(default_factory=lambda: defaultdict(Counter))  # category -> reason -> pairs
    contaminated: dict = field(default_factory=dict)                     # normalised text -> match record
    cap_threshold: dict = field(default_factory=dict)                    # category -> max sample hash kept
    unique_test: UniqueTest = field(default_factory=UniqueTest)          # test prompt -> smallest sample hash
    parts: dict = field(default_factory=lambda: defaultdict(list))       # (category, split) -> [(index, rows, bytes, meta bytes)]


def plan_release(sources: list[dict], cfg: ReleaseConfig, evals: list[tuple[str, str]], work: Path, workers: int) -> Plan:
    """Pass 1 over Ray Data (an actor pool of `workers`, one input shard a call); the summaries stream back to
    the driver and are merged as they come, in whatever order (every merge below is order-free)."""
    import ray.data

    plan, first = Plan(), {}
    selected: Counter = Counter()
    smallest: dict[str, np.ndarray] = {}
    ds = ray.data.from_items(sources, override_num_blocks=len(sources)).map(
        Selector, fn_constructor_kwargs=dict(cfg=cfg.model_dump(mode="json"), evals=evals, work=str(work)),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(workers, len(sources)))), num_cpus=1)
    for row in ds.iter_rows():
        s = json.loads(row["summary"])
        category, index = s["category"], s["index"]
        plan.read[category] += s["read"]
        plan.dropped[category].update(s["dropped"])
        for norm, m in s["contaminated"].items():
            # the report names the first input shard's match (the same whatever order the shards finished in)
            if norm in plan.contaminated:
                m["pairs"], prev = m["pairs"] + plan.contaminated[norm]["pairs"], first[norm]
                if prev < index:
                    plan.contaminated[norm]["pairs"] = m["pairs"]
                    continue
            plan.contaminated[norm], first[norm] = m, index
        for split, (rows, nbytes, meta_bytes) in s["parts"].items():
            plan.parts[(category, split)].append((index, rows, nbytes, meta_bytes))
            selected[category] += rows
        cap = cfg.selection.max_pairs.get(category)
        if cap is not None:
            merged = np.concatenate([smallest.get(category, np.empty(0)), np.frombuffer(row["cap_hashes"], np.float64)])
            smallest[category] = np.sort(merged)[:cap]
        if row["test_keys"]:
            plan.unique_test.add_many(np.frombuffer(row["test_keys"], np.uint64), np.frombuffer(row["test_hashes"], np.float64))
    for category, cap in cfg.selection.max_pairs.items():
        if selected[category] > cap:
            plan.cap_threshold[category] = float(smallest[category][-1])
            plan.dropped[category]["over_cap"] += selected[category] - cap
    for parts in plan.parts.values():
        parts.sort()
    plan.unique_test.finish()
    return plan


# ---------------------------------------------------------------- writing shards

def without_media(schema: pa.Schema) -> pa.Schema:
    """The pair schema less its pixel columns (images and videos), with the `datasets` features to match."""
    keep = [f for f in schema if f.name not in MEDIA_COLUMNS]
    hf = json.loads(schema.metadata[b"huggingface"])
    for c in MEDIA_COLUMNS:
        hf["info"]["features"].pop(c, None)
    return pa.schema(keep, metadata={"huggingface": json.dumps(hf)})


def kept_mask(table: pa.Table, limit: float, unique: UniqueTest | None) -> np.ndarray:
    """Which candidates the caps (`limit`: the largest sample hash kept) and, for `test_unique`, the choice of
    each test prompt's pair keep."""
    h = table["_h"].to_numpy()
    mask = h <= limit
    if unique is not None:
        mask &= unique.chosen_many(table["_key"].to_numpy(), h)
    return mask


def count_kept(item: dict, limits: dict[str, float], unique) -> dict:
    """Pass 1b, for the (category, split)s a cap or `test_unique` thins: how many of an intermediate's candidates
    are kept (reads two numeric columns)."""
    import ray

    table = pq.read_table(item["path"], columns=["_h", "_key"])
    kept = kept_mask(table, limits.get(item["category"], 1.0), ray.get(unique) if item["unique"] else None)
    return {**item, "kept": int(kept.sum())}


def shard_specs(plan: Plan, cfg: ReleaseConfig, work: Path, trees: list[str], kept: dict) -> list[dict]:
    """Every output shard, decided before any is written, from the intermediates' row counts and sizes only: a
    (category, split)'s kept rows in input order, cut where the estimated compressed size (the intermediate's
    bytes per row, with or without pixels) reaches `shard_size_mb`. So the cut points, names and contents of the
    shards depend on the input and config alone, and each shard can be written by its own task."""
    target = cfg.shard_size_mb * 2**20
    specs = []
    for category in sorted({c for c, _ in plan.parts}):
        for split in (*SPLITS, *(("test_unique",) if cfg.splits.test_unique else ())):
            pieces, source = [], "test" if split == "test_unique" else split   # test_unique: a subset of test
            for index, rows, nbytes, meta_bytes in plan.parts.get((category, source), []):
                path = part_path(work, category, source, index)
                n = kept.get((str(path), split == "test_unique"), rows)
                if n:
                    pieces.append((str(path), n, nbytes / rows, meta_bytes / rows))
            for tree in trees:
                shards, current, size = [], [], 0.0
                for path, n, per_row, per_row_meta in pieces:
                    row_bytes, start = (per_row if tree == "data" else per_row_meta), 0
                    while start < n:
                        take = n - start if size + (n - start) * row_bytes < target else \
                            max(1, math.ceil((target - size) / row_bytes))
                        current.append({"path": path, "start": start, "end": start + take})
                        size, start = size + take * row_bytes, start + take
                        if size >= target:
                            shards.append(current)
                            current, size = [], 0.0
                if current:
                    shards.append(current)
                specs += [{"tree": tree, "category": category, "split": split, "k": k, "n": len(shards), "ranges": ranges}
                          for k, ranges in enumerate(shards)]
    return specs


class RowGroups:
    """Rows buffered into a Parquet row group until it holds `row_group_bytes` (in memory, as `datasets` sizes
    them) or `row_group_rows` rows. Row groups by size rather than count keep both a shard of videos and one of
    metadata-only rows (a million rows in 500 MB) to a few dozen row groups."""

    def __init__(self, writer: pq.ParquetWriter, row_group_bytes: int, row_group_rows: int | None):
        self.writer, self.row_group_bytes, self.row_group_rows = writer, row_group_bytes, row_group_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = self.pending_bytes = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.pending_bytes += table.nbytes
        if len(self.pending) >= 64:
            # Copy many small pieces into one: each piece's ~100 small buffers would otherwise pin allocator pages
            self.pending = [pa.concat_tables(self.pending).combine_chunks()]
        while self.row_group_rows and self.pending_rows >= self.row_group_rows:
            self.flush(self.row_group_rows)
        if self.pending_bytes >= self.row_group_bytes:
            self.flush(self.pending_rows)

    def flush(self, n: int | None = None) -> None:
        """Write the first `n` pending rows (all by default) as one row group."""
        n = self.pending_rows if n is None else n
        if not n:
            return
        pending = pa.concat_tables(self.pending)
        self.writer.write_table(pending.slice(0, n), row_group_size=n)
        rest = pending.slice(n)
        self.pending, self.pending_rows, self.pending_bytes = ([rest] if rest.num_rows else []), rest.num_rows, rest.nbytes


def write_shard(spec: dict, stage: str, cfg: dict, limits: dict[str, float], unique) -> dict:
    """Pass 2, one output shard a task: its ranges of kept candidates, in order, into row groups, under a
    temporary name renamed to `<split>-NNNNN-of-NNNNN.parquet` (a retried task writes the same bytes again);
    returns its rows, size in memory and sha256 (hashed here, while the file is in the page cache)."""
    import ray

    cfg_ = ReleaseConfig.model_validate(cfg)
    schema = pair_schema() if spec["tree"] == "data" else without_media(pair_schema())
    final = Path(stage) / spec["tree"] / spec["category"] / f"{spec['split']}-{spec['k']:05d}-of-{spec['n']:05d}.parquet"
    final.parent.mkdir(parents=True, exist_ok=True)
    limit = limits.get(spec["category"], 1.0)
    chooser = ray.get(unique) if spec["split"] == "test_unique" else None
    tmp = temp_path(final, OWNER)
    rows = nbytes = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            groups = RowGroups(writer, int(cfg_.row_group_mb * 2**20), cfg_.row_group_rows)
            for r in spec["ranges"]:
                path, start, end = r["path"], r["start"], r["end"]
                seen = 0   # kept candidates of this intermediate before the batch
                for table in read_batches([Path(path)], [*schema.names, "_h", "_key"], cfg_.read_batch_rows,
                                          int(cfg_.read_batch_mb * 2**20), candidate_schema()):
                    if limit < 1.0 or chooser is not None:
                        table = table.filter(pa.array(kept_mask(table, limit, chooser)))
                    lo, hi = max(start - seen, 0), min(end - seen, table.num_rows)
                    seen += table.num_rows
                    if hi > lo:
                        piece = table.slice(lo, hi - lo).select(schema.names).cast(schema)
                        rows, nbytes = rows + piece.num_rows, nbytes + piece.nbytes
                        groups.add(piece)
                    if seen >= end:
                        break
            groups.flush()
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tree": spec["tree"], "category": spec["category"], "split": spec["split"], "k": spec["k"],
            "file": str(final.relative_to(stage)), "rows": rows, "bytes": nbytes, "sha256": sha256_file(final)}


def write_release(stage: Path, sources: list[dict], cfg: ReleaseConfig, evals: list[tuple[str, str]],
                  workers: int) -> tuple[Plan, dict]:
    """Pass 1 (select, into intermediates under stage/.work), pass 1b (count what the caps and `test_unique`
    keep), pass 2 (every output shard by its own task), all over Ray Data; the intermediates are removed after.
    Returns the plan and {tree: {category: {split: {"rows", "bytes", "files", "sha256"}}}}."""
    import ray
    import ray.data

    work = stage / WORK
    plan = plan_release(sources, cfg, evals, work, workers)
    trees = ["data", *(["no_images"] if cfg.no_images else [])]
    unique = ray.put(plan.unique_test)
    limits = dict(plan.cap_threshold)
    counted = [{"path": str(part_path(work, c, s, i)), "category": c, "unique": unique_split}
               for (c, s), parts in sorted(plan.parts.items()) for i, *_ in parts
               for unique_split in ([False] if c in limits else []) + ([True] if s == "test" and cfg.splits.test_unique else [])]
    kept = {}
    if counted:
        ds = ray.data.from_items(counted, override_num_blocks=min(len(counted), 4 * workers))
        for r in ds.map(count_kept, fn_kwargs=dict(limits=limits, unique=unique), num_cpus=1).iter_rows():
            kept[(r["path"], r["unique"])] = r["kept"]
    specs = shard_specs(plan, cfg, work, trees, kept)
    written: dict = {tree: {} for tree in trees}
    if specs:
        ds = ray.data.from_items(specs, override_num_blocks=len(specs)).map(
            write_shard, fn_kwargs=dict(stage=str(stage), cfg=cfg.model_dump(mode="json"), limits=limits, unique=unique),
            num_cpus=1, compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(specs)))))
        for r in sorted(ds.iter_rows(), key=lambda r: (r["tree"], r["category"], _SPLIT_ORDER[r["split"]], r["k"])):
            v = written[r["tree"]].setdefault(r["category"], {}).setdefault(
                r["split"], {"rows": 0, "bytes": 0, "files": [], "sha256": []})
            v["rows"] += r["rows"]
            v["bytes"] += r["bytes"]
            v["files"].append(r["file"])
            v["sha256"].append(r["sha256"])
    # A SIGKILLed attempt (its retry has written the shard) leaves its temporary file behind: sweep them now
    # that every task is done, with the intermediates.
    for tree in trees:
        for directory in (stage / tree).glob("*"):
            for stale in owned_temps(directory, OWNER):
                remove(stale)
    shutil.rmtree(work, ignore_errors=True)
    return plan, written


# ---------------------------------------------------------------- the release

def copy_sources(stage: Path, outs: list[Path]) -> list[dict]:
    """Each output's manifest and stats under sources/<k>-<name>/; returns what the card needs of them."""
    sources = []
    for k, out in enumerate(outs):
        dest = stage / "sources" / f"{k:02d}-{out.resolve().name}"
        dest.mkdir(parents=True)
        info = {"output": str(out.resolve()), "dir": str(dest.relative_to(stage)), "manifest": {}, "stats": None}
        for name in ("manifest.json", "stats.json"):
            if (out / name).is_file():
                shutil.copy2(out / name, dest / name)
                info[name.split(".")[0]] = json.loads((out / name).read_text())
        sources.append(info)
    return sources


def data_checksums(written: dict) -> dict[str, str]:
    """Every shard's sha256 (hashed once, when its writer finished), by its path in DEST."""
    return {f: h for cats in written.values() for splits in cats.values() for v in splits.values()
            for f, h in zip(v["files"], v["sha256"])}


def write_checksums(stage: Path, known: dict[str, str]) -> None:
    """SHA256SUMS of every file; the shards' digests come from `known` (a multi-terabyte release is not read again)."""
    lines = [f"{known.get(rel) or sha256_file(p)}  {rel}"
             for p in sorted(stage.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"
             for rel in [p.relative_to(stage).as_posix()]]
    (stage / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def release(outs: list[str | Path], dest: str | Path, cfg: ReleaseConfig, *, overwrite: bool = False,
            config_path: str | None = None) -> dict:
    """Build the release in a staging directory beside DEST and publish it as DEST in one rename. Returns
    the release report."""
    from pipelines.release_card import write_card, write_croissant

    outs, dest = [Path(o) for o in outs], Path(dest)
    check_outputs(outs)
    if dest.exists() and not dest.is_dir():
        raise ReleaseError(f"{dest}: exists and is not a directory; choose a new DEST")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ReleaseError(f"{dest}: exists and is not empty; choose a new DEST or pass --overwrite")
    if dest.resolve() in {o.resolve() for o in outs}:
        raise ReleaseError(f"{dest}: DEST cannot be one of the run outputs")
    evals = [(es.name or Path(es.path).name, t) for es in cfg.decontamination.eval_sets for t in read_eval_prompts(es)]
    categories = cfg.selection.categories
    files = input_files(outs, categories)
    if not files:
        raise ReleaseError(f"{', '.join(map(str, outs))}: no decided pairs to release"
                           + (f" in categories {categories}" if categories else ""))
    # A release killed before it published left its staging directory beside DEST (a later one cleans it up;
    # two releases into the same DEST at once are not supported).
    mine = re.compile(rf"{re.escape(TMP_PREFIX + OWNER)}-[0-9a-f]{{12}}-{re.escape(dest.name)}")  # temp_path's names
    for stale in owned_temps(dest.parent, OWNER) if dest.parent.is_dir() else []:
        if mine.fullmatch(stale.name):
            remove(stale)
    started = time.time()
    from pipelines.run import RAY_WARNINGS_NOTE, init_ray

    init_ray(cfg.ray)
    logging.getLogger("pairforge").info(RAY_WARNINGS_NOTE)
    import ray

    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    sources = [{"index": k, "category": c, "path": str(f)}
               for k, (c, f) in enumerate((c, f) for c, fs in files.items() for f in fs)]

    def build(stage: Path) -> None:
        stage.mkdir()
        plan, written = write_release(stage, sources, cfg, evals, workers)
        if not written["data"]:
            raise ReleaseError("every pair was dropped by the selection (see the thresholds, caps and sample)")
        sources_info = copy_sources(stage, outs)
        report.update(_report(outs, cfg, plan, written, config_path, started))
        (stage / "release_report.json").write_text(json.dumps(report, indent=1))
        (stage / "decontamination.json").write_text(json.dumps(_decon_report(cfg, evals, plan), indent=1))
        if cfg.croissant:
            write_croissant(stage, cfg, written, sources_info)
        write_card(stage, cfg, written, report, sources_info)
        write_checksums(stage, data_checksums(written))

    report: dict = {}
    if dest.exists() and any(dest.iterdir()):
        # --overwrite: build beside DEST, then swap (two renames; the old release is removed after)
        staged = temp_path(dest, OWNER)
        try:
            build(staged)
            old = temp_path(dest, OWNER)
            os.rename(dest, old)
            os.rename(staged, dest)
            shutil.rmtree(old)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    else:
        if dest.exists():
            dest.rmdir()
        publish_atomically(dest, OWNER, build)
    return report


def _report(outs, cfg: ReleaseConfig, plan: Plan, written: dict, config_path, started) -> dict:
    decided, undecided, errors = (row_counts(outs, kind) for kind in ("pairs", "undecided", "errors"))
    data = written["data"]
    per_cat = {}
    for c in sorted(set(decided) | set(undecided) | set(errors)):
        released = {s: v["rows"] for s, v in data.get(c, {}).items()}
        dropped = dict(sorted(plan.dropped[c].items())) if c in plan.read else \
            ({"category_not_selected": decided[c]} if decided[c] else {})
        per_cat[c] = {"decided": decided[c], "undecided_excluded": undecided[c], "errors_excluded": errors[c],
                      "dropped": dropped, "released": released,
                      "released_pairs": sum(n for s, n in released.items() if s != "test_unique")}
    return {
        "format": "pairforge-release/1", "name": cfg.name, "pipeline_version": PIPELINE_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 2),
        "config_path": config_path, "config": cfg.model_dump(mode="json", exclude=RUNTIME_KEYS),
        "config_hash": stable_hash(cfg.model_dump(mode="json", exclude=RUNTIME_KEYS)),
        "outputs": [str(o.resolve()) for o in outs],
        "categories": per_cat,
        "totals": {"decided": sum(decided.values()), "released_pairs": sum(v["released_pairs"] for v in per_cat.values()),
                   "decontaminated_prompts": len(plan.contaminated),
                   "decontaminated_pairs": sum(m["pairs"] for m in plan.contaminated.values())},
        "files": {tree: {c: {s: v["files"] for s, v in splits.items()} for c, splits in cats.items()}
                  for tree, cats in written.items()},
    }


def _decon_report(cfg: ReleaseConfig, evals: list[tuple[str, str]], plan: Plan) -> dict:
    d = cfg.decontamination
    by_method = Counter(m["method"] for m in plan.contaminated.values())
    return {"eval_sets": [{"name": es.name or Path(es.path).name, "path": es.path,
                           "prompts": sum(1 for n, _ in evals if n == (es.name or Path(es.path).name))}
                          for es in d.eval_sets],
            "methods": {"exact": d.exact, "minhash": {"threshold": d.minhash_threshold, "ngram": d.ngram, "num_perm": d.num_perm}
                        if d.minhash_threshold is not None else None,
                        "embedding": {"threshold": d.embedding_threshold, "model": d.embedder}
                        if d.embedding_threshold is not None else None},
            "removed_prompts": len(plan.contaminated), "removed_pairs": sum(m["pairs"] for m in plan.contaminated.values()),
            "by_method": dict(by_method),
            "removed": sorted(plan.contaminated.values(), key=lambda m: (m["category"], m["prompt"]))}


def push(dest: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload DEST to the Hub dataset repo `repo` (resumable; DEST already has the repo's layout). Not
    exercised by the tests: there is no Hub here."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    # upload_large_folder (huggingface_hub < 2) and upload_folder (>= 2, which resumes and batches commits) do the same job
    upload = getattr(api, "upload_large_folder", None) or api.upload_folder
    upload(repo_id=repo, folder_path=str(dest), repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo}"


if __name__ == "__main__":  # python -m pipelines.release OUT [OUT ...] DEST --config release.yaml (ray job submit)
    import sys

    from pipelines.cli import app

    sys.exit(app(["release", *sys.argv[1:]]))
