"""Turn a run's numbers into a report a person wants to read: what data, what changed, is the change real.

`summarise_run` reads a finished run directory and writes `results.json`, `report.md` and `report.html`; the
tables here are also what the CLI prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.metrics import METRICS
from ragtune.outputs import write_json
from ragtune.report_md import write_markdown, write_model_card_section
from ragtune.significance import Comparison, compare, holm, mean_ci
from ragtune.tables import (
    HEADLINE,
    by_method_table,
    comparison_table,
    eval_sets_table,
    fusion_table,
    metrics_table,
    trained_on_note,
)

COMPARED = ("ndcg@10", "mrr@10", "recall@10")
EVAL_SET_FIELDS = (
    "path",
    "split",
    "queries",
    "corpus",
    "metrics",
    "ci95",
    "comparisons",
    "templates",
    "fusion",
    "trained_on",
    "unseen",
)


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


def recommend(model: str, fusion: dict[str, dict]) -> tuple[str, str]:
    """What to ship: the recommended model alone, or fused with BM25 when validation says the fusion beats both
    (never when it loses there, whatever the test split says)."""
    choice = fusion.get(model)
    if not choice:
        return model, f"Serve the {model} model."
    v = choice["validation"]
    scores = f"validation {HEADLINE}: fused {v[choice['label']]:.4f}, {model} {v['dense']:.4f}, BM25 {v['bm25']:.4f}"
    if choice["wins"]:
        how = "--mode hybrid" + (" --rrf" if choice["method"] == "rrf" else f" --weight {choice['weight']:g}")
        return f"{model}+bm25", f"Serve {model}+BM25 ({choice['label']}; `ragtune search {how}`): {scores}."
    return model, f"Serve the {model} model alone: fusing it with BM25 does not beat both on validation ({scores})."


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


@dataclass
class RunResult:
    """A finished run: where its model and reports are, and its headline numbers.

    Attributes:
        output_dir: The run folder.
        model_dir: The tuned model, a sentence-transformers folder (`SentenceTransformer(str(model_dir))`).
        report_html: The HTML report; `report_md` the same in Markdown.
        metrics: Test-split metrics per system (`bm25`, `base`, `tuned`) and metric (`ndcg@10`, `mrr@10`, ...).
        verdict: One sentence: did the tuned model beat the base model, by how much, is it significant.
        regression: The regression guard: `regressed`, `message`, and the set it judged (`on`).
        recommended_model: `tuned`, or `base` when the guard found a regression.
        recommended_system: What to serve: the recommended model, or `<model>+bm25` when its fusion with BM25
            beat both components on validation; `recommendation` says it in a sentence, with the fusion to use.
        test_queries: Test queries, each searched over all `corpus` passages.
        eval_sets: Per configured eval set (real users' questions): metrics, 95% intervals, paired comparisons.
        template_warning: Why the in-distribution gain may overstate real-query gains, or None.
        table: The test metrics as a Markdown table; `eval_table` the eval sets' NDCG@10 table ("" without sets).
        results: Everything in `results.json` (intervals, comparisons, templates, by-method breakdowns).
    """

    output_dir: Path
    model_dir: Path
    report_html: Path
    report_md: Path
    metrics: dict[str, dict[str, float]]
    verdict: str
    regression: dict[str, Any]
    recommended_model: str
    recommended_system: str
    recommendation: str
    test_queries: int
    corpus: int
    eval_sets: dict[str, dict[str, Any]]
    template_warning: str | None
    table: str
    eval_table: str
    results: dict[str, Any] = field(repr=False)


def summarise_run(
    out: Path, resolved_yaml: str, guard_on: str = "validation", eval_sets: list[str] | None = None
) -> RunResult:
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
    systems = [s for s in ("bm25", "base", "tuned", "base+bm25", "tuned+bm25") if s in metrics]
    cis = {s: {m: mean_ci(per_query[s][m]) for m in METRICS} for s in systems}
    comparisons = compare_all(per_query, "base", ["tuned"]) + compare_all(per_query, "bm25", ["base", "tuned"])
    for fused in (s for s in systems if s.endswith("+bm25")):
        parts = [s for s in (fused.removesuffix("+bm25"), "bm25") if s in systems]
        comparisons += [c for part in parts for c in compare_all(per_query, part, [fused], [HEADLINE])]
    holm(comparisons)
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
    fusion = {**base.get("validation", {}).get("fusion", {}), **tuned.get("validation", {}).get("fusion", {})}
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
        "fusion": fusion,
        "test_queries": test_base["queries"],
        "corpus": test_base["corpus"],
        "test_templates": templates.to_dict(),
        "template_warning": template_warning(templates, others),
        # trained_on and unseen: absent from eval sets of runs from shards
        "eval_sets": {name: {k: r.get(k) for k in EVAL_SET_FIELDS} for name, r in sets.items()},
        "training_pairs_by_source": _training_sources(data),
        "checkpoint_chosen_on": train_info.get("checkpoint_chosen_on", "validation"),
    }
    summary["recommended_system"], summary["recommendation"] = recommend(summary["recommended_model"], fusion)
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
        "eval_sets_md": eval_sets_table(sets, train_info.get("checkpoint_chosen_on")) if sets else "",
        "trained_on_note": trained_on_note(sets),
        "fusion_md": fusion_table({"test": summary, **sets}),
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
    write_model_card_section(out / "model", context["table_md"], context["comparison_md"], conclusion)
    return RunResult(
        output_dir=out,
        model_dir=out / "model",
        report_html=Path(html),
        report_md=Path(md),
        metrics=metrics,
        verdict=conclusion,
        regression=guard,
        recommended_model=summary["recommended_model"],
        recommended_system=summary["recommended_system"],
        recommendation=summary["recommendation"],
        test_queries=summary["test_queries"],
        corpus=summary["corpus"],
        eval_sets=summary["eval_sets"],
        template_warning=summary["template_warning"],
        table=table,
        eval_table=context["eval_sets_md"],
        results=summary,
    )


def _training_sources(data) -> dict[str, int]:
    """Training queries by the source of their pair: labelled, pseudo (user questions), ict/crop/title."""
    counts: dict[str, int] = {}
    for q in data.splits.get("train", []):
        source = data.methods.get(q) or "labelled"
        counts[source] = counts.get(source, 0) + 1
    return counts
