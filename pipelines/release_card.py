"""The release's dataset card (README.md, through huggingface_hub's card classes, with the `configs` the Hub
and `datasets` read instead of a loading script) and its Croissant file (mlcroissant)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

# The Hub's size buckets (README metadata `size_categories`).
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]

LABELS = {
    "vlm_panel": "a panel of VLM judges compares the two images in both orders (A/B and B/A); each judge's "
                 "log-odds are averaged over the orders (cancelling position bias), the image more judges prefer "
                 "by the quorum wins if the pooled log-odds agree; `confidence` = sigmoid(|pooled log-odds|), "
                 "`agreement` = share of judges with a verdict that chose the winner",
    "construction": "alignment pairs: one generator and seed draws the prompt and a perturbation of it "
                    "(`prompt_l`, `edit_dimensions`); the image of the original prompt wins by construction "
                    "(`confidence` 1.0); video_text_alignment pairs animate such a pair with one motion prompt "
                    "(spatial) or one image with two motion prompts (temporal), the original prompt's video winning",
    "ocr": "text rendering, stage 1: OCR reads both images; an exact reading of the required text beats one "
           "with character errors (`ocr` holds both reads; no confidence is stored)",
    "reward": "best-of-N: reward models score N images of the prompt; the winner is drawn from the upper Pareto "
              "front of the calibrated rewards, the loser from the lowest (no confidence is stored)",
    "inherited": "visual_quality: both images of an image pair whose judge panel was unanimous are animated with one "
                 "shared motion prompt; the pair's label carries over (`parent_pair_id` names the image pair)",
    "vlm_score": "motion_quality: one first frame animated twice; video judges score each video's motion from their "
                 "score-token probabilities (`scores`), the higher expected score wins when the gap is inside the "
                 "configured band; `confidence` = P(winner's score > loser's), `agreement` = share of judges whose own "
                 "gap agrees; the measured optical flow (`motion`) is kept as evidence",
}


def video_categories(written: dict) -> list[str]:
    from pipelines.release import is_video

    return [c for c in written["data"] if is_video(c)]


def size_category(n: int) -> str:
    return next((name for limit, name in _SIZES if n < limit), "n>1B")


def _configs(written: dict) -> list[dict]:
    """A config per category, `all` (the default: every category, same schema) and `no_images`."""
    data = written["data"]
    splits_all = sorted({s for cat in data.values() for s in cat}, key=_split_order)
    configs = [{"config_name": "all", "default": True,
                "data_files": [{"split": s, "path": f"data/*/{s}-*.parquet"} for s in splits_all]}]
    for cat, splits in data.items():
        configs.append({"config_name": cat, "data_files": [{"split": s, "path": f"data/{cat}/{s}-*.parquet"}
                                                           for s in sorted(splits, key=_split_order)]})
    if written.get("no_images"):
        twin = sorted({s for cat in written["no_images"].values() for s in cat}, key=_split_order)
        configs.append({"config_name": "no_images",
                        "data_files": [{"split": s, "path": f"no_images/*/{s}-*.parquet"} for s in twin]})
    return configs


def _split_order(split: str) -> int:
    return ["train", "validation", "test", "test_unique"].index(split)


def _infos(stage: Path, written: dict):
    """`dataset_info` per config (features, split sizes), as `push_to_hub` writes it."""
    import pyarrow.parquet as pq
    from datasets import Features
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo

    def info(tree: str, cats: list[str]) -> DatasetInfo:
        by_split: dict[str, Counter] = {}
        for c in cats:
            for s, v in written[tree][c].items():
                by_split.setdefault(s, Counter()).update(rows=v["rows"], bytes=v["bytes"],
                                                         download=sum((stage / f).stat().st_size for f in v["files"]))
        splits = SplitDict()
        for s in sorted(by_split, key=_split_order):
            splits.add(SplitInfo(name=s, num_bytes=by_split[s]["bytes"], num_examples=by_split[s]["rows"]))
        first = written[tree][cats[0]][next(iter(written[tree][cats[0]]))]["files"][0]
        features = Features.from_arrow_schema(pq.read_schema(stage / first))
        return DatasetInfo(features=features, splits=splits, download_size=sum(c["download"] for c in by_split.values()),
                           dataset_size=sum(c["bytes"] for c in by_split.values()))

    infos = DatasetInfosDict({"all": info("data", list(written["data"]))})
    for cat in written["data"]:
        infos[cat] = info("data", [cat])
    if written.get("no_images"):
        infos["no_images"] = info("no_images", list(written["no_images"]))
    return infos


def _runs(sources: list[dict]) -> list[dict]:
    return [run for s in sources for run in s["manifest"].get("runs", [])]


def _models(sources: list[dict]) -> tuple[dict, dict, dict]:
    """Generators, judges and rewards named in the runs' configs: name -> model ref (and resolved path)."""
    gens, judges, rewards = {}, {}, {}
    for run in _runs(sources):
        cfg, paths = run.get("config", {}), run.get("model_paths", {})
        for target, key in ((gens, "generators"), (judges, "judges"), (rewards, "rewards")):
            for name, m in (cfg.get(key) or {}).items():
                target[name] = {"model": m.get("model"), "resolved": paths.get(m.get("model")),
                                **({"backend": m["backend"]} if "backend" in m else {})}
    return gens, judges, rewards


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _body(cfg, written: dict, report: dict, sources: list[dict]) -> str:
    c = cfg.card
    data = written["data"]
    split_names = ["train", "validation", "test"] + (["test_unique"] if cfg.splits.test_unique else [])
    lines = [f"# {c.pretty_name}", "", c.description or "Visual preference pairs generated and labelled by pairforge.", ""]
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", "",
              'ds = load_dataset("REPO_OR_PATH", "all", split="train")        # every category',
              f'ds = load_dataset("REPO_OR_PATH", "{next(iter(data))}", split="test")',
              'ds[0]["image_w"]   # PIL image of the preferred (winning) image; image_l the other', "```", ""]
    videos = video_categories(written)
    if videos:
        lines += ["Video categories (" + ", ".join(f"`{v}`" for v in videos) + ") hold H.264 MP4 videos in `video_w` / "
                  "`video_l` ({bytes, path}, datasets' `Video` feature; decoding needs `torchcodec`), with `frames`, "
                  "`fps`, `width`, `height`; their `image_w` / `image_l` are the first frames the videos were animated "
                  "from. Without torchcodec, read the MP4 bytes:", "", "```python", "from datasets import Video", "",
                  f'ds = load_dataset("REPO_OR_PATH", "{videos[0]}", split="train")',
                  'ds = ds.cast_column("video_w", Video(decode=False)).cast_column("video_l", Video(decode=False))',
                  'ds[0]["video_w"]["bytes"]   # the MP4 file (PyAV, imageio or any player reads it)', "```", ""]
    lines += [
              "Configs: `all` (default), one per category" + (", and `no_images` (the same rows without pixels: "
              "`generator_w` / `generator_l` hold the model, seed, steps and guidance that reproduce them)"
              if written.get("no_images") else "") + ".", ""]
    lines += ["## Categories and splits", "", "| category | label sources | " + " | ".join(split_names) + " |",
              "|---|---|" + "---|" * len(split_names)]
    for cat, splits in data.items():
        sources_of = ", ".join(sorted(_label_sources(sources, cat))) or "-"
        lines.append(f"| {cat} | {sources_of} | " + " | ".join(str(splits.get(s, {}).get("rows", 0)) for s in split_names) + " |")
    total = sum(v["rows"] for cat in data.values() for s, v in cat.items() if s != "test_unique")
    lines += ["", f"{total} pairs. Splits are assigned per prompt by a stable hash of its normalised text (NFKC, "
              f"case-folded, punctuation and whitespace collapsed) with salt `{cfg.splits.salt}`: train "
              f"{cfg.splits.train:g}, validation {cfg.splits.validation:g}, test {cfg.splits.test:g} of the prompts. No "
              "prompt is in two splits, and a later release of grown outputs keeps every earlier pair in its split."
              + (" `test_unique` holds one test pair per prompt (Pick-a-Pic's `*_unique` convention)."
                 if cfg.splits.test_unique else ""), ""]
    lines += ["## Fields", "", "`image_w` / `image_l`: the preferred and the other image (a video pair's: the first "
              "frames); `video_w` / `video_l`, `frames`, `fps`: a video pair's videos (null in image pairs); `prompt` "
              "(and `prompt_l`, the loser's prompt for alignment); `label_source`, `confidence`, `agreement`, `votes` "
              "(every judge's answer and log-probabilities in both orders); `rewards`; `generator_w` / `generator_l`; "
              "category details (`edit_dimensions`, `required_text`, `ocr`, `scores`, `candidates`, `motion`, "
              "`parent_pair_id`). The full schema is in the `dataset_info` above and in pairforge's `schemas/pair.py`.", ""]
    lines += ["## How the labels were made", ""]
    used = sorted({s for cat in data for s in _label_sources(sources, cat)})
    lines += [f"- **{s}**: {LABELS.get(s, s)}" for s in used]
    panels = {name: p for run in _runs(sources) for name, p in (run.get("config", {}).get("panels") or {}).items()}
    for name, p in panels.items():
        lines.append(f"- panel `{name}`: judges {', '.join(p['judges'])}; quorum {p.get('quorum')}, "
                     f"tie margin {p.get('tie_margin')}")
    lines += ["", "## Label quality (from each run output's stats; over all of its pairs, before selection)", ""]
    for s in sources:
        st = s["stats"]
        if not st:
            lines.append(f"- `{s['dir']}`: no stats.json")
            continue
        lines += [f"Output `{s['dir']}`:", "", "| category | decided | ties | conflicts | mean confidence | position bias | "
                  "abstentions | reward consistency |", "|---|---|---|---|---|---|---|---|"]
        for cat, v in st.get("categories", {}).items():
            d = v.get("decisions", {})
            mc = v.get("mean_confidence")
            lines.append(f"| {cat} | {d.get('decided', v.get('pairs'))} | {d.get('tie', 0)} | {d.get('conflict', 0)} | "
                         f"{'n/a' if mc is None else f'{mc:.3f}'} | {_pct(v.get('position_bias_rate'))} | "
                         f"{_pct(v.get('abstention_rate'))} | {_pct(v.get('reward_consistency'))} |")
        board = (st.get("arena") or {}).get("leaderboard") or []
        if board:
            lines += ["", "Arena (generator capability mu with its 95% interval; Thurstone fit over the judged pairs):", "",
                      "| generator | mu | 95% interval | wins / games |", "|---|---|---|---|"]
            lines += [f"| {b['generator']} | {b['mu']:.3f} | {b['low']:.3f} .. {b['high']:.3f} | {b['wins']} / {b['games']} |"
                      for b in board]
        lines.append("")
    gens, judges, rewards = _models(sources)
    lines += ["## Generators, judges and reward models", ""]
    for title, models in (("generator", gens), ("judge", judges), ("reward", rewards)):
        lines += [f"- {title} `{n}`: `{m['model']}`" + (f" ({m['backend']})" if m.get("backend") else "")
                  for n, m in models.items()]
    versions = {k: v for run in _runs(sources) for k, v in (run.get("versions") or {}).items()}
    if versions:
        lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    t = report["totals"]
    decon = cfg.decontamination
    lines += ["", "## Selection and decontamination", "",
              "Only decided pairs are released (undecided ties and conflicts, and rows that failed to generate, are "
              "not). Per category, what was read and dropped (`release_report.json` has the same as JSON):", "",
              "| category | decided | dropped | released |", "|---|---|---|---|"]
    for cat, v in report["categories"].items():
        dropped = ", ".join(f"{r}: {n}" for r, n in v["dropped"].items()) or "-"
        lines.append(f"| {cat} | {v['decided']} | {dropped} | {v['released_pairs']} |")
    lines += ["", f"Decontamination against {len(decon.eval_sets)} evaluation prompt set(s)"
              + (f" ({', '.join(es.name or Path(es.path).name for es in decon.eval_sets)})" if decon.eval_sets else "")
              + f": {t['decontaminated_prompts']} prompt(s), {t['decontaminated_pairs']} pair(s) removed ("
              + ", ".join(m for m in (
                  "normalised exact match" if decon.exact else None,
                  f"MinHash Jaccard >= {decon.minhash_threshold}" if decon.minhash_threshold else None,
                  f"embedding cosine >= {decon.embedding_threshold} with {decon.embedder}" if decon.embedding_threshold else None,
              ) if m) + "). "
              "Each removed prompt, the eval prompt it matched and the method are in `decontamination.json`.", ""]
    limitations = [
        "Labels are machine-generated (VLM judges, OCR, construction, reward models), not human preferences; "
        "judges share biases (position, style, length of prompt) that averaging over both orders only partly removes.",
        "`confidence` assumes independent judges; correlated judges overstate it.",
        "Label-quality figures above are computed over each run output as a whole, before selection.",
        "Decontamination catches exact, near-duplicate and paraphrased prompts within its thresholds; paraphrases "
        "further away, and images close to evaluation images, are not detected.",
        "Images are as generated: they carry the generators' biases and licenses.",
    ]
    lines += ["## Known limitations", ""] + [f"- {x}" for x in limitations + list(c.limitations)]
    lines += ["", "## Files", "", "- `data/<category>/<split>-NNNNN-of-NNNNN.parquet`: the pairs"
              + ("; `no_images/`: the same without pixels" if written.get("no_images") else ""),
              "- `release_report.json`, `decontamination.json`: what was selected, dropped and removed",
              "- `sources/`: each run output's `manifest.json` (resolved configs, versions, shard checksums) and `stats.json`",
              "- `croissant.json`: Croissant metadata" if cfg.croissant else "",
              "- `SHA256SUMS`: every other file (`sha256sum -c SHA256SUMS`); the data files' checksums are also in this "
              "card's metadata (`pairforge.data_sha256`)", ""]
    if c.citation:
        lines += ["## Citation", "", "```bibtex", c.citation.strip(), "```", ""]
    return "\n".join(x for x in lines if x is not None) + "\n"


