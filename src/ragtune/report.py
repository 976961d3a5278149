"""Turn a run's numbers into a report a person wants to read: what data, what changed, is the change real.

`summarise_run` reads a finished run directory and writes `results.json`, `report.md` and `report.html`; the
tables here are also what the CLI prints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ragtune.metrics import METRICS
from ragtune.outputs import write_json, write_text
from ragtune.significance import Comparison, compare, holm, mean_ci

HEADLINE = "ndcg@10"
COMPARED = ("ndcg@10", "mrr@10", "recall@10")
EVAL_SET_FIELDS = ("path", "split", "queries", "corpus", "metrics", "ci95", "comparisons", "templates")


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


def compare_all(
    per_query: dict[str, dict[str, dict[str, float]]], baseline: str, systems: list[str], metrics=COMPARED
) -> list[Comparison]:
    """Each system against `baseline`, paired over the same queries, for each metric."""
    return [
        compare(per_query[baseline][m], per_query[s][m], m, (baseline, s))
        for s in systems
        if s != baseline
        for m in metrics
    ]


def verdict(metrics: dict[str, dict[str, float]], comparison: Comparison | None = None) -> str:
    """One honest sentence on whether fine-tuning helped, with its interval when one is given."""
    if "tuned" not in metrics or "base" not in metrics:
        return ""
    b, t = metrics["base"][HEADLINE], metrics["tuned"][HEADLINE]
    words = f"{HEADLINE} {b:.4f} → {t:.4f} ({(t - b) * 100:+.2f} points"
    if comparison is not None:
        words += f", 95% CI [{comparison.ci_low * 100:+.2f}, {comparison.ci_high * 100:+.2f}]"
    words += ")"
    if comparison is not None and not comparison.significant:
        text = f"No significant difference between the tuned and the base model on the test queries: {words}."
    elif t > b:
        text = f"The tuned model retrieves better than the base model on the held-out test queries: {words}."
    elif t < b:
        text = (
            f"The tuned model is WORSE than the base model on the held-out test queries: {words}. "
            "Keep using the base model, or change the data or training settings."
        )
    else:
        text = f"Fine-tuning changed nothing on the test queries: {words}."
    if "bm25" in metrics:
        bm = metrics["bm25"][HEADLINE]
        text += f" BM25 scores {bm:.4f}; the tuned model is {'above' if t > bm else 'not above'} it."
    return text


def regression_check(base_val: dict | None, tuned_val: dict | None, where: str = "validation") -> dict[str, Any]:
    """Is the tuned model better than the base on `where` (the validation split, or an eval set's queries)? If not,
    the base stays the recommended model."""
    if not base_val or not tuned_val:
        return {"regressed": False, "checked": False, "message": f"no {where} queries: regression not checked"}
    b, t = base_val["metrics"]["base"][HEADLINE], tuned_val["metrics"]["tuned"][HEADLINE]
    regressed = t <= b
    message = (
        f"The tuned model is not better than the base model on {where} ({HEADLINE} {b:.4f} → {t:.4f}); "
        "the base model remains the recommended model."
        if regressed
        else f"The tuned model beats the base model on {where} ({HEADLINE} {b:.4f} → {t:.4f})."
    )
    return {"regressed": regressed, "checked": True, "on": where, "base": b, "tuned": t, "message": message}


def eval_sets_table(sets: dict[str, dict[str, Any]]) -> str:
    """One row per eval set: each system's NDCG@10 with its interval, and tuned − base / tuned − BM25."""
    lines = [
        "| eval set | queries | passages | bm25 | base | tuned | tuned − base [95% CI], p | tuned − bm25 [95% CI], p |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sets.items():
        cells = []
        for system in ("bm25", "base", "tuned"):
            low, high = r["ci95"][system][HEADLINE]
            cells.append(f"{r['metrics'][system][HEADLINE]:.4f} [{low:.3f}, {high:.3f}]")
        diffs = []
        for baseline in ("base", "bm25"):
            c = next(
                c
                for c in r["comparisons"]
                if (c["baseline"], c["system"], c["metric"]) == (baseline, "tuned", HEADLINE)
            )
            holm_p = f" (Holm {c['p_holm']:.3f})" if c.get("p_holm") is not None else ""
            diffs.append(
                f"{c['delta'] * 100:+.2f} [{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}], "
                f"{c['p_value']:.3f}{holm_p}"
            )
        lines.append(f"| {name} | {r['queries']} | {r['corpus']} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


def _movers(per_query, queries, corpus, qrels, top10, n: int = 5) -> dict[str, list[dict]]:
    """The test queries whose NDCG@10 rose or fell most with tuning, with each system's top results."""
    base, tuned = per_query["base"][HEADLINE], per_query["tuned"][HEADLINE]
    deltas = sorted(((tuned[q] - base[q], q) for q in base), key=lambda x: x[0])

    def entry(delta: float, q: str) -> dict:
        def hits(system: str) -> list[dict]:
            return [
                {"id": d, "text": corpus[d][:300], "relevant": d in qrels.get(q, {})}
                for d in top10[system].get(q, [])[:3]
            ]

        def first_relevant(system: str) -> str:
            ranks = [i + 1 for i, d in enumerate(top10[system].get(q, [])) if d in qrels.get(q, {})]
            return str(ranks[0]) if ranks else ">10"

        return {
            "query": queries[q],
            "delta": delta,
            "base_rank": first_relevant("base"),
            "tuned_rank": first_relevant("tuned"),
            "base": base[q],
            "tuned": tuned[q],
            "base_top": hits("base"),
            "tuned_top": hits("tuned"),
        }

    return {
        "improved": [entry(d, q) for d, q in reversed(deltas[-n:]) if d > 0],
        "worsened": [entry(d, q) for d, q in deltas[:n] if d < 0],
    }


def by_method(per_query: dict, methods: dict[str, str], systems: list[str]) -> dict[str, dict[str, Any]]:
    """NDCG@10 per system on the test queries each synthesis method produced, with tuned vs base per method."""
    groups: dict[str, list[str]] = {}
    for qid in per_query[systems[0]][HEADLINE]:
        groups.setdefault(methods.get(qid) or "unlabelled", []).append(qid)
    out = {}
    for method, qids in sorted(groups.items()):
        sub = {s: {HEADLINE: {q: per_query[s][HEADLINE][q] for q in qids}} for s in systems}
        row: dict[str, Any] = {"queries": len(qids)}
        row.update({s: sum(sub[s][HEADLINE].values()) / len(qids) for s in systems})
        if "tuned" in systems and "base" in systems:
            row["tuned_vs_base"] = compare_all(sub, "base", ["tuned"], [HEADLINE])[0].to_dict()
        out[method] = row
    return out


def by_method_table(rows: dict[str, dict[str, Any]], systems: list[str]) -> str:
    lines = ["| method | queries | " + " | ".join(systems) + " | tuned − base [95% CI] |"]
    lines.append("|---|---:|" + "---:|" * len(systems) + "---:|")
    for method, row in rows.items():
        c = row.get("tuned_vs_base")
        diff = f"{c['delta'] * 100:+.2f} [{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}]" if c else ""
        cells = " | ".join(f"{row[s]:.4f}" for s in systems)
        lines.append(f"| {method} | {row['queries']} | {cells} | {diff} |")
    return "\n".join(lines)


def summarise_run(
    out: Path, resolved_yaml: str, guard_on: str = "validation", eval_sets: list[str] | None = None
) -> dict[str, Any]:
    """The run's numbers as results.json, report.md and report.html. `eval_sets`: the names of the configured eval
    sets (a set dropped from the config is not reported, though its folder stays); default: every one on disk."""
    from ragtune.data import DATA_MARKER, load_ragtune_data
    from ragtune.report_html import write_html
    from ragtune.templates import TemplateStats, template_stats, template_warning

    base = json.loads((out / "eval" / "base" / "result.json").read_text())
    tuned = json.loads((out / "eval" / "tuned" / "result.json").read_text())
    test_base, test_tuned = base["test"], tuned["test"]
    metrics = {**test_base["metrics"], **test_tuned["metrics"]}
    per_query = {**test_base["per_query"], **test_tuned["per_query"]}
    top10 = {**test_base["top10"], **test_tuned["top10"]}
    triplet = {**test_base["triplet_accuracy"], **test_tuned["triplet_accuracy"]}
    systems = [s for s in ("bm25", "base", "tuned") if s in metrics]
    cis = {s: {m: mean_ci(per_query[s][m]) for m in METRICS} for s in systems}
    comparisons = holm(compare_all(per_query, "base", ["tuned"]) + compare_all(per_query, "bm25", ["base", "tuned"]))
    headline = next(c for c in comparisons if c.baseline == "base" and c.metric == HEADLINE)
    conclusion = verdict(metrics, headline)
    sets = {}
    for folder in sorted((out / "eval" / "sets").glob("*/result.json")):
        result = json.loads(folder.read_text())
        if eval_sets is None or result["name"] in eval_sets:
            sets[result["name"]] = result
    if eval_sets is not None:
        sets = {name: sets[name] for name in eval_sets if name in sets}  # in the config's order
    if guard_on == "validation":
        guard = regression_check(base.get("validation"), tuned.get("validation"))
    else:
        guard = regression_check(sets.get(guard_on), sets.get(guard_on), f"the eval set {guard_on}")
    data_meta = json.loads((out / "data" / DATA_MARKER).read_text())
    train_info = json.loads((out / "model" / "ragtune_train.json").read_text())
    history = json.loads((out / "model" / "training_log.json").read_text())
    data = load_ragtune_data(out / "data")
    movers = _movers(per_query, data.queries, data.corpus, data.qrels, top10)
    test_ids = data.splits.get("test", [])
    templates = template_stats([data.queries[q] for q in test_ids if q in data.queries])
    others = {
        name: TemplateStats(**{k: v for k, v in r["templates"].items() if k != "templated"}) for name, r in sets.items()
    }
    summary = {
        "metrics": metrics,
        "ci95": cis,
        "triplet_accuracy": triplet,
        "comparisons": [c.to_dict() for c in comparisons],
        "verdict": conclusion,
        "regression": guard,
        "recommended_model": "base" if guard["regressed"] else "tuned",
        "test_queries": test_base["queries"],
        "corpus": test_base["corpus"],
        "test_templates": templates.to_dict(),
        "template_warning": template_warning(templates, others),
        "eval_sets": {name: {k: r[k] for k in EVAL_SET_FIELDS} for name, r in sets.items()},
        "training_pairs_by_source": _training_sources(data),
    }
    if data.methods:
        summary["by_method"] = by_method(per_query, data.methods, systems)
    write_json(out / "results.json", summary)
    table = metrics_table(metrics, systems, {"triplet accuracy": triplet})
    context = {
        **summary,
        "title": out.name,
        "systems": systems,
        "table_md": metrics_table(metrics, systems, {"triplet accuracy": triplet}, cis),
        "comparison_md": comparison_table(comparisons),
        "by_method_md": by_method_table(summary["by_method"], systems) if data.methods else "",
        "eval_sets_md": eval_sets_table(sets) if sets else "",
        "config_yaml": resolved_yaml,
        "data_meta": data_meta,
        "train_info": train_info,
        "history": history,
        "pair_scores": {**test_base["pair_scores"], **test_tuned["pair_scores"]},
        "movers": movers,
        "model_dir": str(out / "model"),
        "data_dir": str(out / "data"),
    }
    md = write_markdown(out / "report.md", context)
    html = write_html(out / "report.html", context)
    _model_card_section(out / "model", context["table_md"], context["comparison_md"], conclusion)
    return {**summary, "table": table, "eval_table": context["eval_sets_md"], "report": str(html), "report_md": str(md)}


def _training_sources(data) -> dict[str, int]:
    """Training queries by the source of their pair: labelled, pseudo (user questions), ict/crop/title."""
    counts: dict[str, int] = {}
    for q in data.splits.get("train", []):
        source = data.methods.get(q) or "labelled"
        counts[source] = counts.get(source, 0) + 1
    return counts


def write_markdown(path: Path, c: dict[str, Any]) -> Path:
    s = c["data_meta"]["load_stats"]
    splits = c["data_meta"]["splits"]
    out = [f"# ragtune report: {c['title']}", "", f"**{c['verdict']}**", "", c["regression"]["message"], ""]
    if c["template_warning"]:
        out += [f"> **Warning:** {c['template_warning']}", ""]
    if c["eval_sets_md"]:
        out += [
            "## Where users are: the eval sets",
            "",
            "Each set's queries searched over its own corpus; NDCG@10 with 95% bootstrap intervals; differences "
            "paired over the same queries. The in-distribution test split follows.",
            "",
            c["eval_sets_md"],
            "",
        ]
    out += [
        f"## Test split: {c['test_queries']} queries searched over the full corpus of {c['corpus']} passages",
        "",
        "Each value is the mean over test queries with its 95% bootstrap interval.",
        "",
        c["table_md"],
        "",
        "Paired comparisons over the same queries (bootstrap interval of the difference, sign-flip permutation p):",
        "",
        c["comparison_md"],
        "",
        *(["NDCG@10 by the method that made each test pair:", "", c["by_method_md"], ""] if c["by_method_md"] else []),
        "Metrics follow trec_eval (graded NDCG). Triplet accuracy is the classic recipe's number: the share of "
        "(query, positive, mined negative) where the positive scores higher; with easy negatives it saturates "
        "near 1.0 and says little, which is why retrieval over the full corpus is the headline.",
        "",
        "## Data",
        "",
        f"- source: `{s['source']}` ({s['format']})",
        f"- rows read: {s['rows_read']}; pairs kept: {s['pairs']} over {s['queries']} queries and "
        f"{s['passages']} distinct passages",
        f"- duplicate pairs dropped: {s['duplicate_pairs_dropped']}; bad rows skipped: {s['bad_rows_skipped']}; "
        f"non-relevant judgements ignored: {s['non_relevant_judgements']}; "
        f"pairs left out by sampling: {s['pairs_sampled_out']}",
        f"- passages relevant to more than one query: {s['passages_under_several_queries']}",
        "- training queries by source: " + ", ".join(f"{k} {v}" for k, v in c["training_pairs_by_source"].items()),
        f"- splits ({c['data_meta'].get('split_method', 'random')}): "
        + ", ".join(f"{k} {v['queries']} queries / {v['rows']} rows" for k, v in splits.items()),
    ]
    leakage = c["data_meta"].get("leakage")
    if leakage:
        out += [f"- leakage across splits: {leakage['summary']}"]
    out += ["", "## Negatives", ""] + [f"- {k}: {v}" for k, v in c["data_meta"].get("mining", {}).items()]
    out += ["", "## Training", ""] + [f"- {k}: {v}" for k, v in c["train_info"].items()]
    for kind in ("improved", "worsened"):
        if c["movers"][kind]:
            out += ["", f"## Test queries that {kind} most", ""]
            out += [
                f"- {m['delta'] * 100:+.1f} pts (first relevant at rank {m['base_rank']} → {m['tuned_rank']}): "
                f"{m['query']}"
                for m in c["movers"][kind]
            ]
    out += [
        "",
        "## Use the model",
        "",
        f"Model folder: `{c['model_dir']}` (a sentence-transformers folder; its README.md carries these numbers).",
        "",
        "```",
        f'ragtune search {c["model_dir"]} --corpus {c["data_dir"]} "your question"',
        "```",
        "",
        "## Configuration",
        "",
        "```yaml",
        c["config_yaml"].strip(),
        "```",
        "",
    ]
    write_text(path, "\n".join(out))
    return path


def _model_card_section(model_dir: Path, table: str, comparisons: str, conclusion: str) -> None:
    card = model_dir / "README.md"
    marker = "\n## ragtune evaluation\n"
    text = card.read_text().split(marker)[0] if card.exists() else ""
    body = f"\nHeld-out test queries, searched over the full corpus.\n\n{table}\n\n{comparisons}\n\n{conclusion}\n"
    write_text(card, text + marker + body)
