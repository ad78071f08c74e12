"""Record what a small five-category run decides, to compare two versions of the code (issue 12: the
category-plugin refactor must leave pair ids, labels and the shard schema unchanged).

    PYTHONPATH=<checkout> python scripts/behaviour_snapshot.py record OUT.json   # run on that checkout's code
    python scripts/behaviour_snapshot.py compare BASE.json NEW.json             # exit 1 on any difference

The run is the demo config on the first 3 bundled prompts of each image category (tests/helpers.py
`small_run_config`, with the tests' decisive panels and a pinned marker nonce, so labels are reproducible).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

CATEGORIES = ("composition", "aesthetics", "alignment", "text_rendering", "human_quality")
FLOATS = ("agreement", "confidence")
FLOAT_TOLERANCE = 1e-3  # run to run, on the same code, the tiny judges' confidences differ by ~1e-4 here


def record(path: str) -> None:
    import pyarrow.parquet as pq

    root = Path(os.environ.get("PYTHONPATH", ".").split(os.pathsep)[0]).resolve()
    sys.path.insert(0, str(root / "tests"))
    from helpers import DECISIVE_PANELS, small_run_config

    from pipelines.run import run
    from pipelines.store import shard_files

    tmp = Path(tempfile.mkdtemp(prefix="pf-snapshot-"))
    cfg = small_run_config(tmp, n_prompts=3, categories=CATEGORIES,
                           overrides={**DECISIVE_PANELS, ("marker_nonce",): "0123456789abcdef",
                                      ("ray", "num_cpus"): 4, ("ray", "include_dashboard"): False})
    run(cfg)
    out = Path(cfg.output.path)
    rows, schemas = [], {}
    for kind in ("pairs", "undecided", "errors"):
        for f in shard_files(out, kind):
            table = pq.read_table(f)
            schemas[kind] = table.schema.to_string(show_schema_metadata=True)
            for r in table.to_pylist():
                image_w = (r.get("image_w") or {}).get("bytes")
                rows.append({"kind": kind, "pair_id": r["pair_id"], "category": r["category"],
                             "winner": (r.get("generator_w") or {}).get("name"), "label_source": r.get("label_source"),
                             "reason": r.get("reason"), "agreement": r.get("agreement"),
                             "confidence": r.get("confidence"), "edit_dimensions": r.get("edit_dimensions"),
                             "required_text": r.get("required_text"), "ocr": r.get("ocr"),
                             "image_w_sha256": hashlib.sha256(image_w).hexdigest() if image_w else None})
    rows.sort(key=lambda r: r["pair_id"])
    Path(path).write_text(json.dumps({"rows": rows, "schemas": schemas}, indent=1, sort_keys=True))
    print(f"{len(rows)} rows -> {path}")


def compare(base_path: str, new_path: str) -> int:
    base, new = (json.loads(Path(p).read_text()) for p in (base_path, new_path))
    problems = []
    for kind in sorted(set(base["schemas"]) | set(new["schemas"])):
        if base["schemas"].get(kind) != new["schemas"].get(kind):
            problems.append(f"{kind}: shard schema differs")
    old_rows, new_rows = ({r["pair_id"]: r for r in d["rows"]} for d in (base, new))
    if set(old_rows) != set(new_rows):
        problems.append(f"pair ids differ: {len(set(old_rows) - set(new_rows))} only in base, "
                        f"{len(set(new_rows) - set(old_rows))} only in new")
    drift = 0.0
    for pid in sorted(set(old_rows) & set(new_rows)):
        old, cur = old_rows[pid], new_rows[pid]
        for k in FLOATS:  # the judges' log-probs move in the last digits with the batch a row lands in
            if (old[k] is None) != (cur[k] is None) or (old[k] is not None and abs(old[k] - cur[k]) > FLOAT_TOLERANCE):
                problems.append(f"{pid} ({old['category']}): {k} {old[k]} -> {cur[k]}")
            elif old[k] is not None:
                drift = max(drift, abs(old[k] - cur[k]))
        diff = {k: (old.get(k), cur.get(k)) for k in old if k not in FLOATS and old.get(k) != cur.get(k)}
        if diff:
            problems.append(f"{pid} ({old['category']}): {diff}")
    kinds = {k: sum(r["kind"] == k for r in base["rows"]) for k in ("pairs", "undecided", "errors")}
    print(f"base: {len(base['rows'])} rows {kinds}; new: {len(new['rows'])} rows")
    print("\n".join(problems) if problems else
          "identical: pair ids, winners, label sources, undecided reasons, edit dimensions, required text, OCR reads, "
          f"winner images and shard schemas; agreement and confidence within {drift:.1e}")
    return 1 if problems else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record(sys.argv[2])
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
