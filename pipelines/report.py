"""`pairforge stats OUT --html FILE`: one self-contained HTML page (figures and thumbnails inlined) that
shows a run at a glance: category balance, agreement, position bias and abstentions, reward
consistency, the Arena leaderboard with intervals (overall and per category), the generator win-rate
matrix, and sample pairs per category with their votes. Video pairs show both videos playing (muted, looped
`<video>` elements with the stored H.264 MP4 inlined; a video above PREVIEW_MAX_BYTES is re-encoded smaller
first so the page stays light) with their frame count, rate and size."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.store import shard_files

SAMPLES_PER_CATEGORY = 3
# A stored video up to this size is inlined as is (the demo's are a few kB); a larger one (a 720p clip is
# megabytes, and the page holds up to 2 x SAMPLES_PER_CATEGORY per category) is re-encoded to
# PREVIEW_SIDE px on its long side and at most PREVIEW_SECONDS.
PREVIEW_MAX_BYTES = 512 * 1024
PREVIEW_SIDE = 320
PREVIEW_SECONDS = 6.0


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figures(report: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = report["categories"]
    names = list(cats)
    x = np.arange(len(names))
    figs = {}

    def stacked(ax, series: dict[str, list[float]], colors=None):
        bottom = np.zeros(len(names))
        for k, (label, values) in enumerate(series.items()):
            ax.bar(x, values, bottom=bottom, label=label, color=colors[k] if colors else None)
            bottom += np.asarray(values, dtype=float)
        ax.set_xticks(x, names, rotation=20)
        ax.legend(fontsize=8)

    fig, ax = plt.subplots(figsize=(7, 3))
    stacked(ax, {kind: [cats[c][kind] for c in names] for kind in ("pairs", "undecided", "errors")},
            ["#3b7dd8", "#f0a030", "#d04040"])
    targets = [report.get("balance", {}).get(c, {}).get("target") for c in names]
    if any(targets):
        ax.scatter(x, [t or np.nan for t in targets], marker="_", s=900, color="black", label="target", zorder=3)
        ax.legend(fontsize=8)
    ax.set_ylabel("rows")
    ax.set_title("Category balance")
    figs["balance"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    levels = sorted({k for c in names for k in cats[c]["agreement_histogram"]})
    stacked(ax, {f"agreement {lv}": [cats[c]["agreement_histogram"].get(lv, 0) for c in names] for lv in levels})
    ax.set_ylabel("pairs")
    ax.set_title("Panel agreement")
    figs["agreement"] = _figure_png(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    rates = [("position_bias_rate", "position bias"), ("abstention_rate", "abstentions"),
             ("reward_consistency", "reward consistency")]
    for k, (key, label) in enumerate(rates):
        ax.bar(x + (k - 1) * 0.27, [cats[c][key] or 0 for c in names], width=0.27, label=label)
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.legend(fontsize=8)
    ax.set_title("Judge position bias, abstentions, reward consistency")
    figs["rates"] = _figure_png(fig)

    arena = report.get("arena")
    if arena and arena["leaderboard"]:  # no leaderboard when every pair is one generator against itself
        board = arena["leaderboard"]
        fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * len(board)), layout="constrained")
        y = np.arange(len(board))[::-1]
        mu = np.array([r["mu"] for r in board])
        spread = np.array([r["spread"] for r in board])
        ax.barh(y, 2 * spread, left=mu - spread, height=0.5, color="C0", alpha=0.15, label="output quality, mu +- spread")
        ax.errorbar(mu, y, xerr=[mu - [r["low"] for r in board], [r["high"] for r in board] - mu], fmt="o", capsize=4,
                    label="mu, 95% posterior interval")
        ax.set_yticks(y, [r["generator"] for r in board])
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("capability (relative to the field)")
        fig.legend(fontsize=7, loc="outside lower center", ncol=2)
        ax.set_title(f"Arena leaderboard ({arena['pairs']} pairs)")
        figs["arena"] = _figure_png(fig)

        cats_arena = arena.get("by_category") or {}
        if len(cats_arena) > 1:
            order = [r["generator"] for r in board]
            fig, axes = plt.subplots(1, len(cats_arena), figsize=(2.2 * len(cats_arena) + 1, 0.8 + 0.45 * len(order)),
                                     sharey=True, squeeze=False, layout="constrained")
            for ax, (cat, a) in zip(axes[0], cats_arena.items()):
                rows = {r["generator"]: r for r in a["leaderboard"]}
                ys = [len(order) - 1 - i for i, g in enumerate(order) if g in rows]
                ms = np.array([rows[g]["mu"] for g in order if g in rows])
                ax.errorbar(ms, ys, xerr=[ms - [rows[g]["low"] for g in order if g in rows],
                                          [rows[g]["high"] for g in order if g in rows] - ms], fmt="o", capsize=3)
                ax.axvline(0, color="grey", lw=0.5)
                ax.set_title(f"{cat} ({a['pairs']})", fontsize=9)
            axes[0][0].set_yticks(range(len(order))[::-1], order)
            fig.suptitle("Arena by category (95% intervals)", fontsize=10)
            figs["arena_by_category"] = _figure_png(fig)

    if arena and len(gens := list(arena["win_rate"])) >= 2:
        matrix = np.array([[arena["win_rate"][a].get(b) if a != b else np.nan for b in gens] for a in gens], float)
        fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(gens), 1 + 0.8 * len(gens)))
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
        for i in range(len(gens)):
            for j in range(len(gens)):
                if not np.isnan(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(gens)), gens, rotation=30)
        ax.set_yticks(range(len(gens)), gens)
        ax.set_title("Win rate of row vs column")
        fig.colorbar(image, ax=ax, fraction=0.05)
        figs["win_rate"] = _figure_png(fig)
    return figs


def _thumbnail(data: bytes, size: int = 160) -> str:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((size, size))
    if min(img.size) < 96:  # tiny demo images: enlarge so a person can see them
        img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _video_preview(data: bytes) -> str:
    """A data: URL of an MP4 a browser plays: the stored video, or a smaller re-encoding of a large one."""
    if len(data) > PREVIEW_MAX_BYTES:
        data = _small_mp4(data)
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def _small_mp4(data: bytes) -> bytes:
    import av
    import numpy as np

    from workers.media import mp4_bytes

    # Decoded frame by frame and shrunk as it goes: the whole clip at full size would not need to fit in memory.
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 8)
        scale = min(1.0, PREVIEW_SIDE / max(stream.codec_context.width, stream.codec_context.height))
        w, h = (2 * max(1, round(n * scale / 2)) for n in (stream.codec_context.width, stream.codec_context.height))
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())
            if len(frames) >= PREVIEW_SECONDS * fps:
                break
    return mp4_bytes(np.stack(frames), fps)


def _media(r: dict, side: str, label: str) -> str:
    """One side of a sample pair: the video playing for a video pair, the image's thumbnail otherwise."""
    name = html.escape(r[f"generator_{side}"]["name"])
    video = r.get(f"video_{side}")
    if video and video.get("bytes"):
        info = f"{r['frames']} frames, {r['fps']:g} fps, {r['width']}x{r['height']}"
        return (f"<figure><video class='preview' src='{_video_preview(video['bytes'])}' muted loop autoplay playsinline "
                f"width='{max(160, min(320, r['width']))}' title='{label}'></video>"
                f"<figcaption>{label}: {name}<br>{info}</figcaption></figure>")
    return (f"<figure><img src='{_thumbnail(r[f'image_{side}']['bytes'])}' alt='{label}'><figcaption>{label}: "
            f"{name}</figcaption></figure>")


