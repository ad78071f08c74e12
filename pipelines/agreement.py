"""`pairforge agreement OUT`: how far the pipeline's labels agree with people, and people with each other.

Inputs: the round's items and each rater's latest answer per pair (pipelines/annotate/db.py), in the
pair's letters (A = the pipeline's winner of a decided pair). A/B/tie are ratings; can't-tell and skip
count as missing.

- Leave-one-out (ViPO's protocol): for every rating r of pair p with an A/B answer, the reference is the
  strict majority of the *other* raters' A/B answers on p (no reference when they split evenly or there
  are none). The human figure is how often r matches it; a label source's figure (vlm_panel, ocr,
  construction, ...) is how often the pipeline's label matches the same references, so both are
  measured against majorities of the same size. Human ties are left out of both sides.
- Fleiss' kappa (statsmodels) over the pairs rated by the most common number of raters, and
  Krippendorff's alpha (the `krippendorff` package, nominal) over every rating; both on A/B/tie.
- Gold accuracy per rater: the share of their ratings of gold-eligible pairs (constructed truth) that
  name the true winner (a tie is wrong).
- Position bias per rater: the share of their A/B answers that picked the image shown on the left,
  with a two-sided binomial test against 1/2.
- Confidence bins of the panel: panel-labelled pairs with a strict human majority (all raters), by the
  panel's confidence, lowest agreement first: the bins where a confidence threshold would drop most
  disagreements.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from schemas.annotate import RATINGS

CONFIDENCE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def majority(votes: list[str]) -> str | None:
    """The strict majority of A/B votes (None when they split evenly or there are none)."""
    a, b = votes.count("A"), votes.count("B")
    return "A" if a > b else "B" if b > a else None


def _share(hits: int, n: int) -> dict:
    return {"agree": hits / n if n else None, "n": n}


def fleiss(ratings_by_item: list[list[str]]) -> dict:
    """Fleiss' kappa on A/B/tie over the items rated by the most common number (>= 2) of raters."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    counts = Counter(len(r) for r in ratings_by_item if len(r) >= 2)
    if not counts:
        return {"kappa": None, "items": 0, "raters_per_item": None}
    k = max(counts, key=lambda m: (counts[m], m))
    table = np.array([[r.count(c) for c in RATINGS] for r in ratings_by_item if len(r) == k])
    used = table.sum(axis=0) > 0
    if len(table) < 2 or used.sum() < 2:  # one answer everywhere: chance agreement is 1, kappa undefined
        return {"kappa": None, "items": len(table), "raters_per_item": k}
    return {"kappa": float(fleiss_kappa(table[:, used], method="fleiss")), "items": len(table), "raters_per_item": k}


