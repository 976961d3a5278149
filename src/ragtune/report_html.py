"""A self-contained HTML report: tables, and plots drawn with matplotlib embedded as PNG data URIs.

One file, no external assets, so it can be attached to a ticket or opened from a laptop offline.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ragtune.outputs import write_text

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}
td.num{text-align:right}th{background:#f3f3f3}.verdict{font-size:18px;font-weight:600}
.bad{color:#b00020}.good{color:#0a7d28}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
pre{background:#f6f6f6;padding:1em;overflow:auto}.hit{font-size:13px;margin:2px 0}.rel{background:#e5f6e8}
.cols{display:flex;gap:1em}.cols>div{flex:1}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bar_chart(metrics, cis, systems) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = ["ndcg@10", "mrr@10", "recall@10"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        values = [metrics[s][m] for m in shown]
        err = np.array([[metrics[s][m] - cis[s][m][0], cis[s][m][1] - metrics[s][m]] for m in shown]).T
        ax.bar(np.arange(len(shown)) + i * width, values, width, yerr=err, capsize=3, label=s)
    ax.set_xticks(np.arange(len(shown)) + width * (len(systems) - 1) / 2, shown)
    ax.set_ylim(0, 1.05)
    ax.set_title("Test queries over the full corpus (95% CI)")
    ax.legend(loc="lower right")
    return _png(fig)


def training_curves(history: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], v) for h in history for k, v in h.items() if k.endswith("ndcg@10")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
    if loss:
        a.plot(*zip(*loss, strict=True), marker=".")
    a.set_title("training loss")
    a.set_xlabel("step")
    if val:
        b.plot(*zip(*val, strict=True), marker="o", color="tab:green")
    b.set_title("validation NDCG@10 (full corpus)")
    b.set_xlabel("step")
    return _png(fig)


def score_histograms(pair_scores: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("base", "tuned") if n in pair_scores]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(9, 3), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ax.hist(pair_scores[name]["positive"], bins=30, alpha=0.6, label="query–positive")
        if pair_scores[name]["negative"]:
            ax.hist(pair_scores[name]["negative"], bins=30, alpha=0.6, label="query–negative")
        ax.set_title(f"{name}: cosine on test rows")
        ax.legend()
    return _png(fig)


def md_table_to_html(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.strip().splitlines() if not r.startswith("|---")]
    head, body = rows[0], rows[1:]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    for r in body:
        cells = [c.strip() for c in r]
        out.append(
            "<tr>"
            + "".join(
                f"<td class='num'>{html.escape(c)}</td>" if i else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    return "\n".join(out + ["</table>"])


def _hits(hits: list[dict]) -> str:
    return "".join(
        f"<div class='hit{' rel' if h['relevant'] else ''}'>{'✔ ' if h['relevant'] else ''}"
        f"{html.escape(h['text'][:200])}</div>"
        for h in hits
    )


def write_html(path: Path, c: dict[str, Any]) -> Path:
    e = html.escape
    s = c["data_meta"]["load_stats"]
    good = not c["regression"]["regressed"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>ragtune report: {e(c['title'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>ragtune report: {e(c['title'])}</h1>",
        f"<p class='verdict {'good' if good else 'bad'}' id='verdict'>{e(c['verdict'])}</p>",
        f"<p>{e(c['regression']['message'])} Recommended model: <b>{e(c['recommended_model'])}</b>.</p>",
        f"<p id='recommendation'><b>{e(c['recommendation'])}</b></p>",
        f"<p class='verdict bad' id='template-warning'>{e(c['template_warning'])}</p>" if c["template_warning"] else "",
        ("<h2>Where users are: the eval sets</h2><div id='eval-sets'>" + md_table_to_html(c["eval_sets_md"]) + "</div>")
        if c["eval_sets_md"]
        else "",
        f"<p class='verdict bad' id='trained-on'>{e(c['trained_on_note'])}</p>" if c["trained_on_note"] else "",
        f"<h2>Test split: {c['test_queries']} queries over the full corpus of {c['corpus']} passages</h2>",
        "<div id='metrics'>" + md_table_to_html(c["table_md"]) + "</div>",
        "<h3>Paired comparisons (95% bootstrap CI of the difference, permutation p)</h3>",
        "<div id='comparisons'>" + md_table_to_html(c["comparison_md"]) + "</div>",
        ("<h3>NDCG@10 by synthesis method</h3><div id='by-method'>" + md_table_to_html(c["by_method_md"]) + "</div>")
        if c.get("by_method_md")
        else "",
        (
            "<h3>Hybrid: each model fused with BM25 (fusion chosen on validation)</h3><div id='fusion'>"
            + md_table_to_html(c["fusion_md"])
            + "</div>"
        )
        if c["fusion_md"]
        else "",
        f"<img id='plot-bars' alt='metrics by system' src='{bar_chart(c['metrics'], c['ci95'], c['systems'])}'>",
        "<h2>Training</h2>",
        f"<img id='plot-training' alt='training curves' src='{training_curves(c['history'])}'>",
        "<h2>Scores of positives and negatives, before and after</h2>",
        f"<img id='plot-scores' alt='score histograms' src='{score_histograms(c['pair_scores'])}'>",
        "<h2>Data</h2><ul>",
        f"<li>source: <code>{e(s['source'])}</code> ({e(s['format'])})</li>",
        f"<li>{s['rows_read']} rows read; {s['pairs']} pairs over {s['queries']} queries and {s['passages']} "
        f"passages; {s['duplicate_pairs_dropped']} duplicate pairs dropped; {s['bad_rows_skipped']} bad rows "
        f"skipped; {s['pairs_sampled_out']} pairs left out by sampling</li>",
        "<li>splits: "
        + e(", ".join(f"{k} {v['queries']} queries" for k, v in c["data_meta"]["splits"].items()))
        + f" ({e(c['data_meta'].get('split_method', ''))})</li>",
    ]
    leakage = c["data_meta"].get("leakage")
    if leakage:
        parts.append(f"<li id='leakage'>leakage across splits: {e(leakage['summary'])}</li>")
    parts.append("</ul>")
    for kind in ("improved", "worsened"):
        movers = c["movers"][kind]
        parts.append(f"<h2>Test queries that {kind} most</h2>")
        if not movers:
            parts.append("<p>none</p>")
        for m in movers:
            parts.append(
                f"<h4>{m['delta'] * 100:+.1f} pts NDCG@10 (first relevant at rank {m['base_rank']} → "
                f"{m['tuned_rank']}): {e(m['query'])}</h4><div class='cols'>"
                f"<div><b>base</b>{_hits(m['base_top'])}</div><div><b>tuned</b>{_hits(m['tuned_top'])}</div></div>"
            )
    parts += ["<h2>Configuration</h2>", f"<pre>{e(c['config_yaml'])}</pre>", "</body></html>"]
    write_text(path, "\n".join(parts))
    return path
