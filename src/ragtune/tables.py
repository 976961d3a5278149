"""Markdown tables of a run's numbers: what the report, the model card and the CLI print."""

from __future__ import annotations

import math
from typing import Any

from ragtune.metrics import HEADLINE, METRICS
from ragtune.significance import Comparison


def _fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metrics_table(
    metrics: dict[str, dict[str, float]],
    systems: list[str] | None = None,
    extra: dict[str, dict[str, float | None]] | None = None,
    cis: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> str:
    """A Markdown table, one row per system; `cis` adds a 95% interval to each value, `extra` more columns."""
    systems = systems or list(metrics)
    extra = extra or {}
    head = "| system | " + " | ".join(list(METRICS) + list(extra)) + " |"
    lines = [head, "|---|" + "---:|" * (len(METRICS) + len(extra))]
    for s in systems:
        cells = []
        for m in METRICS:
            cell = _fmt(metrics[s].get(m))
            if cis and s in cis:
                low, high = cis[s][m]
                cell += f" [{low:.3f}, {high:.3f}]"
            cells.append(cell)
        cells += [_fmt(extra[c].get(s)) for c in extra]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(comparisons: list[Comparison]) -> str:
    """One row per comparison; with Holm-adjusted p-values (`significance.holm`), a column and a note for them."""
    adjusted = any(c.p_holm is not None for c in comparisons)
    head = "| system | vs | metric | difference | 95% CI | p |" + (" Holm p |" if adjusted else "") + " verdict |"
    lines = [head, "|---|---|---|---:|---:|---:|" + ("---:|" if adjusted else "") + "---|"]
    for c in comparisons:
        holm_cell = f" {c.p_holm:.3f} |" if adjusted else ""
        lines.append(
            f"| {c.system} | {c.baseline} | {c.metric} | {c.delta * 100:+.2f} pts | "
            f"[{c.ci_low * 100:+.2f}, {c.ci_high * 100:+.2f}] | {c.p_value:.3f} |{holm_cell} {c.verdict} |"
        )
    if adjusted:
        lines += [
            "",
            f"{len(comparisons)} comparisons on the same queries: 'Holm p' is each p adjusted for all of them "
            "(Holm's method), the one to read when asking whether any difference is real.",
        ]
    return "\n".join(lines)


def eval_sets_table(sets: dict[str, dict[str, Any]], checkpoint_on: str | None = None) -> str:
    """One row per eval set: each system's NDCG@10 with its interval, and tuned − base / tuned − BM25 (the BM25
    columns only where the sets have BM25: a run from shards has none); below a set whose questions the model partly
    met in training, the same without them. The set that picked the checkpoint (`checkpoint_on`) says so: its
    tuned score was chosen on it."""
    systems = [s for s in ("bm25", "base", "tuned") if all(s in r["metrics"] for r in sets.values())]
    baselines = [b for b in ("base", "bm25") if b in systems]
    lines = [
        "| eval set | queries | passages | "
        + " | ".join(systems + [f"tuned − {b} [95% CI], p" for b in baselines])
        + " |",
        "|---|---:|---:|" + "---:|" * (len(systems) + len(baselines)),
    ]
    rows = []
    for name, r in sets.items():
        rows.append((f"{name} (picked the checkpoint)" if name == checkpoint_on else name, r))
        if r.get("unseen"):
            rows.append((f"{name}, not met in training", r["unseen"]))
    for name, r in rows:
        cells = []
        for system in systems:
            low, high = r["ci95"][system][HEADLINE]
            cells.append(f"{r['metrics'][system][HEADLINE]:.4f} [{low:.3f}, {high:.3f}]")
        diffs = [_diff(r["comparisons"], baseline, "tuned") for baseline in baselines]
        lines.append(f"| {name} | {r['queries']} | {r['corpus']} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


def trained_on_note(sets: dict[str, dict[str, Any]]) -> str:
    """One sentence per eval set whose questions the model met in training (`splits.trained_on`), or ""."""
    notes = []
    for name, r in sets.items():
        seen = r.get("trained_on") or {}
        if seen.get("either"):
            notes.append(
                f"{name}: {seen['either']} of {seen['queries']} questions were met in training "
                f"({seen['same_question']} asked in the same words, {seen['same_answer']} answered by the answer of "
                "a labelled training question), so its gain is not all on new questions."
            )
    return " ".join(notes)


def _diff(comparisons: list[dict], baseline: str, system: str) -> str:
    c = next(
        (c for c in comparisons if (c["baseline"], c["system"], c["metric"]) == (baseline, system, HEADLINE)), None
    )
    if c is None:
        return "–"
    holm_p = f" (Holm {c['p_holm']:.3f})" if c.get("p_holm") is not None else ""
    return f"{c['delta'] * 100:+.2f} [{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}], {c['p_value']:.3f}{holm_p}"


def fusion_table(sets: dict[str, dict[str, Any]]) -> str:
    """One row per (query set, fused model): the fusion used and where it was chosen, the fused NDCG@10 with its
    interval, and its paired difference to each component."""
    lines = [
        "| queries | system | fusion (chosen on) | NDCG@10 [95% CI] | − dense model [95% CI], p | − bm25 [95% CI], p |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, r in sets.items():
        for model, choice in r.get("fusion", {}).items():
            fused = f"{model}+bm25"
            low, high = r["ci95"][fused][HEADLINE]
            where = choice.get("chosen_on") or "given"
            lines.append(
                f"| {name} | {fused} | {choice['label']} ({where}) | {r['metrics'][fused][HEADLINE]:.4f} "
                f"[{low:.3f}, {high:.3f}] | {_diff(r['comparisons'], model, fused)} | "
                f"{_diff(r['comparisons'], 'bm25', fused)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def by_method_table(rows: dict[str, dict[str, Any]], systems: list[str]) -> str:
    lines = ["| method | queries | " + " | ".join(systems) + " | tuned − base [95% CI] |"]
    lines.append("|---|---:|" + "---:|" * len(systems) + "---:|")
    for method, row in rows.items():
        c = row.get("tuned_vs_base")
        diff = f"{c['delta'] * 100:+.2f} [{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}]" if c else ""
        cells = " | ".join(f"{row[s]:.4f}" for s in systems)
        lines.append(f"| {method} | {row['queries']} | {cells} | {diff} |")
    return "\n".join(lines)