def _label_sources(sources: list[dict], cat: str) -> set[str]:
    return {s for src in sources if src["stats"] for s in (src["stats"]["categories"].get(cat, {}).get("label_sources") or {})}


def write_card(stage: Path, cfg, written: dict, report: dict, sources: list[dict]) -> Path:
    from huggingface_hub import DatasetCard, DatasetCardData

    from pipelines.release import data_checksums

    c = cfg.card
    checksums = data_checksums(written)
    released = report["totals"]["released_pairs"]
    data_files = sorted(f for cats in written.values() for splits in cats.values() for v in splits.values() for f in v["files"])
    card_data = DatasetCardData(
        pretty_name=c.pretty_name, license=c.license, language=c.language, task_categories=c.task_categories,
        tags=c.tags, size_categories=[size_category(released)], annotations_creators=["machine-generated"],
        source_datasets=["original"], configs=_configs(written),
        pairforge={"release": cfg.name, "config_hash": report["config_hash"], "pipeline_version": report["pipeline_version"],
                   "data_sha256": {f: checksums[f] for f in data_files}},
        **({"homepage": c.homepage} if c.homepage else {}))
    _infos(stage, written).to_dataset_card_data(card_data)
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{_body(cfg, written, report, sources)}")
    path = stage / "README.md"
    card.save(path)
    return path


