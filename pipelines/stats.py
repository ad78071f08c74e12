"""The stats report of an output directory, computed from the shards one file and batch at a time with
pyarrow group-bys (memory does not grow with the number of pairs), and the Arena's per-pair gaps."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.store import TMP_PREFIX, shard_files
from schemas.pair import UNDECIDED_REASONS

_GENERATORS = ["generator_w.name", "generator_w.model", "generator_l.name", "generator_l.model"]  # the Arena's
_COLUMNS = {
    "pairs": ["category", "label_source", "votes", "agreement", "confidence", "rewards", "scores", "decided_by",
              "cascade_small", *_GENERATORS],
    "undecided": ["category", "reason", "votes", "decided_by", "cascade_small"],
    "errors": ["category"],
}
GAP_SCHEMA = pa.schema([("pair_id", pa.string()), ("category", pa.string()), ("winner", pa.string()),
                        ("loser", pa.string()), ("gap", pa.float64())])
_BATCH = 65_536


def _batches(files: list[Path], columns: list[str]):
    """Tables of about _BATCH rows: large shards are read in parts, small ones (a run writes 1,000-row
    shards) together, so that the per-batch work is amortised."""
    pending, rows = [], 0
    for f in files:
        shard = pq.ParquetFile(f)
        present = [c for c in columns if c.split(".")[0] in shard.schema_arrow.names]  # older shards lack newer columns
        for batch in shard.iter_batches(columns=present, batch_size=_BATCH):
            if pending and (rows + batch.num_rows > _BATCH or batch.schema != pending[0].schema):
                yield pa.Table.from_batches(pending)
                pending, rows = [], 0
            pending.append(batch)
            rows += batch.num_rows
    if pending:
        yield pa.Table.from_batches(pending)


def _tables(out: Path, kind: str):
    return _batches(shard_files(out, kind), _COLUMNS[kind])


def _grouped(table: pa.Table, keys: list[str], *aggregations) -> list[dict]:
    return table.group_by(keys).aggregate(list(aggregations) or [([], "count_all")]).to_pylist()


def _vote_counters(table: pa.Table, cats: dict[str, Counter]) -> None:
    """Votes and abstentions per category, judge verdicts (a judge that answered in both orders) and position
    flips among them (the same letter twice = it followed the position, not the image)."""
    votes = table.column("votes").combine_chunks()
    rows = pc.list_parent_indices(votes)
    flat = pc.list_flatten(votes)
    v = pa.table({"row": rows, "category": table.column("category").take(rows), "judge": pc.struct_field(flat, "judge"),
                  "order": pc.struct_field(flat, "order"), "choice": pc.struct_field(flat, "choice")})
    for g in _grouped(v, ["category"], ([], "count_all"), ("choice", "count", pc.CountOptions(mode="only_null"))):
        cats[g["category"]]["votes"] += g["count_all"]
        cats[g["category"]]["abstentions"] += g["choice_count"]
    answered = v.filter(pc.is_valid(v["choice"]))
    ab = answered.filter(pc.equal(answered["order"], "AB")).select(["row", "judge", "category", "choice"])
    ba = answered.filter(pc.equal(answered["order"], "BA")).select(["row", "judge", "choice"])
    both = ab.join(ba.rename_columns(["row", "judge", "choice_ba"]), keys=["row", "judge"], join_type="inner")
    both = both.append_column("flip", pc.equal(both["choice"], both["choice_ba"]))
    for g in _grouped(both, ["category"], ([], "count_all"), ("flip", "sum")):
        cats[g["category"]]["judge_verdicts"] += g["count_all"]
        cats[g["category"]]["position_flips"] += g["flip_sum"]


def _reward_counters(table: pa.Table, cats: dict[str, Counter], reward_right: dict[str, Counter]) -> None:
    """Per reward model: pairs it scored and how often it ranks the winner higher; per category: pairs with
    two or more scoring models, and those on which all of them agree (calibration.reward_consistent)."""
    rewards = table.column("rewards").combine_chunks()
    flat = pc.list_flatten(rewards)
    r = pa.table({"row": pc.list_parent_indices(rewards), "model": pc.struct_field(flat, "model"),
                  "w": pc.struct_field(flat, "score_w"), "l": pc.struct_field(flat, "score_l")})
    r = r.filter(pc.and_(pc.is_valid(r["w"]), pc.is_valid(r["l"])))
    r = r.append_column("win", pc.greater(r["w"], r["l"])).append_column("loss", pc.less(r["w"], r["l"]))
    for g in _grouped(r, ["model"], ([], "count_all"), ("win", "sum")):
        reward_right[g["model"]]["pairs"] += g["count_all"]
        reward_right[g["model"]]["agrees_with_label"] += g["win_sum"]
    per_pair = r.group_by("row").aggregate([([], "count_all"), ("win", "sum"), ("loss", "sum")])
    n = per_pair["count_all"]
    checked = pc.greater_equal(n, 2)
    unanimous = pc.or_(pc.equal(per_pair["win_sum"], n), pc.equal(per_pair["loss_sum"], n))
    per_pair = pa.table({"category": table.column("category").take(per_pair["row"]), "checked": checked,
                         "consistent": pc.and_(checked, unanimous)})
    for g in _grouped(per_pair, ["category"], ("checked", "sum"), ("consistent", "sum")):
        cats[g["category"]]["reward_checked"] += g["checked_sum"]
        cats[g["category"]]["reward_consistent"] += g["consistent_sum"]


def _score_counters(table: pa.Table, cats: dict[str, Counter]) -> None:
    """Per category, over (pair, score judge) with both images scored: winner and loser expected scores,
    how often the winner scores higher, and the summed spreads."""
    if "scores" not in table.column_names:  # shards written before score judges existed
        return
    scores = table.column("scores").combine_chunks()
    rows = pc.list_parent_indices(scores)
    flat = pc.list_flatten(scores)
    s = pa.table({"row": rows, "category": table.column("category").take(rows), "judge": pc.struct_field(flat, "judge"),
                  "side": pc.struct_field(flat, "side"), "expected": pc.struct_field(flat, "expected"),
                  "std": pc.struct_field(flat, "std")})
    s = s.filter(pc.is_valid(s["expected"]))
    w = s.filter(pc.equal(s["side"], "w")).select(["row", "judge", "category", "expected", "std"])
    lo = s.filter(pc.equal(s["side"], "l")).select(["row", "judge", "expected", "std"])
    both = w.join(lo.rename_columns(["row", "judge", "expected_l", "std_l"]), keys=["row", "judge"], join_type="inner")
    both = both.append_column("agrees", pc.greater(both["expected"], both["expected_l"]))
    both = both.append_column("spread", pc.add(both["std"], both["std_l"]))
    for g in _grouped(both, ["category"], ([], "count_all"), ("expected", "sum"), ("expected_l", "sum"),
                      ("agrees", "sum"), ("spread", "sum")):
        c = cats[g["category"]]
        c["scored"] += g["count_all"]
        c["score_w"] += g["expected_sum"]
        c["score_l"] += g["expected_l_sum"]
        c["score_agrees"] += g["agrees_sum"]
        c["score_std"] += g["spread_sum"]


def _cascade_counters(table: pa.Table, cats: dict[str, Counter], decided: bool) -> None:
    """Judge cascades (rows with a small-panel verdict): rows labelled, rows escalated to the large panel,
    and on the escalated rows the large panel decided, how often the small panel's pooled evidence leaned
    to the same image and how often it had itself decided it (just not confidently enough)."""
    if "cascade_small" not in table.column_names:  # shards written before cascades existed
        return
    small = table.column("cascade_small")
    t = table.select(["category"]).append_column("small", pc.is_valid(small)).append_column(
        "escalated", pc.and_(pc.is_valid(small), pc.fill_null(pc.equal(table.column("decided_by"), "panel"), False)))
    if decided:
        lean, winner = pc.struct_field(small, "lean"), pc.struct_field(small, "winner")
        t = t.append_column("lean_w", pc.and_(t["escalated"], pc.fill_null(pc.equal(lean, "w"), False)))
        t = t.append_column("small_won", pc.and_(t["escalated"], pc.is_valid(winner)))
        t = t.append_column("winner_w", pc.and_(t["escalated"], pc.fill_null(pc.equal(winner, "w"), False)))
    sums = ["small", "escalated"] + (["lean_w", "small_won", "winner_w"] if decided else [])
    for g in _grouped(t, ["category"], *[(c, "sum") for c in sums]):
        g = {k: v or 0 for k, v in g.items()}  # a group's sum over no true value is 0, not null
        c = cats[g["category"]]
        c["cascade_rows"] += g["small_sum"]
        c["cascade_escalated"] += g["escalated_sum"]
        if decided:
            c["cascade_escalated_decided"] += g["escalated_sum"]
            c["cascade_lean_agrees"] += g["lean_w_sum"]
            c["cascade_small_decided"] += g["small_won_sum"]
            c["cascade_small_agrees"] += g["winner_w_sum"]


def compute_stats(out: str | Path) -> dict:
    out = Path(out)
    cats: dict[str, Counter] = defaultdict(Counter)
    agreement: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    sources: dict[str, Counter] = defaultdict(Counter)
    confidence_sum: Counter = Counter()  # over the pairs that store a confidence (panel, construction)
    reward_right: dict[str, Counter] = defaultdict(Counter)
    wins: Counter = Counter()  # the Arena's data: pairs per (category, winner, loser)
    pair_files = shard_files(out, "pairs")  # listed once: the Arena's gap pass reads these same shards
    for t in _batches(pair_files, _COLUMNS["pairs"]):
        for g in _grouped(t, ["category", "label_source"]):
            cats[g["category"]]["pairs"] += g["count_all"]
            sources[g["category"]][g["label_source"]] += g["count_all"]
        for g in _grouped(t, ["category", "agreement"]):
            if g["agreement"] is not None:
                agreement[g["category"]][f"{g['agreement']:.2f}"] += g["count_all"]
        below = t.append_column("below_half", pc.less(t["confidence"], 0.5))  # a label against its own evidence
        for g in _grouped(below, ["category"], ("confidence", "sum"), ("confidence", "count"), ("below_half", "sum")):
            confidence_sum[g["category"]] += g["confidence_sum"] or 0.0
            cats[g["category"]]["confidence_stored"] += g["confidence_count"]
            cats[g["category"]]["confidence_below_half"] += g["below_half_sum"] or 0
        _vote_counters(t, cats)
        _reward_counters(t, cats, reward_right)
        _score_counters(t, cats)
        _cascade_counters(t, cats, decided=True)
        for g in _grouped(_arena_games(t, "category"), ["category", "winner", "loser"]):
            wins[g["category"], g["winner"], g["loser"]] += g["count_all"]
    for t in _tables(out, "undecided"):
        for g in _grouped(t, ["category", "reason"]):
            cats[g["category"]]["undecided"] += g["count_all"]
            reasons[g["category"]][g["reason"]] += g["count_all"]
        _vote_counters(t, cats)
        _cascade_counters(t, cats, decided=False)
    for t in _tables(out, "errors"):
        for g in _grouped(t, ["category"]):
            cats[g["category"]]["errors"] += g["count_all"]

    def rate(num, den):
        return round(num / den, 4) if den else None

    summed = ("pairs", "undecided", "errors", "votes", "abstentions", "judge_verdicts", "position_flips",
              "reward_checked", "reward_consistent", "confidence_stored", "confidence_below_half")
    report = {"categories": {}, "totals": Counter(dict.fromkeys(summed, 0))}  # all keys, even for an empty output
    for cat in sorted(cats):
        c = cats[cat]
        report["categories"][cat] = {
            "pairs": c["pairs"], "undecided": c["undecided"], "errors": c["errors"],
            "undecided_reasons": dict(reasons[cat]), "label_sources": dict(sources[cat]),
            "decisions": {"decided": c["pairs"], **{r: reasons[cat][r] for r in UNDECIDED_REASONS}},
            "agreement_histogram": dict(sorted(agreement[cat].items())),
            "mean_confidence": rate(confidence_sum[cat], c["confidence_stored"]),
            "confidence_below_half": rate(c["confidence_below_half"], c["confidence_stored"]),
            "votes": c["votes"], "abstentions": c["abstentions"], "abstention_rate": rate(c["abstentions"], c["votes"]),
            "judge_verdicts": c["judge_verdicts"], "position_flips": c["position_flips"],
            "position_bias_rate": rate(c["position_flips"], c["judge_verdicts"]),
            "reward_consistency": rate(c["reward_consistent"], c["reward_checked"]),
            # Score judges on decided pairs, one entry per (pair, judge) with both images scored.
            "scores": {"scored": c["scored"], "mean_expected_w": rate(c["score_w"], c["scored"]),
                       "mean_expected_l": rate(c["score_l"], c["scored"]),
                       "agrees_with_label": rate(c["score_agrees"], c["scored"]),
                       "mean_std": rate(c["score_std"], 2 * c["scored"])} if c["scored"] else None,
            # Judge cascade: the share of its labelled rows that went to the large panel; on those the large
            # panel decided, the small panel's agreement with it (by where its evidence leaned, and on the
            # ones it had decided below escalate_below).
            "cascade": {"labelled": c["cascade_rows"], "escalated": c["cascade_escalated"],
                        "escalated_share": rate(c["cascade_escalated"], c["cascade_rows"]),
                        "large_decided": c["cascade_escalated_decided"],
                        "small_agreement": rate(c["cascade_lean_agrees"], c["cascade_escalated_decided"]),
                        "small_decided": c["cascade_small_decided"],
                        "small_decided_agreement": rate(c["cascade_small_agrees"], c["cascade_small_decided"]),
                        } if c["cascade_rows"] else None,
        }
        report["totals"].update({k: c[k] for k in summed})
    t = report["totals"]
    decisions = Counter()
    for c in report["categories"].values():
        decisions.update(c["decisions"])
    report["totals"] = dict(t, abstention_rate=rate(t["abstentions"], t["votes"]),
                            decisions={k: decisions[k] for k in ("decided", *UNDECIDED_REASONS)},
                            confidence_below_half=rate(t["confidence_below_half"], t["confidence_stored"]),
                            position_bias_rate=rate(t["position_flips"], t["judge_verdicts"]),
                            reward_consistency=rate(t["reward_consistent"], t["reward_checked"]))
    report["arena"] = arena_report(out, pair_files, wins)
    report["rewards"] = {m: {"pairs": c["pairs"], "agrees_with_label": rate(c["agrees_with_label"], c["pairs"])}
                         for m, c in sorted(reward_right.items())}
    manifest = out / "manifest.json"
    if manifest.exists():
        runs = json.loads(manifest.read_text()).get("runs") or [{}]
        targets = {c: v.get("target_pairs") for c, v in runs[-1].get("config", {}).get("categories", {}).items()}
        have = {c: cats[c]["pairs"] if c in cats else 0 for c in targets}  # no defaultdict entries for absent ones
        report["balance"] = {c: {"target": t, "pairs": have[c], "missing": max(0, t - have[c]) if t else None}
                             for c, t in sorted(targets.items())}
        report["cost"] = cost_report(runs)
    rejects = out / "rejects" / "prompts.parquet"
    if rejects.exists():
        table = pq.read_table(rejects, columns=["reject_reason"])
        report["rejected_prompts"] = dict(Counter(r.split(":")[0] for r in table.column("reject_reason").to_pylist()))
    from pipelines.agreement import stats_section

    if human := stats_section(out):  # the last `pairforge agreement` of a human annotation round
        report["human_agreement"] = human
    return report


def cost_report(runs: list[dict]) -> dict | None:
    """Over every run in the manifest: busy seconds per pair of each stage per category (summed busy
    seconds over summed pairs written), busy and GPU-seconds per stage, and the last run's bottleneck."""
    costed = [r["cost"] for r in runs if r.get("cost")]
    if not costed:
        return None
    busy, pairs, stages = Counter(), Counter(), {}
    for cost in costed:
        pairs.update(cost["pairs"])
        for stage, by_cat in cost["busy_by_category"].items():
            busy.update({(stage, c): v for c, v in by_cat.items()})
        for stage, st in cost["stages"].items():
            acc = stages.setdefault(stage, Counter())
            acc.update(busy_s=st["busy_s"], gpu_s=st["gpu_s"], rows=st["rows"])
    per_pair = {c: {s: round(v / pairs[c], 4) for (s, cat), v in sorted(busy.items()) if cat == c}
                for c in sorted(pairs) if pairs[c]}
    return {"s_per_pair": per_pair, "stages": {s: {k: round(v, 3) for k, v in acc.items()} for s, acc in stages.items()},
            "bottleneck_last_run": costed[-1]["bottleneck"], "runs": len(costed)}


