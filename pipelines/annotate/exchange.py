"""Annotating elsewhere: export a round's pairs to Label Studio or Argilla, import the answers back.

The exported files are self-contained (images inlined as data URIs, read from the shards) and carry the
pair id and which letter is shown on the left (`pf_left`, drawn per pair from the round's seed), so an
imported "left"/"right" lands in the database as A/B like a web answer, with `source` naming the tool.
Importing the same export twice adds nothing: an answer equal to the rater's latest one is not repeated.

Label Studio: `label_studio_config.xml` (its Pairwise tag for left/right, a Choices tag for tie and
can't tell) and `label_studio_tasks.json` (import it into the project); import the project's JSON export
(`annotations[].result`, `completed_by` names the rater as `ls-<id or email>`; a cancelled (skipped)
annotation is a skip).

Argilla (2.x): `argilla_records.json`, records in the shape of `rg.Record.to_dict()`: fields prompt,
guideline, left, right (images), metadata pair_id, category, pf_left; the question is a LabelQuestion
named `preference` with labels left, right, tie, cant_tell. Import the records with their `responses`
(`preference`: [{value, user_id}]); the rater is `argilla-<user_id>`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.engine import Engine

from pipelines.annotate import db
from pipelines.annotate.app import SIDE_COLUMNS, media_type, to_letter
from pipelines.annotate.study import new_tokens
from schemas.pair import stable_hash
from workers.publish import publish_atomically
from workers.rubrics import RUBRICS

LABEL_STUDIO_CONFIG = """<View>
  <Header value="$prompt"/>
  <Text name="guideline" value="$guideline"/>
  <Pairwise name="preference" toName="left,right"/>
  <View style="display: flex; gap: 1em;">
    <Image name="left" value="$left"/>
    <Image name="right" value="$right"/>
  </View>
  <Choices name="other" toName="left" choice="single" showInLine="true">
    <Choice value="tie"/>
    <Choice value="cant_tell"/>
  </Choices>
</View>
"""
RATER_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ExchangeError(ValueError):
    """An import file that cannot be read as the tool's export; the message names the file and the record."""


def _data_uri(data: bytes) -> str:
    return f"data:{media_type(data) or 'application/octet-stream'};base64,{base64.b64encode(data).decode()}"


def _pairs(out: Path, engine: Engine) -> Iterator[dict]:
    """Each item of the round with its left/right images (one shard read at a time) and its left letter."""
    seed = (db.load_config(engine) or {}).get("seed", 0)
    items = db.all_items(engine)
    for shard in sorted({i["shard"] for i in items}):
        of_shard = {i["pair_id"]: i for i in items if i["shard"] == shard}
        kind = next(iter(of_shard.values()))["kind"]
        columns = SIDE_COLUMNS[kind]
        table = pq.read_table(Path(out) / shard, columns=["pair_id", columns["A"], columns["B"]])
        for row in table.to_pylist():
            item = of_shard.get(row["pair_id"])
            if item is None:
                continue
            left = "A" if int(stable_hash("external-left", seed, item["pair_id"]), 16) % 2 == 0 else "B"
            right = "B" if left == "A" else "A"
            yield {**item, "pf_left": left, "left": _data_uri(row[columns[left]]["bytes"]),
                   "right": _data_uri(row[columns[right]]["bytes"])}