def _samples(out: Path) -> dict[str, list[dict]]:
    samples: dict[str, list[dict]] = {}
    for f in shard_files(out, "pairs"):
        have = samples.setdefault(f.parent.name, [])
        if len(have) >= SAMPLES_PER_CATEGORY:
            continue
        table = pq.read_table(f).slice(0, SAMPLES_PER_CATEGORY - len(have))
        have += table.to_pylist()
    return samples


def _votes_table(votes: list[dict]) -> str:
    if not votes:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(v['judge'])}</td><td>{v['order']}</td><td>{v['choice'] or 'abstained'}</td>"
        f"<td>{_num(v['logprob_a'])}</td><td>{_num(v['logprob_b'])}</td></tr>" for v in votes)
    return ("<table class='votes'><tr><th>judge</th><th>order</th><th>choice</th><th>log P(A)</th>"
            f"<th>log P(B)</th></tr>{rows}</table>")


def render_html(out: str | Path, report: dict) -> str:
    out = Path(out)
    figs = _figures(report)
    t = report["totals"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pairforge report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}"
        "h1{margin-bottom:0}.sub{color:#666;margin-top:4px}.figs img{max-width:100%;margin:8px 0}"
        ".pair{display:flex;gap:16px;align-items:flex-start;border-top:1px solid #ddd;padding:10px 0}"
        ".pair figure{margin:0;text-align:center;font-size:12px}.prompt{font-size:14px;max-width:420px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
        ".stats td{text-align:right}video.preview{image-rendering:pixelated;background:#000}</style></head><body>",
        f"<h1>pairforge report</h1><p class='sub'>{html.escape(str(out.resolve()))}</p>",
        f"<p>{t['pairs']} pairs, {t['undecided']} undecided, {t['errors']} errors; position bias "
        f"{_pct(t.get('position_bias_rate'))}, abstentions {_pct(t.get('abstention_rate'))}, reward consistency "
        f"{_pct(t.get('reward_consistency'))}.</p>",
        "<table class='stats'><tr><th>category</th><th>pairs</th><th>undecided</th><th>errors</th>"
        "<th>target</th><th>position bias</th><th>abstentions</th><th>reward consistency</th></tr>",
    ]
    for c, s in report["categories"].items():
        target = report.get("balance", {}).get(c, {}).get("target")
        parts.append(f"<tr><td>{html.escape(c)}</td><td>{s['pairs']}</td><td>{s['undecided']}</td><td>{s['errors']}</td>"
                     f"<td>{target or ''}</td><td>{_pct(s['position_bias_rate'])}</td><td>{_pct(s['abstention_rate'])}</td>"
                     f"<td>{_pct(s['reward_consistency'])}</td></tr>")
    parts.append("</table><div class='figs'>")
    parts += [f"<img alt='{k}' src='{v}'>" for k, v in figs.items()]
    parts.append("</div>")
    if report.get("human_agreement"):
        from pipelines.agreement import html_section

        parts.append(html_section(report["human_agreement"]))
    parts.append("<h2>Sample pairs</h2>")
    for category, rows in _samples(out).items():
        parts.append(f"<h3>{html.escape(category)}</h3>")
        for r in rows:
            extra = ""
            if r.get("prompt_l"):
                extra += f"<p><b>loser's prompt:</b> {html.escape(r['prompt_l'])}</p>"
            if r.get("edit_dimensions"):
                extra += f"<p><b>changed:</b> {html.escape(', '.join(r['edit_dimensions']))}</p>"
            if r.get("motion_prompt"):
                extra += f"<p><b>motion:</b> {html.escape(r['motion_prompt'])}</p>"
            if r.get("alignment_kind"):
                extra += f"<p><b>alignment:</b> {html.escape(r['alignment_kind'])}</p>"
            if r.get("parent_pair_id"):
                extra += f"<p><b>parent pair:</b> {html.escape(r['parent_pair_id'])}</p>"
            if r.get("motion"):
                extra += "".join(f"<p><b>flow {m['side']}:</b> mean {m['flow_mean']:.2f}, top 5% {m['flow_top']:.2f} px"
                                 f"{', dynamic' if m['dynamic'] else ', static'}</p>" for m in r["motion"])
            if r.get("ocr"):
                extra += "".join(f"<p><b>OCR {o['side']}:</b> {html.escape(o['text'] or '(nothing)')} "
                                 f"(NED {o['ned']:.2f})</p>" for o in r["ocr"])
            parts.append(
                f"<div class='pair'>{_media(r, 'w', 'winner')}{_media(r, 'l', 'loser')}"
                f"<div class='prompt'><p>{html.escape(r['prompt'])}</p><p>label: {r['label_source']}"
                f"{'' if r['confidence'] is None else ', confidence ' + _num(r['confidence'])}</p>{extra}"
                f"{_votes_table(r['votes'] or [])}</div></div>")
    parts.append("</body></html>")
    return "".join(parts)


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def write_html(out: str | Path, report: dict, path: str | Path) -> Path:
    from pipelines.store import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_html(out, report).encode("utf-8"))
    return path