def write_croissant(stage: Path, cfg, written: dict, sources: list[dict]) -> Path:
    """croissant.json: one FileSet and one RecordSet per category, the scalar fields and both images, and the
    responsible-AI fields (Croissant RAI)."""
    import mlcroissant as mlc

    scalar = {"pair_id": mlc.DataType.TEXT, "category": mlc.DataType.TEXT, "prompt": mlc.DataType.TEXT,
              "prompt_l": mlc.DataType.TEXT, "label_source": mlc.DataType.TEXT, "agreement": mlc.DataType.FLOAT,
              "confidence": mlc.DataType.FLOAT, "width": mlc.DataType.INTEGER, "height": mlc.DataType.INTEGER}
    distribution, record_sets = [], []
    videos = video_categories(written)
    for cat in written["data"]:
        fs_id = f"parquet-{cat}"
        distribution.append(mlc.FileSet(id=fs_id, name=fs_id, encoding_formats=["application/x-parquet"],
                                        includes=[f"data/{cat}/{split}-*.parquet" for split in written["data"][cat]
                                                  if split != "test_unique"]))  # test_unique repeats test rows
        fields = [mlc.Field(id=f"{cat}/{name}", name=name, data_types=[dtype],
                            source=mlc.Source(file_set=fs_id, extract=mlc.Extract(column=name)))
                  for name, dtype in scalar.items()]
        video = cat in videos
        media = [(name, mlc.DataType.IMAGE_OBJECT, ("the preferred " if name == "image_w" else "the other ")
                  + ("video's first frame" if video else "image")) for name in ("image_w", "image_l")]
        if video:
            fields += [mlc.Field(id=f"{cat}/{name}", name=name, data_types=[dtype],
                                 source=mlc.Source(file_set=fs_id, extract=mlc.Extract(column=name)))
                       for name, dtype in (("frames", mlc.DataType.INTEGER), ("fps", mlc.DataType.FLOAT))]
            media += [(name, mlc.DataType.VIDEO_OBJECT, f"the {'preferred' if name == 'video_w' else 'other'} video "
                       "(H.264 MP4)") for name in ("video_w", "video_l")]
        fields += [mlc.Field(id=f"{cat}/{name}", name=name, data_types=[dtype], description=description,
                             source=mlc.Source(file_set=fs_id, extract=mlc.Extract(column=name),
                                               transforms=[mlc.Transform(json_path="bytes")]))
                   for name, dtype, description in media]
        record_sets.append(mlc.RecordSet(id=cat, name=cat, fields=fields,
                                         description=f"{cat} preference pairs (all splits)"))
    c = cfg.card
    metadata = mlc.Metadata(
        name=cfg.name, description=c.description or c.pretty_name, license=[c.license], url=c.homepage,
        cite_as=c.citation or f"{c.pretty_name} (pairforge release {cfg.name})", version="1.0.0",
        date_published=datetime.now(timezone.utc), keywords=c.tags, in_language=c.language,
        distribution=distribution, record_sets=record_sets,
        data_collection="Prompts from the configured prompt sources, normalised, filtered and deduplicated; both "
                        "images of each pair drawn by text-to-image generators"
                        + (", both videos of a video pair by image-to-video generators from first frames" if videos else "")
                        + " (see sources/*/manifest.json).",
        data_collection_type=["Machine-generated"],
        data_annotation_protocol=[LABELS[s] for s in ("vlm_panel", "construction", "ocr", "reward")
                                  + (("inherited", "vlm_score") if videos else ())],
        machine_annotation_tools=[f"{kind} {name}: {m['model']}"
                                  for kind, models in zip(("judge", "reward"), _models(sources)[1:])
                                  for name, m in models.items()] or ["pairforge"],
        data_biases=["Judges' position and style biases; generators' social and aesthetic biases."],
        data_limitations=["Machine-generated labels, not human preferences; see the dataset card."],
        data_use_cases=["Preference optimisation (Diffusion-DPO) and reward-model training for text-to-image"
                        + (" and image-to-video" if videos else "") + " models."],
        personal_sensitive_information=["None intended: synthetic images from text prompts; prompts are filtered "
                                        "by a blocklist only."],
    )
    path = stage / "croissant.json"
    path.write_text(json.dumps(metadata.to_json(), indent=1, default=str))
    return path