def _write_json_list(path: Path, records: Iterator[dict]) -> int:
    """Stream a JSON list to `path`, published atomically; returns the number of records."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for record in records:
                f.write(("," if count else "") + "\n" + json.dumps(record, ensure_ascii=False))
                count += 1
            f.write("\n]\n")

    publish_atomically(path, "annotate", write, replace=True)
    return count


def export_label_studio(out: Path, engine: Engine, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tasks = ({"data": {"pair_id": p["pair_id"], "category": p["category"], "prompt": p["prompt"],
                       "guideline": RUBRICS.get(p["category"], ""), "left": p["left"], "right": p["right"],
                       "pf_left": p["pf_left"]}} for p in _pairs(out, engine))
    _write_json_list(directory / "label_studio_tasks.json", tasks)
    publish_atomically(directory / "label_studio_config.xml", "annotate",
                       lambda tmp: tmp.write_text(LABEL_STUDIO_CONFIG), replace=True)
    return [directory / "label_studio_config.xml", directory / "label_studio_tasks.json"]


def export_argilla(out: Path, engine: Engine, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    records = ({"id": p["pair_id"],
                "fields": {"prompt": p["prompt"], "guideline": RUBRICS.get(p["category"], ""), "left": p["left"],
                           "right": p["right"]},
                "metadata": {"pair_id": p["pair_id"], "category": p["category"], "pf_left": p["pf_left"]},
                "suggestions": {}, "responses": {}, "vectors": {}, "status": "pending"} for p in _pairs(out, engine))
    _write_json_list(directory / "argilla_records.json", records)
    return [directory / "argilla_records.json"]


def _rater_name(prefix: str, who) -> str:
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return (prefix + RATER_CHARS.sub("_", str(who)))[:64]


def _label_studio_answers(path: Path, tasks) -> Iterator[tuple[str, str, str, str]]:
    """(rater, pair_id, screen choice, left letter) for every annotation of a Label Studio JSON export."""
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or "pair_id" not in data or data.get("pf_left") not in ("A", "B"):
            raise ExchangeError(f"{path}: task {n} has no data.pair_id / data.pf_left: not exported by pairforge")
        for annotation in task.get("annotations") or []:
            rater = _rater_name("ls-", annotation.get("completed_by"))
            if annotation.get("was_cancelled"):
                yield rater, data["pair_id"], "skip", data["pf_left"]
                continue
            choice = None
            for result in annotation.get("result") or []:
                value = result.get("value") or {}
                if result.get("type") == "pairwise" and value.get("selected") in ("left", "right"):
                    choice = value["selected"]
                elif result.get("type") == "choices" and value.get("choices"):
                    choice = value["choices"][0]
            if choice not in ("left", "right", "tie", "cant_tell"):
                raise ExchangeError(f"{path}: task {n} ({data['pair_id']}): an annotation by {rater} has no "
                                   "pairwise selection and no tie/cant_tell choice")
            yield rater, data["pair_id"], choice, data["pf_left"]


def _argilla_answers(path: Path, records) -> Iterator[tuple[str, str, str, str]]:
    for n, record in enumerate(records):
        meta = record.get("metadata") if isinstance(record, dict) else None
        if not isinstance(meta, dict) or "pair_id" not in meta or meta.get("pf_left") not in ("A", "B"):
            raise ExchangeError(f"{path}: record {n} has no metadata.pair_id / metadata.pf_left: not exported by pairforge")
        for response in (record.get("responses") or {}).get("preference") or []:
            value = response.get("value")
            if value not in ("left", "right", "tie", "cant_tell"):
                raise ExchangeError(f"{path}: record {n} ({meta['pair_id']}): preference {value!r} is not one of "
                                   "left, right, tie, cant_tell")
            yield _rater_name("argilla-", response.get("user_id")), meta["pair_id"], value, meta["pf_left"]


def import_answers(engine: Engine, path: Path, tool: str) -> dict[str, int]:
    """Store the answers of a Label Studio export or Argilla records file; returns counts."""
    try:
        records = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExchangeError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(records, list):
        raise ExchangeError(f"{path}: expected a JSON list of {'tasks' if tool == 'label_studio' else 'records'}")
    answers = list((_label_studio_answers if tool == "label_studio" else _argilla_answers)(Path(path), records))
    known = {i["pair_id"] for i in db.all_items(engine)}
    unknown = sorted({p for _, p, _, _ in answers} - known)
    if unknown:
        raise ExchangeError(f"{path}: {len(unknown)} pairs are not in this annotation round (first: {unknown[0]}): "
                           "import into the round the file was exported from")
    raters = set(db.rater_tokens(engine))
    new = sorted({r for r, _, _, _ in answers} - raters)
    if new:
        with engine.begin() as c:
            c.execute(db.raters.insert(), [{"name": n, "token": t} for n, t in new_tokens(new).items()])
    counts = {"answers": 0, "unchanged": 0, "raters_added": len(new)}
    for rater, pair_id, screen, left in answers:
        choice = to_letter(screen, left)
        with engine.connect() as c:
            mine = (db.answers.c.rater == rater) & (db.answers.c.pair_id == pair_id)
            history = c.execute(select(db.answers.c.choice).where(mine).order_by(db.answers.c.seq)).scalars().all()
        if history and history[-1] == choice:
            counts["unchanged"] += 1
            continue
        db.record_answer(engine, rater, pair_id, len(history) + 1, choice, left, source=tool)
        counts["answers"] += 1
    return counts
