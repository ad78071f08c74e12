"""The stats report of an output directory, computed from the shards, one file and batch at a time."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.calibration import pair_reward_consistency
from pipelines.store import shard_files

_COLUMNS = {
    "pairs": ["pair_id", "category", "label_source", "votes", "agreement", "confidence", "rewards", "generator_w",
              "generator_l"],
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
    games: list[tuple[str, str, str, str]] = []  # (pair_id, category, winner generator, loser generator)
    for row in _iter_rows(out, "pairs"):
        c = cats[row["category"]]
        c["pairs"] += 1
        gw, gl = row["generator_w"], row["generator_l"]
        if gw and gl and gw["name"] != gl["name"]:  # same-generator pairs say nothing about generators
            games.append((row["pair_id"], row["category"], gw["name"], gl["name"]))
        consistent = pair_reward_consistency(row["rewards"] or [])  # from the scores: older shards lack the column
        if consistent is not None:
            c["reward_checked"] += 1
            c["reward_consistent"] += consistent
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

    summed = ("pairs", "undecided", "errors", "votes", "abstentions", "judge_verdicts", "position_flips",
              "reward_checked", "reward_consistent")
    report = {"categories": {}, "totals": Counter(dict.fromkeys(summed, 0))}  # all keys, even for an empty output
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
            "reward_consistency": rate(c["reward_consistent"], c["reward_checked"]),
        }
        report["totals"].update({k: c[k] for k in summed})
    t = report["totals"]
    report["totals"] = dict(t, abstention_rate=rate(t["abstentions"], t["votes"]),
                            position_bias_rate=rate(t["position_flips"], t["judge_verdicts"]),
                            reward_consistency=rate(t["reward_consistent"], t["reward_checked"]))
    report["arena"] = arena_report(out, games)
    report["rewards"] = {m: {"pairs": c["pairs"], "agrees_with_label": rate(c["agrees_with_label"], c["pairs"])}
                         for m, c in sorted(reward_right.items())}
    manifest = out / "manifest.json"
    if manifest.exists():
        runs = json.loads(manifest.read_text()).get("runs") or [{}]
        targets = {c: v.get("target_pairs") for c, v in runs[-1].get("config", {}).get("categories", {}).items()}
        have = {c: cats[c]["pairs"] if c in cats else 0 for c in targets}  # no defaultdict entries for absent ones
        report["balance"] = {c: {"target": t, "pairs": have[c], "missing": max(0, t - have[c]) if t else None}
                             for c, t in sorted(targets.items())}
    rejects = out / "rejects" / "prompts.parquet"
    if rejects.exists():
        table = pq.read_table(rejects, columns=["reject_reason"])
        report["rejected_prompts"] = dict(Counter(r.split(":")[0] for r in table.column("reject_reason").to_pylist()))
    return report


def arena_report(out: Path, games: list[tuple[str, str, str, str]]) -> dict | None:
    """Fit the Arena on every decided pair between two different generators; write each pair's expected
    quality gap to OUT/arena/gaps.parquet (pair_id, category, gap: the trainer's `data.gap_file`) and
    return the leaderboard with 95% intervals and the win-rate matrix."""
    import pyarrow as pa

    from pipelines.arena import expected_gap, fit_arena, leaderboard
    from pipelines.store import write_table_atomic

    if not games:
        return None
    ratings = fit_arena([g[2] for g in games], [g[3] for g in games])
    gaps = [expected_gap(ratings[w].mu, ratings[w].sigma, ratings[lo].mu, ratings[lo].sigma) for _, _, w, lo in games]
    write_table_atomic(pa.table({"pair_id": [g[0] for g in games], "category": [g[1] for g in games],
                                 "winner": [g[2] for g in games], "loser": [g[3] for g in games],
                                 "gap": pa.array(gaps, pa.float64())}), out / "arena" / "gaps.parquet")
    names = sorted(ratings)
    wins = {a: {b: 0 for b in names} for a in names}
    for _, _, w, lo in games:
        wins[w][lo] += 1
    matrix = {a: {b: (round(wins[a][b] / (wins[a][b] + wins[b][a]), 4) if wins[a][b] + wins[b][a] else None)
                  for b in names if b != a} for a in names}
    # Per category too: a generator's standing on text rendering says little about its aesthetics.
    by_category = {}
    for cat in sorted({g[1] for g in games}):
        mine = [g for g in games if g[1] == cat]
        by_category[cat] = {"leaderboard": leaderboard(fit_arena([g[2] for g in mine], [g[3] for g in mine])),
                            "pairs": len(mine)}
    return {"leaderboard": leaderboard(ratings), "win_rate": matrix, "pairs": len(games), "by_category": by_category}


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
    if report["totals"].get("reward_consistency") is not None:
        lines.append(f"  reward consistency (every reward model ranks the same image higher): "
                     f"{report['totals']['reward_consistency']:.1%} of {report['totals']['reward_checked']} pairs")
    if report.get("arena"):
        board = ", ".join(f"{r['generator']} {r['mu']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
                          for r in report["arena"]["leaderboard"])
        lines.append(f"  arena ({report['arena']['pairs']} pairs): {board}")
        for cat, a in report["arena"]["by_category"].items():
            lines.append(f"    {cat} ({a['pairs']} pairs): " + ", ".join(f"{r['generator']} {r['mu']:+.2f}"
                                                                      for r in a["leaderboard"]))
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