def _participant(table: pa.Table, side: str) -> pa.ChunkedArray:
    """A side's Arena participant: its generator, or for a prompt's existing image `existing:<prompt source>`
    (each source's images are one population of quality, as a generator's are)."""
    name, model = pc.struct_field(table[side], "name"), pc.struct_field(table[side], "model")
    return pc.if_else(pc.equal(name, "existing"), pc.binary_join_element_wise("existing:", model, ""), name)


def _arena_games(table: pa.Table, *keep: str) -> pa.Table:
    """The `keep` columns, winner and loser of the pairs whose two sides both name a generator."""
    games = pa.table({**{c: table[c] for c in keep},
                      "winner": _participant(table, "generator_w"), "loser": _participant(table, "generator_l")})
    return games.filter(pc.and_(pc.is_valid(games["winner"]), pc.is_valid(games["loser"])))


def arena_report(out: Path, files: list[Path], wins: Counter) -> dict | None:
    """Fit the Arena (pipelines/arena.py) from `wins`, the pair count per (category, winner, loser) that the
    stats pass counted in `files`; then read those files again and write every such pair's expected quality
    gap, same-generator pairs included, to OUT/arena/gaps.parquet (the trainer's `data.gap_file`), batch by
    batch. Returns the leaderboard with 95% posterior intervals of mu and capability spreads, the win-rate
    matrix and one leaderboard per category."""
    from pipelines.arena import MIN_GENERATORS_FOR_SPREADS, fit_arena, gap_matrix, leaderboard

    if not wins:
        return None
    overall: Counter = Counter()
    for (_, w, lo), n in wins.items():
        overall[w, lo] += n
    ratings = fit_arena(overall)
    names = sorted({g for key in overall for g in key})
    gaps = _write_gaps(out / "arena" / "gaps.parquet", files, names, gap_matrix(ratings, names))
    rated = sorted(ratings)
    matrix = {a: {b: (round(overall[a, b] / (overall[a, b] + overall[b, a]), 4) if overall[a, b] + overall[b, a]
                      else None) for b in rated if b != a} for a in rated}
    # Per category too: a generator's standing on text rendering says little about its aesthetics.
    by_category = {}
    for cat in sorted({c for c, _, _ in wins}):
        mine = {(w, lo): n for (c, w, lo), n in wins.items() if c == cat and w != lo}
        if mine:
            by_category[cat] = {"leaderboard": leaderboard(fit_arena(mine)), "pairs": sum(mine.values())}
    return {"leaderboard": leaderboard(ratings), "win_rate": matrix,
            "pairs": sum(n for (w, lo), n in overall.items() if w != lo), "gaps": gaps,
            "spreads": "per generator" if len(ratings) >= MIN_GENERATORS_FOR_SPREADS else "common",
            "by_category": by_category}