def kripp_alpha(ratings: dict[str, dict[str, str]], raters: list[str]) -> dict:
    """Krippendorff's alpha (nominal) on A/B/tie; `ratings` is pair_id -> rater -> rating."""
    import krippendorff

    pairs = [p for p, by in ratings.items() if len(by) >= 2]
    values = {c: i for i, c in enumerate(RATINGS)}
    data = np.full((len(raters), len(pairs)), np.nan)
    for j, p in enumerate(pairs):
        for i, r in enumerate(raters):
            if r in ratings[p]:
                data[i, j] = values[ratings[p][r]]
    if len(pairs) < 1 or len(np.unique(data[~np.isnan(data)])) < 2:
        return {"alpha": None, "items": len(pairs)}
    return {"alpha": float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")), "items": len(pairs)}


def _bin(confidence: float) -> str:
    """The confidence bin, e.g. "0.6-0.7"; the last bin includes 1.0."""
    return next(f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(CONFIDENCE_EDGES, CONFIDENCE_EDGES[1:])
                if confidence < hi or hi == CONFIDENCE_EDGES[-1])


def _group(items: list[dict], ratings: dict[str, dict[str, str]], raters: list[str]) -> dict:
    """The figures of one group of items (a category, or all of them)."""
    loo_human = [0, 0]
    loo_label: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # hits, n, human hits on the same refs, n
    full: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    bins: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    undecided = [0, 0]
    for item in items:
        by = ratings.get(item["pair_id"], {})
        for rater, choice in by.items():
            if choice not in ("A", "B"):
                continue
            ref = majority([c for r, c in by.items() if r != rater])
            if ref is None:
                continue
            loo_human[0] += choice == ref
            loo_human[1] += 1
            if item["label"]:
                s = loo_label[item["label_source"]]
                s[0] += item["label"] == ref
                s[1] += 1
                s[2] += choice == ref
                s[3] += 1
        maj = majority(list(by.values()))
        if item["label"] and maj:
            full[item["label_source"]][0] += item["label"] == maj
            full[item["label_source"]][1] += 1
            if item["label_source"] == "vlm_panel" and item["confidence"] is not None:
                b = bins[_bin(item["confidence"])]
                b[0] += item["label"] == maj
                b[1] += 1
        if not item["label"] and by:
            undecided[0] += maj is not None
            undecided[1] += 1
    answered = [c for i in items for c in ratings.get(i["pair_id"], {}).values()]
    return {
        "pairs": len(items),
        "rated_pairs": sum(bool(ratings.get(i["pair_id"])) for i in items),
        "ratings": len(answered),
        "tie_share": answered.count("tie") / len(answered) if answered else None,
        "human_vs_others": _share(*loo_human),
        "labels_vs_others": {src: {**_share(h, n), "human_agree": hh / hn if hn else None}
                             for src, (h, n, hh, hn) in sorted(loo_label.items())},
        "labels_vs_majority": {src: _share(h, n) for src, (h, n) in sorted(full.items())},
        "undecided_with_human_majority": _share(*undecided),
        "fleiss": fleiss([list(ratings.get(i["pair_id"], {}).values()) for i in items]),
        "krippendorff": kripp_alpha({i["pair_id"]: ratings.get(i["pair_id"], {}) for i in items}, raters),
        "panel_confidence_bins": sorted(({"bin": k, **_share(h, n)} for k, (h, n) in bins.items()),
                                        key=lambda b: (b["agree"], b["bin"])),
    }


def _raters(items: list[dict], answers: list[dict], ratings: dict[str, dict[str, str]], raters: list[str]) -> dict:
    from scipy.stats import binomtest

    truth = {i["pair_id"]: i["truth"] for i in items if i["truth"]}
    out = {}
    for rater in raters:
        mine = [a for a in answers if a["rater"] == rater]
        gold = [truth[a["pair_id"]] == a["choice"] for a in mine if a["pair_id"] in truth and a["choice"] in RATINGS]
        sided = [a["choice"] == a["shown_left"] for a in mine if a["choice"] in ("A", "B") and a["shown_left"]]
        loo = [0, 0]
        for a in mine:
            if a["choice"] in ("A", "B"):
                ref = majority([c for r, c in ratings.get(a["pair_id"], {}).items() if r != rater])
                if ref:
                    loo[0] += a["choice"] == ref
                    loo[1] += 1
        out[rater] = {
            "answers": dict(sorted(Counter(a["choice"] for a in mine).items())),
            "vs_others": _share(*loo),
            "gold": {"accuracy": sum(gold) / len(gold) if gold else None, "n": len(gold)},
            "left_share": sum(sided) / len(sided) if sided else None,
            "left_n": len(sided),
            "left_p": float(binomtest(sum(sided), len(sided), 0.5).pvalue) if sided else None,
        }
    return out


def compute_agreement(items: list[dict], answers: list[dict], raters: list[str]) -> dict:
    """`items`: rows of db.items; `answers`: each rater's latest answer per pair (db.latest_answers)."""
    ratings: dict[str, dict[str, str]] = defaultdict(dict)
    for a in answers:
        if a["choice"] in RATINGS:
            ratings[a["pair_id"]][a["rater"]] = a["choice"]
    by_category = defaultdict(list)
    for item in items:
        by_category[item["category"]].append(item)
    return {
        "categories": {c: _group(its, ratings, raters) for c, its in sorted(by_category.items())},
        "overall": _group(items, ratings, raters),
        "raters": _raters(items, answers, ratings, raters),
    }


def write_agreement(out: Path, engine) -> dict:
    from pipelines.annotate import db
    from pipelines.store import write_atomic

    report = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "database": engine.url.render_as_string(hide_password=True),
              **compute_agreement(db.all_items(engine), db.latest_answers(engine), list(db.rater_tokens(engine)))}
    write_atomic(Path(out) / "agreement.json", json.dumps(report, indent=1).encode())
    return report


