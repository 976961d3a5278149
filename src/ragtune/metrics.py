"""Retrieval metrics as pure functions over BEIR-shaped dicts, matching trec_eval's definitions.

`run[qid][docid] = score` (higher is better), `qrels[qid][docid] = relevance` (graded; > 0 is relevant).
Ties in score are broken by document id, descending, as trec_eval does. Each function returns per-query values so
that confidence intervals and significance tests can be computed from them.
"""

from __future__ import annotations

import math

HEADLINE = "ndcg@10"  # the number a run is judged by
METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100", "precision@10")


def ranked(run_q: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(run_q.items(), key=lambda x: (-x[1], _neg(x[0])))]


def _neg(doc_id: str):
    # trec_eval sorts ties by docno descending; a key that reverses string order inside an ascending sort.
    return tuple(-ord(c) for c in doc_id) + (1,)


def ndcg_at_k(ranking: list[str], rel: dict[str, float], k: int) -> float:
    dcg = sum(rel.get(d, 0.0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if rel.get(d, 0.0) > 0)
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: list[str], rel: dict[str, float], k: int) -> float:
    for i, d in enumerate(ranking[:k]):
        if rel.get(d, 0.0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: list[str], rel: dict[str, float], k: int) -> float:
    relevant = {d for d, g in rel.items() if g > 0}
    return len(relevant.intersection(ranking[:k])) / len(relevant) if relevant else 0.0


def precision_at_k(ranking: list[str], rel: dict[str, float], k: int) -> float:
    """Relevant documents in the top k over k (trec_eval's P_k: a short ranking still divides by k)."""
    return sum(1 for d in ranking[:k] if rel.get(d, 0.0) > 0) / k


def map_at_k(ranking: list[str], rel: dict[str, float], k: int) -> float:
    relevant = {d for d, g in rel.items() if g > 0}
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, d in enumerate(ranking[:k]):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


_FUNCTIONS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k, "map": map_at_k, "precision": precision_at_k}


def per_query(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, float]], metrics: tuple[str, ...] = METRICS
) -> dict[str, dict[str, float]]:
    """{metric: {qid: value}} over every query in qrels (a query missing from the run scores 0)."""
    out: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for qid, rel in qrels.items():
        ranking = ranked(run.get(qid, {}))
        for m in metrics:
            name, k = m.split("@")
            out[m][qid] = _FUNCTIONS[name](ranking, rel, int(k))
    return out


def aggregate(values: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: (sum(v.values()) / len(v) if v else 0.0) for m, v in values.items()}
