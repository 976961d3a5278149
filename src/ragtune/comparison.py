"""Several systems' metrics on the same queries, compared: each with the reference, 95% intervals and paired tests,
Holm-adjusted. What `ragtune compare` and `ragtune evaluate-shards` report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ragtune.evaluate import EvalResult
from ragtune.metrics import HEADLINE, METRICS
from ragtune.report import compare_all
from ragtune.significance import Comparison, holm, mean_ci


@dataclass
class ComparisonResult:
    """Several systems on the same queries, each difference to the reference with a 95% interval and a p-value.

    Attributes:
        systems: The systems compared, the reference (first model) first, `bm25` last when included.
        metrics: System -> metric -> mean over the queries.
        ci95: System -> metric -> (low, high) bootstrap interval of the mean.
        comparisons: One per (baseline, system, metric): the paired difference, its interval, p-value and the
            Holm-adjusted verdict over all comparisons made.
        queries: How many queries; `corpus` over how many passages each was searched.
        fusion: Per fused model, its fusion with BM25 and what chose it (`FusionChoice.to_dict`).
    """

    systems: list[str]
    metrics: dict[str, dict[str, float]]
    ci95: dict[str, dict[str, tuple[float, float]]]
    comparisons: list[Comparison]
    queries: int
    corpus: int
    fusion: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "comparisons": [c.to_dict() for c in self.comparisons]}


def comparison(result: EvalResult, systems: list[str], extra_pairs: list[tuple[str, str]] = ()) -> ComparisonResult:
    """`result`'s systems each compared with the first of `systems` (and as `extra_pairs` and its fusions ask),
    with 95% intervals and paired tests, Holm-adjusted over every comparison made."""
    systems = list(systems)
    per_query = result.per_query
    comparisons = compare_all(per_query, systems[0], systems[1:])
    comparisons += [c for baseline, system in extra_pairs for c in compare_all(per_query, baseline, [system])]
    for name in result.fusion:
        components = [name, "bm25"] if "bm25" in systems else [name]
        comparisons += [c for part in components for c in compare_all(per_query, part, [f"{name}+bm25"], [HEADLINE])]
        systems.append(f"{name}+bm25")
    holm(comparisons)
    return ComparisonResult(
        systems=systems,
        metrics={s: result.metrics[s] for s in systems},
        ci95={s: {m: mean_ci(per_query[s][m]) for m in METRICS} for s in systems},
        comparisons=comparisons,
        queries=result.queries,
        corpus=result.corpus,
        fusion={name: choice.to_dict() for name, choice in result.fusion.items()},
    )
