"""Score systems on the same queries over the full corpus: dense models, BM25, their fusion (`model+bm25`), and
the classic triplet accuracy.

Every distinct passage of the dataset is a candidate for every query (not only the split's passages), because that
is what a RAG system searches. Per-query values are kept so later stages can compute intervals and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ragtune.bm25 import Bm25
from ragtune.data import PairData
from ragtune.embeddings import QUERY, Encoder
from ragtune.faiss_search import flat_index, search_chunked
from ragtune.hybrid import FusionChoice, Run, choose_fusion, fuse
from ragtune.metrics import METRICS, aggregate, per_query

DEPTH = 100  # the deepest cutoff any metric reads (recall@100, map@100)


@dataclass
class EvalResult:
    """Retrieval metrics of several systems on the same queries, each searched over the whole corpus.

    Attributes:
        metrics: System (`bm25`, a model's name, or `<model>+bm25` for its fusion with BM25) -> metric (`ndcg@10`,
            `mrr@10`, `recall@1/10/100`, `map@100`, `precision@10`) -> mean over the queries.
        per_query: System -> metric -> query id -> value (what intervals and paired tests are computed from).
        top: System -> query id -> the ten passage ids it ranked first.
        queries: How many queries were searched; `corpus` over how many passages.
        pair_scores: Per model, cosine of each query to its positive and to its mined negatives (ragtune data only).
        triplet_accuracy: Per model, the share of (query, positive, negative) with the positive closer, or None.
        fusion: Per fused model, how it was fused with BM25 (and, where chosen on validation, what decided it).
        runs: System -> query id -> passage id -> score, the top 100 (kept in memory only: what a fusion is
            chosen from).
    """

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    top: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    queries: int = 0
    corpus: int = 0
    pair_scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    triplet_accuracy: dict[str, float | None] = field(default_factory=dict)
    fusion: dict[str, FusionChoice] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """The layout of `eval/<model>/result.json`."""
        return {
            "metrics": self.metrics,
            "per_query": self.per_query,
            "top10": self.top,
            "queries": self.queries,
            "corpus": self.corpus,
            "pair_scores": self.pair_scores,
            "triplet_accuracy": self.triplet_accuracy,
            "fusion": {name: f.to_dict() for name, f in self.fusion.items()},
        }


def dense_run(encoder: Encoder, data: PairData, k: int = DEPTH) -> dict[str, dict[str, float]]:
    corpus_ids = list(data.corpus)
    qids = list(data.qrels)
    corpus_vectors = encoder.encode([data.corpus[p] for p in corpus_ids], desc="encoding corpus")
    query_vectors = encoder.encode([data.queries[q] for q in qids], desc="encoding queries", kind=QUERY)
    scores, ids = search_chunked(flat_index(corpus_vectors), query_vectors, k)
    return {
        q: {corpus_ids[int(i)]: float(s) for s, i in zip(scores[n], ids[n], strict=True) if i >= 0}
        for n, q in enumerate(qids)
    }


def bm25_run(data: PairData, k: int = DEPTH) -> dict[str, dict[str, float]]:
    """BM25 (bm25s, Lucene variant, English stopwords and Snowball stemming) over the same corpus."""
    corpus_ids = list(data.corpus)
    hits = Bm25.build(list(data.corpus.values())).search([data.queries[q] for q in data.qrels], k)
    return {q: {corpus_ids[d]: s for d, s in found} for q, found in zip(data.qrels, hits, strict=True)}


def score_run(result: EvalResult, system: str, run: Run, qrels: dict[str, dict[str, float]]) -> None:
    """`system`'s metrics per query and on average, and its top 10 per query, into `result`."""
    result.runs[system] = run
    values = per_query(run, qrels, METRICS)
    result.per_query[system] = values
    result.metrics[system] = aggregate(values)
    result.top[system] = {q: [d for d, _ in sorted(r.items(), key=lambda x: -x[1])[:10]] for q, r in run.items()}


def evaluate_systems(
    models: dict[str, str | Path],
    data: PairData,
    bm25: bool = True,
    cache_dir: str | Path | None = None,
    max_seq_length: int | None = None,
    batch_size: int = 32,
    fusion: dict[str, FusionChoice] | Literal["choose"] | None = None,
) -> EvalResult:
    """Retrieval metrics for each named model (and BM25) on `data`'s queries over `data.corpus`.

    `fusion` adds each model's fusion with BM25 as the system `<model>+bm25`: as given per model, or "choose" to
    pick each model's best fusion on these very queries (for validation splits only). BM25 is then searched even
    when `bm25` is False; its run is kept in `runs` but not scored.
    """
    result = EvalResult(queries=len(data.qrels), corpus=len(data.corpus))
    sparse = bm25_run(data) if bm25 or fusion else None
    if bm25:
        score_run(result, "bm25", sparse, data.qrels)
    for name, model in models.items():
        encoder = Encoder(model, cache_dir, max_seq_length, batch_size)
        score_run(result, name, dense_run(encoder, data), data.qrels)
    if sparse is not None and not bm25:
        result.runs["bm25"] = sparse
    if fusion == "choose":
        fusion = {name: choose_fusion(result.runs[name], sparse, data.qrels) for name in models}
    for name, choice in (fusion or {}).items():
        score_run(result, f"{name}+bm25", fuse(result.runs[name], sparse, choice.fusion), data.qrels)
        result.fusion[name] = choice
    return result


def pair_scores(
    encoder: Encoder, queries: list[str], positives: list[str], negatives: list[list[str]]
) -> dict[str, list[float]]:
    """Cosine of each query to its positive and to each of its negatives (from cached embeddings)."""
    q = encoder.encode(queries, desc="encoding queries", kind=QUERY)
    p = encoder.encode(positives, desc="encoding passages")
    out = {"positive": np.einsum("ij,ij->i", q, p).tolist(), "negative": [], "negative_row": []}
    width = max((len(n) for n in negatives), default=0)
    for j in range(width):
        rows = [i for i, n in enumerate(negatives) if len(n) > j]
        n = encoder.encode([negatives[i][j] for i in rows], desc="encoding passages")
        out["negative"] += np.einsum("ij,ij->i", q[rows], n).tolist()
        out["negative_row"] += rows
    return out


def triplet_accuracy(scores: dict[str, list[float]]) -> float:
    """The classic TripletEvaluator number: share of (query, positive, negative) with cos(q,p) > cos(q,n).

    Computed from cached embeddings (`pair_scores`) rather than sentence-transformers' TripletEvaluator, which would
    encode every positive and negative again; the definition is the same.
    """
    if not scores["negative"]:
        return float("nan")
    pos = np.asarray(scores["positive"])[scores["negative_row"]]
    return float(np.mean(pos > np.asarray(scores["negative"])))