def _pct(share: dict | float | None) -> str:
    value = share.get("agree") if isinstance(share, dict) else share
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    n = f" ({share['n']})" if isinstance(share, dict) else ""
    return f"{100 * value:.1f}%{n}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_agreement(report: dict) -> str:
    lines = [f"{'category':<22}{'pairs':>6}{'ratings':>8}  {'panel vs others':>16}  {'human vs others':>16}"
             f"  {'panel vs majority':>17}{'kappa':>8}{'alpha':>8}"]
    for name, g in [*report["categories"].items(), ("ALL", report["overall"])]:
        panel = g["labels_vs_others"].get("vlm_panel", {})
        lines.append(f"{name:<22}{g['rated_pairs']:>6}{g['ratings']:>8}  {_pct(panel) if panel else '-':>16}"
                     f"  {_pct(g['human_vs_others']):>16}  {_pct(g['labels_vs_majority'].get('vlm_panel')):>17}"
                     f"{_num(g['fleiss']['kappa']):>8}{_num(g['krippendorff']['alpha']):>8}")
    lines += ["", f"{'rater':<16}{'answers':>8}  {'vs others':>14}  {'gold acc':>12}  {'left share':>16}"]
    for name, r in report["raters"].items():
        gold = f"{_pct(r['gold']['accuracy'])} ({r['gold']['n']})"
        left = "-" if r["left_share"] is None else f"{100 * r['left_share']:.0f}% p={r['left_p']:.2g}"
        lines.append(f"{name:<16}{sum(r['answers'].values()):>8}  {_pct(r['vs_others']):>14}  {gold:>12}  {left:>16}")
    bins = report["overall"]["panel_confidence_bins"]
    if bins:
        lines += ["", "panel confidence bins, lowest agreement with the human majority first:"]
        lines += [f"  {b['bin']}: {_pct(b)}" for b in bins]
    return "\n".join(lines)


def stats_section(out: Path) -> dict | None:
    """The headline figures of OUT/agreement.json for `pairforge stats` and the HTML report (None when no
    round was scored): per category and overall, rated pairs, panel and human vs the others' majority,
    kappa and alpha."""
    path = Path(out) / "agreement.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())

    def headline(g: dict) -> dict:
        return {"rated_pairs": g["rated_pairs"], "panel_vs_others": g["labels_vs_others"].get("vlm_panel"),
                "human_vs_others": g["human_vs_others"], "kappa": g["fleiss"]["kappa"], "alpha": g["krippendorff"]["alpha"]}

    return {"generated_at": report["generated_at"], "overall": headline(report["overall"]),
            "categories": {c: headline(g) for c, g in report["categories"].items()}}


def format_section(section: dict) -> list[str]:
    lines = [f"  human agreement (pairforge agreement, {section['generated_at']}): "
             "panel vs others / human vs others / kappa / alpha"]
    for name, h in [*section["categories"].items(), ("ALL", section["overall"])]:
        lines.append(f"    {name}: {_pct(h['panel_vs_others']) if h['panel_vs_others'] else '-'} / "
                     f"{_pct(h['human_vs_others'])} / {_num(h['kappa'])} / {_num(h['alpha'])} ({h['rated_pairs']} pairs rated)")
    return lines


def html_section(section: dict) -> str:
    from html import escape

    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{h['rated_pairs']}</td>"
        f"<td>{escape(_pct(h['panel_vs_others']) if h['panel_vs_others'] else '-')}</td>"
        f"<td>{escape(_pct(h['human_vs_others']))}</td><td>{_num(h['kappa'])}</td><td>{_num(h['alpha'])}</td></tr>"
        for name, h in [*section["categories"].items(), ("ALL", section["overall"])])
    return (f"<h2>Human agreement</h2><p class='sub'>pairforge agreement, {escape(section['generated_at'])}; "
            "leave-one-out: each rating's reference is the majority of the other raters</p>"
            "<table class='stats' id='human-agreement'><tr><th>category</th><th>rated pairs</th><th>panel vs others (n)</th>"
            f"<th>human vs others (n)</th><th>Fleiss' kappa</th><th>Krippendorff's alpha</th></tr>{rows}</table>")
