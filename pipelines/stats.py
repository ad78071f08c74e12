"""The stats report of an output directory, computed from the shards, one file and batch at a time."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.store import shard_files

_COLUMNS = {
    "pairs": ["category", "label_source", "votes", "agreement", "confidence", "rewards"],
    "undecided": ["category", "reason", "votes"],
    "errors": ["category"],
}


def _iter_rows(out: Path, kind: str):
    for f in shard_files(out, kind):
        for batch in pq.ParquetFile(f).iter_batches(columns=_COLUMNS[kind], batch_size=4096):
            yield from batch.to_pylist()


def _vote_counters(votes: list[dict], c: Counter) -> None:
    by_judge: dict[str, dict] = defaultdict(dict)
    for v in votes:
        c["votes"] += 1
        c["abstentions"] += v["choice"] is None
        by_judge[v["judge"]][v["order"]] = v["choice"]
    for orders in by_judge.values():
        if orders.get("AB") and orders.get("BA"):
            c["judge_verdicts"] += 1
            c["position_flips"] += orders["AB"] == orders["BA"]  # same letter twice = followed the position


def compute_stats(out: str | Path) -> dict:
    out = Path(out)
    cats: dict[str, Counter] = defaultdict(Counter)
    agreement: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    sources: dict[str, Counter] = defaultdict(Counter)
    confidence_sum: Counter = Counter()
    reward_right: dict[str, Counter] = defaultdict(Counter)
    for row in _iter_rows(out, "pairs"):
        c = cats[row["category"]]
        c["pairs"] += 1
        sources[row["category"]][row["label_source"]] += 1
        if row["agreement"] is not None:
            agreement[row["category"]][f"{row['agreement']:.2f}"] += 1
        if row["confidence"] is not None:
            confidence_sum[row["category"]] += row["confidence"]
        _vote_counters(row["votes"] or [], c)
        for r in row["rewards"] or []:
            if r["score_w"] is not None and r["score_l"] is not None:
                reward_right[r["model"]]["pairs"] += 1
                reward_right[r["model"]]["agrees_with_label"] += r["score_w"] > r["score_l"]
    for row in _iter_rows(out, "undecided"):
        cats[row["category"]]["undecided"] += 1
        reasons[row["category"]][row["reason"]] += 1
        _vote_counters(row["votes"] or [], cats[row["category"]])
    for row in _iter_rows(out, "errors"):
        cats[row["category"]]["errors"] += 1

    def rate(num, den):
        return round(num / den, 4) if den else None

    report = {"categories": {}, "totals": Counter()}
    for cat in sorted(cats):
        c = cats[cat]
        report["categories"][cat] = {
            "pairs": c["pairs"], "undecided": c["undecided"], "errors": c["errors"],
            "undecided_reasons": dict(reasons[cat]), "label_sources": dict(sources[cat]),
            "agreement_histogram": dict(sorted(agreement[cat].items())),
            "mean_confidence": rate(confidence_sum[cat], c["pairs"]),
            "votes": c["votes"], "abstentions": c["abstentions"], "abstention_rate": rate(c["abstentions"], c["votes"]),
            "judge_verdicts": c["judge_verdicts"], "position_flips": c["position_flips"],
            "position_bias_rate": rate(c["position_flips"], c["judge_verdicts"]),
        }
        report["totals"].update({k: c[k] for k in ("pairs", "undecided", "errors", "votes", "abstentions",
                                                    "judge_verdicts", "position_flips")})
    t = report["totals"]
    report["totals"] = dict(t, abstention_rate=rate(t["abstentions"], t["votes"]),
                            position_bias_rate=rate(t["position_flips"], t["judge_verdicts"]))
    report["rewards"] = {m: {"pairs": c["pairs"], "agrees_with_label": rate(c["agrees_with_label"], c["pairs"])}
                         for m, c in sorted(reward_right.items())}
    manifest = out / "manifest.json"
    if manifest.exists():
        runs = json.loads(manifest.read_text()).get("runs") or [{}]
        targets = {c: v.get("target_pairs") for c, v in runs[-1].get("config", {}).get("categories", {}).items()}
        report["balance"] = {c: {"target": t, "pairs": cats[c]["pairs"] if c in cats else 0,
                                 "missing": max(0, t - (cats[c]["pairs"] if c in cats else 0)) if t else None}
                             for c, t in sorted(targets.items())}
    rejects = out / "rejects" / "prompts.parquet"
    if rejects.exists():
        table = pq.read_table(rejects, columns=["reject_reason"])
        report["rejected_prompts"] = dict(Counter(r.split(":")[0] for r in table.column("reject_reason").to_pylist()))
    return report


def format_stats(report: dict) -> str:
    lines = [f"{'category':<16}{'pairs':>7}{'undec.':>8}{'errors':>8}{'abstain':>9}{'pos.bias':>10}{'conf.':>8}"]
    for cat, c in report["categories"].items():
        ab = "-" if c["abstention_rate"] is None else f"{c['abstention_rate']:.1%}"
        pb = "-" if c["position_bias_rate"] is None else f"{c['position_bias_rate']:.1%}"
        conf = "-" if c["mean_confidence"] is None else f"{c['mean_confidence']:.3f}"
        lines.append(f"{cat:<16}{c['pairs']:>7}{c['undecided']:>8}{c['errors']:>8}{ab:>9}{pb:>10}{conf:>8}")
    t = report["totals"]
    lines.append(f"{'total':<16}{t['pairs']:>7}{t['undecided']:>8}{t['errors']:>8}")
    for cat, c in report["categories"].items():
        if c["agreement_histogram"]:
            lines.append(f"  {cat} agreement: " + ", ".join(f"{k}: {v}" for k, v in c["agreement_histogram"].items()))
        if c["undecided_reasons"]:
            lines.append(f"  {cat} undecided: " + ", ".join(f"{k}: {v}" for k, v in c["undecided_reasons"].items()))
    for m, r in report["rewards"].items():
        lines.append(f"  reward {m}: agrees with the label on {r['agrees_with_label']:.1%} of {r['pairs']} pairs")
    short = {c: b["missing"] for c, b in report.get("balance", {}).items() if b["missing"]}
    if short:
        lines.append("  short of target: " + ", ".join(f"{c}: {m} pairs" for c, m in short.items()))
    if report.get("rejected_prompts"):
        lines.append("  rejected prompts: " + ", ".join(f"{k}: {v}" for k, v in report["rejected_prompts"].items()))
    return "\n".join(lines)


def write_stats(out: str | Path) -> dict:
    from pipelines.store import write_atomic

    report = compute_stats(out)
    write_atomic(Path(out) / "stats.json", json.dumps(report, indent=1).encode())
    return report
