"""Turn a run's numbers into a Markdown report a person wants to read: what data, what changed, did it help."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ragtune.metrics import METRICS


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metrics_table(
    metrics: dict[str, dict[str, float]],
    systems: list[str] | None = None,
    extra: dict[str, dict[str, float | None]] | None = None,
) -> str:
    """A Markdown table, one row per system; `extra` adds columns such as triplet accuracy."""
    systems = systems or list(metrics)
    extra = extra or {}
    extra_cols = list(extra)
    head = "| system | " + " | ".join(list(METRICS) + extra_cols) + " |"
    rule = "|---|" + "---:|" * (len(METRICS) + len(extra_cols))
    lines = [head, rule]
    for s in systems:
        cells = [_fmt(metrics[s].get(m)) for m in METRICS] + [_fmt(extra[c].get(s)) for c in extra_cols]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(
    metrics: dict[str, dict[str, float]], base: str = "base", tuned: str = "tuned", metric: str = "ndcg@10"
) -> str:
    """One honest sentence on whether fine-tuning helped, in absolute points of `metric`."""
    if tuned not in metrics or base not in metrics:
        return ""
    b, t = metrics[base][metric], metrics[tuned][metric]
    delta = t - b
    words = f"{metric} {b:.4f} → {t:.4f} ({delta * 100:+.2f} points)"
    if abs(delta) < 0.005:
        text = f"Fine-tuning made no meaningful difference on the test queries: {words}."
    elif delta > 0:
        text = f"The tuned model retrieves better than the base model on the held-out test queries: {words}."
    else:
        text = (
            f"The tuned model is WORSE than the base model on the held-out test queries: {words}. "
            "Keep using the base model, or change the data or training settings."
        )
    if "bm25" in metrics:
        bm = metrics["bm25"][metric]
        text += f" BM25 scores {bm:.4f}; the tuned model is {'above' if t > bm else 'not above'} it."
    return text


def _loss_curve(history: list[dict[str, Any]]) -> str:
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h[k]) for h in history for k in h if k.endswith("ndcg@10")]
    lines = []
    if losses:
        lines.append("Training loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in losses) + ".")
    if evals:
        lines.append("Validation NDCG@10 (full corpus) by step: " + ", ".join(f"{s}: {v:.4f}" for s, v in evals) + ".")
    return "\n\n".join(lines)


def write_report(
    path: str | Path,
    title: str,
    config_yaml: str,
    load_stats: dict[str, Any],
    mining_stats: dict[str, Any],
    split_meta: dict[str, Any],
    metrics: dict[str, dict[str, float]],
    triplet: dict[str, float | None],
    eval_info: dict[str, Any],
    train_info: dict[str, Any] | None,
    model_dir: str | None,
) -> Path:
    path = Path(path)
    systems = [s for s in ("bm25", "base", "tuned") if s in metrics]
    s = load_stats
    out = [f"# ragtune report: {title}", ""]
    conclusion = verdict(metrics)
    if conclusion:
        out += [f"**{conclusion}**", ""]
    out += [
        f"## Test split: {eval_info['queries']} queries searched over the full corpus of {eval_info['corpus']} "
        "passages",
        "",
        metrics_table(metrics, systems, {"triplet accuracy": triplet}),
        "",
        "Metrics as trec_eval defines them (graded NDCG). Triplet accuracy is the classic recipe's number: the share "
        "of (query, positive, mined negative) where the positive scores higher; with easy negatives it saturates "
        "near 1.0 and says little, which is why retrieval over the full corpus is the headline.",
        "",
        "## Data",
        "",
        f"- source: `{s['source']}` ({s['format']})",
        f"- rows read: {s['rows_read']}; pairs kept: {s['pairs']} over {s['queries']} queries and "
        f"{s['passages']} distinct passages",
        f"- duplicate pairs dropped: {s['duplicate_pairs_dropped']}; bad rows skipped: {s['bad_rows_skipped']}; "
        f"non-relevant judgements ignored: {s['non_relevant_judgements']}; pairs left out by sampling: "
        f"{s['pairs_sampled_out']}",
        f"- passages relevant to more than one query: {s['passages_under_several_queries']}",
        "- splits (by query, so no test query is trained on): "
        + ", ".join(f"{k} {v['queries']} queries / {v['rows']} rows" for k, v in split_meta["splits"].items())
        + f" ({split_meta.get('split_method', 'random')})",
        "",
        "## Negatives",
        "",
        "\n".join(f"- {k}: {v}" for k, v in mining_stats.items()),
        "",
    ]
    if train_info:
        out += ["## Training", ""]
        out += [f"- {k}: {v}" for k, v in train_info.items() if k != "log_history"]
        out += ["", _loss_curve(train_info.get("log_history", [])), ""]
    if model_dir:
        data_dir = Path(model_dir).parent / "data"
        out += [
            "## Use the model",
            "",
            f"Model folder: `{model_dir}` (a sentence-transformers folder; its README.md carries these numbers).",
            "",
            "```",
            f'ragtune search {model_dir} --corpus {data_dir} "your question"',
            "```",
            "",
        ]
    out += ["## Configuration", "", "```yaml", config_yaml.strip(), "```", ""]
    path.write_text("\n".join(out))
    return path
