"""The Markdown report (`report.md`) and the evaluation section of the model folder's README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragtune.outputs import write_text


def write_markdown(path: Path, c: dict[str, Any]) -> Path:
    s = c["data_meta"]["load_stats"]
    splits = c["data_meta"]["splits"]
    out = [f"# ragtune report: {c['title']}", "", f"**{c['verdict']}**", "", c["regression"]["message"], ""]
    out += [f"**{c['recommendation']}**", ""]
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
            *([f"> **Seen in training:** {c['trained_on_note']}", ""] if c["trained_on_note"] else []),
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
        *(
            [
                "## Hybrid: each model fused with BM25",
                "",
                "The fusion (reciprocal-rank, or a convex weight of min-max-normalised scores) is chosen on "
                "validation queries, then applied unchanged; each fused system against each of its components:",
                "",
                c["fusion_md"],
                "",
            ]
            if c["fusion_md"]
            else []
        ),
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


def write_model_card_section(model_dir: Path, table: str, comparisons: str, conclusion: str) -> None:
    card = model_dir / "README.md"
    marker = "\n## ragtune evaluation\n"
    text = card.read_text().split(marker)[0] if card.exists() else ""
    body = f"\nHeld-out test queries, searched over the full corpus.\n\n{table}\n\n{comparisons}\n\n{conclusion}\n"
    write_text(card, text + marker + body)