def _write_gaps(path: Path, files: list[Path], names: list[str], gaps: np.ndarray) -> int:
    """Stream the pairs again and write each pair's gaps[winner, loser]; atomic (temp name + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    index, rows = pa.array(names), 0
    try:
        with pq.ParquetWriter(tmp, GAP_SCHEMA, compression="zstd") as writer:
            for t in _batches(files, ["pair_id", "category", *_GENERATORS]):
                games = _arena_games(t, "pair_id", "category")
                w = pc.index_in(games["winner"], value_set=index).to_numpy()
                lo = pc.index_in(games["loser"], value_set=index).to_numpy()
                writer.write_table(games.append_column("gap", pa.array(gaps[w, lo])).cast(GAP_SCHEMA))
                rows += games.num_rows
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def format_stats(report: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    # decided = pairs; tie / conflict / no_quorum / all_abstained = undecided by reason; conf. = mean
    # confidence of the pairs that store one; conf<.5 = share of them below 0.5 (always 0: a label's
    # confidence is its winner's probability).
    lines = [f"{'category':<16}{'decided':>8}{'tie':>6}{'conflict':>9}{'no_quor.':>9}{'all_abst.':>10}{'errors':>7}"
             f"{'abstain':>9}{'pos.bias':>10}{'conf.':>7}{'conf<.5':>8}"]
    for cat, c in report["categories"].items():
        d = c["decisions"]
        conf = "-" if c["mean_confidence"] is None else f"{c['mean_confidence']:.3f}"
        lines.append(f"{cat:<16}{d['decided']:>8}{d['tie']:>6}{d['conflict']:>9}{d['no_quorum']:>9}"
                     f"{d['all_abstained']:>10}{c['errors']:>7}{pct(c['abstention_rate']):>9}"
                     f"{pct(c['position_bias_rate']):>10}{conf:>7}{pct(c['confidence_below_half']):>8}")
    t = report["totals"]
    d = t["decisions"]
    lines.append(f"{'total':<16}{d['decided']:>8}{d['tie']:>6}{d['conflict']:>9}{d['no_quorum']:>9}"
                 f"{d['all_abstained']:>10}{t['errors']:>7}{'':>26}{pct(t['confidence_below_half']):>8}")
    for cat, c in report["categories"].items():
        if c["agreement_histogram"]:
            lines.append(f"  {cat} agreement: " + ", ".join(f"{k}: {v}" for k, v in c["agreement_histogram"].items()))
        if c["scores"]:
            sc = c["scores"]
            lines.append(f"  {cat} scores: winners {sc['mean_expected_w']:.2f} vs losers {sc['mean_expected_l']:.2f}, "
                         f"higher for the winner in {sc['agrees_with_label']:.1%} of {sc['scored']} (pair, judge), "
                         f"mean spread {sc['mean_std']:.2f}")
        if c.get("cascade"):
            k = c["cascade"]
            agree = "-" if k["small_agreement"] is None else f"{k['small_agreement']:.1%}"
            lines.append(f"  {cat} cascade: {k['escalated']} of {k['labelled']} escalated to the large panel "
                         f"({k['escalated_share']:.1%}); on the {k['large_decided']} it decided, the small panel "
                         f"leaned the same way on {agree}")
    for m, r in report["rewards"].items():
        lines.append(f"  reward {m}: agrees with the label on {r['agrees_with_label']:.1%} of {r['pairs']} pairs")
    if report["totals"].get("reward_consistency") is not None:
        lines.append(f"  reward consistency (every reward model ranks the same image higher): "
                     f"{report['totals']['reward_consistency']:.1%} of {report['totals']['reward_checked']} pairs")
    if report.get("arena"):
        a = report["arena"]
        board = ", ".join(f"{r['generator']} {r['mu']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] spread {r['spread']:.2f}"
                          for r in a["leaderboard"])
        lines.append(f"  arena ({a['pairs']} pairs between generators; {a['gaps']} gaps; {a['spreads']} spreads): {board}")
        for cat, a in report["arena"]["by_category"].items():
            lines.append(f"    {cat} ({a['pairs']} pairs): " + ", ".join(f"{r['generator']} {r['mu']:+.2f}"
                                                                      for r in a["leaderboard"]))
    short = {c: b["missing"] for c, b in report.get("balance", {}).items() if b["missing"]}
    if short:
        lines.append("  short of target: " + ", ".join(f"{c}: {m} pairs" for c, m in short.items()))
    if report.get("cost"):
        c = report["cost"]
        lines.append(f"  cost over {c['runs']} run(s), busy seconds per pair: " + "; ".join(
            f"{cat} {sum(v.values()):.2f} (" + ", ".join(f"{s} {x:.2f}" for s, x in v.items()) + ")"
            for cat, v in c["s_per_pair"].items()) + f"; last run's bottleneck: {c['bottleneck_last_run']}")
    if report.get("rejected_prompts"):
        lines.append("  rejected prompts: " + ", ".join(f"{k}: {v}" for k, v in report["rejected_prompts"].items()))
    if report.get("human_agreement"):
        from pipelines.agreement import format_section

        lines += format_section(report["human_agreement"])
    return "\n".join(lines)


def write_stats(out: str | Path) -> dict:
    from pipelines.store import write_atomic

    report = compute_stats(out)
    write_atomic(Path(out) / "stats.json", json.dumps(report, indent=1).encode())
    return report
