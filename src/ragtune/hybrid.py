"""Hybrid retrieval: BM25 fused with a dense model, and the fusion chosen on validation queries (never on test).

Two fusions, as RAG stacks deploy them: reciprocal-rank fusion (parameter-free, ranks only) and a convex
combination of min-max-normalised scores with a BM25 weight. Which one, and which weight, is read off the
validation split; the choice records every candidate's validation score, so a report can say when fusion loses to
its own components there (then it must not be recommended).

Written here rather than taken from a library: bm25s and FAISS each rank one side; fusing two score lists is a few
lines, and the libraries that do it (LangChain's EnsembleRetriever, LlamaIndex's QueryFusionRetriever) only offer
RRF or weights over their own retriever objects, not over precomputed runs of thousands of queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from ragtune.metrics import HEADLINE, per_query, ranked

Run = dict[str, dict[str, float]]  # query id -> passage id -> score

RRF_K = 60  # the constant of Cormack et al. (2009), which every RRF implementation defaults to
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # BM25's share in the convex fusion


@dataclass(frozen=True)
class Fusion:
    """How BM25 and a dense model are fused.

    Attributes:
        method: `convex` ((1 - weight) x dense + weight x BM25, each min-max normalised per query) or `rrf`
            (sum of 1 / (60 + rank) over both lists).
        weight: BM25's weight in a convex fusion (0..1); unused by RRF.
    """

    method: Literal["convex", "rrf"] = "convex"
    weight: float = 0.3

    @property
    def label(self) -> str:
        return f"RRF (k={RRF_K})" if self.method == "rrf" else f"convex, BM25 weight {self.weight:g}"

    def to_dict(self) -> dict:
        return asdict(self)


def _minmax(scores: dict[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 1.0)
    return {d: (s - low) / (high - low) for d, s in scores.items()}


def _rrf(scores: dict[str, float]) -> dict[str, float]:
    ranked = sorted(scores, key=lambda d: -scores[d])
    return {d: 1.0 / (RRF_K + rank) for rank, d in enumerate(ranked, 1)}


def fuse_one(dense: dict[str, float], sparse: dict[str, float], fusion: Fusion, k: int = 100) -> dict[str, float]:
    """One query's fused top-k; a passage only one side retrieved gets nothing from the other."""
    if fusion.method == "rrf":
        a, b, wa, wb = _rrf(dense), _rrf(sparse), 1.0, 1.0
    else:
        a, b, wa, wb = _minmax(dense), _minmax(sparse), 1.0 - fusion.weight, fusion.weight
    fused = {d: wa * a.get(d, 0.0) + wb * b.get(d, 0.0) for d in a.keys() | b.keys()}
    # Ties are broken as trec_eval breaks them (`ranked`), so the served order is the order that was scored.
    return {d: fused[d] for d in ranked(fused)[:k]}


def fuse(dense: Run, sparse: Run, fusion: Fusion, k: int = 100) -> Run:
    """Fuse two runs query by query (a query missing from one side is fused with nothing)."""
    return {q: fuse_one(dense.get(q, {}), sparse.get(q, {}), fusion, k) for q in dense.keys() | sparse.keys()}


@dataclass
class FusionChoice:
    """The fusion picked on validation queries, with what every candidate scored there.

    Attributes:
        fusion: The best candidate on the validation queries' NDCG@10.
        validation: Candidate label (and `dense`, `bm25`) -> validation NDCG@10.
        wins: Whether the chosen fusion beats both the dense model and BM25 on validation; when it does not, a
            report must not recommend it.
        queries: How many validation queries chose it.
        chosen_on: The split it was chosen on; None when the user fixed it (then `validation` is empty).
    """

    fusion: Fusion
    validation: dict[str, float] = field(default_factory=dict)
    wins: bool = False
    queries: int = 0
    chosen_on: str | None = None

    def to_dict(self) -> dict:
        return {
            **self.fusion.to_dict(),
            "label": self.fusion.label,
            "validation": self.validation,
            "wins": self.wins,
            "queries": self.queries,
            "chosen_on": self.chosen_on,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FusionChoice:
        return cls(Fusion(d["method"], d["weight"]), d["validation"], d["wins"], d["queries"], d["chosen_on"])


def candidates() -> list[Fusion]:
    return [Fusion("rrf", 0.0)] + [Fusion("convex", w) for w in WEIGHTS]


def _mean(run: Run, qrels: dict[str, dict[str, int]]) -> float:
    values = per_query(run, qrels, [HEADLINE])[HEADLINE]
    return sum(values.values()) / len(values) if values else 0.0


def choose_fusion(
    dense: Run, sparse: Run, qrels: dict[str, dict[str, int]], chosen_on: str | None = None
) -> FusionChoice:
    """The candidate (RRF, or convex at BM25 weight 0.1 ... 0.9) with the best NDCG@10 on these (validation)
    queries; the earlier candidate wins a tie, so the choice does not depend on float noise."""
    scores = {"dense": _mean(dense, qrels), "bm25": _mean(sparse, qrels)}
    best, best_score = None, float("-inf")
    for fusion in candidates():
        score = scores[fusion.label] = _mean(fuse(dense, sparse, fusion), qrels)
        if score > best_score + 1e-12:
            best, best_score = fusion, score
    wins = best_score > max(scores["dense"], scores["bm25"])
    return FusionChoice(best, scores, wins, len(qrels), chosen_on)
