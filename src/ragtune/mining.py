"""Pick negatives for every (query, positive) row, without ever building an N x N similarity matrix.

Strategies (`MiningConfig.strategy`):
- `least-similar`: the classic recipe. Each row gets the passage least similar to its positive, unique across rows,
  assigned greedily in row order. Candidates come from a FAISS search with the negated vector (the k *least* similar),
  so memory is O(N*k); a row whose k candidates are all taken is searched again with a larger k.
- `hard`: passages the base model ranks high for the query, from a rank window, minus anything that is a positive
  of that query or has the same normalised text as one, optionally minus candidates above a score margin.
- `random`: uniformly sampled passages that are not positives.
- `none`: pairs only (MultipleNegativesRankingLoss still has in-batch negatives).

Deliberately not here: cross-encoder rescoring and approximate indexes (issue #3 deepens this stage).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragtune.config import MiningConfig
from ragtune.data import PairData, normalise
from ragtune.embeddings import Encoder
from ragtune.search import flat_index, search_chunked


@dataclass
class Row:
    query_id: str
    positive_id: str
    score: float
    negative_ids: list[str] = field(default_factory=list)


@dataclass
class MiningResult:
    rows: list[Row]
    stats: dict[str, Any]


_FULL_ROWS_BYTES = 64 << 20  # memory for rows that need their full similarity row (see below)


def least_similar_assignment(
    row_vectors: np.ndarray,
    corpus_vectors: np.ndarray,
    forbidden: list[set[int]],
    k: int = 64,
) -> tuple[list[int], int]:
    """For each row, the least similar corpus item not used by an earlier row and not forbidden for it.

    Returns (chosen corpus index per row, number of rows that had to reuse an item because none was left).
    Same result as the classic greedy walk over argsort(similarity_row), without the N x N matrix: each row first
    tries its k least similar items (one FAISS search for all rows). A row that finds all k taken gets its full
    similarity row and a masked argmin; every later row already in that state is computed in the same matrix
    product, within a fixed memory budget, because the used set only grows.
    """
    n = len(corpus_vectors)
    _, candidates = search_chunked(flat_index(corpus_vectors), -row_vectors, k)
    batch = max(1, _FULL_ROWS_BYTES // (4 * n))
    full: dict[int, np.ndarray] = {}  # row -> similarity to every corpus item
    used = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    reused = 0
    for i in range(len(row_vectors)):
        pick = None if i in full else _first_free(candidates[i], used, forbidden[i])
        if pick is None:
            if i not in full:
                stuck = i + np.flatnonzero(used[np.maximum(candidates[i:], 0)].all(axis=1))
                rows = [i] + [r for r in stuck[:batch].tolist() if r != i and r not in full]
                full.update(zip(rows, row_vectors[rows] @ corpus_vectors.T, strict=True))
            sims = full.pop(i)
            blocked = np.fromiter(forbidden[i], dtype=np.int64, count=len(forbidden[i]))
            sims[blocked] = np.inf
            free = np.where(used, np.inf, sims)
            pick = int(np.argmin(free))
            if np.isinf(free[pick]):  # every item is taken: more rows than distinct passages
                reused += 1
                pick = int(np.argmin(sims))
        used[pick] = True
        chosen.append(pick)
    return chosen, reused


def _first_free(candidates: np.ndarray, used: np.ndarray, forbidden: set[int]) -> int | None:
    valid = candidates[candidates >= 0]
    for c in valid[~used[valid]].tolist():
        if c not in forbidden:
            return c
    return None


class _Guards:
    """What may never be a negative for a query: its positives and anything textually equal to one."""

    def __init__(self, data: PairData, corpus_ids: list[str]):
        self.position = {pid: i for i, pid in enumerate(corpus_ids)}
        text_hash = [hashlib.sha1(normalise(data.corpus[p]).encode()).digest() for p in corpus_ids]
        by_text: dict[bytes, list[int]] = {}
        for i, h in enumerate(text_hash):
            by_text.setdefault(h, []).append(i)
        self.positives: dict[str, set[int]] = {}
        self.same_text: dict[str, set[int]] = {}
        for qid, rel in data.qrels.items():
            pos = {self.position[p] for p in rel}
            self.positives[qid] = pos
            self.same_text[qid] = {j for i in pos for j in by_text[text_hash[i]]} - pos

    def forbidden(self, qid: str) -> set[int]:
        return self.positives[qid] | self.same_text[qid]


def mine(data: PairData, encoder: Encoder | None, config: MiningConfig) -> MiningResult:
    corpus_ids = list(data.corpus)
    rows = [Row(q, p, s) for q, p, s in data.pairs()]
    stats: dict[str, Any] = {"strategy": config.strategy, "rows": len(rows), "corpus": len(corpus_ids)}
    if config.strategy == "none":
        return MiningResult(rows, stats)
    guards = _Guards(data, corpus_ids)
    if config.strategy == "random":
        _random_negatives(rows, guards, len(corpus_ids), config, stats)
        return MiningResult(rows, stats)
    if encoder is None:
        raise ValueError(f"strategy {config.strategy!r} needs an encoder")
    corpus_vectors = encoder.encode([data.corpus[p] for p in corpus_ids], desc="encoding corpus")
    if config.strategy == "least-similar":
        _least_similar(rows, guards, corpus_vectors, config, stats)
    else:
        qids = list(dict.fromkeys(r.query_id for r in rows))
        query_vectors = encoder.encode([data.queries[q] for q in qids], desc="encoding queries")
        _hard(rows, guards, qids, query_vectors, corpus_vectors, config, stats)
    _score_summary(rows, guards, corpus_vectors, encoder, data, stats)
    return MiningResult(rows, stats)


def _least_similar(rows, guards: _Guards, corpus_vectors, config: MiningConfig, stats) -> None:
    row_vectors = corpus_vectors[[guards.position[r.positive_id] for r in rows]]
    corpus_ids = list(guards.position)
    for round_ in range(config.num_negatives):
        # Each round is one classic pass; earlier rounds' picks are forbidden so a row's negatives differ.
        forbidden = [guards.forbidden(r.query_id) | {guards.position[n] for n in r.negative_ids} for r in rows]
        chosen, reused = least_similar_assignment(row_vectors, corpus_vectors, forbidden)
        for r, c in zip(rows, chosen, strict=True):
            r.negative_ids.append(corpus_ids[c])
        stats[f"rows_reusing_a_negative_round{round_ + 1}"] = reused


def _hard(rows, guards: _Guards, qids, query_vectors, corpus_vectors, config: MiningConfig, stats) -> None:
    corpus_ids = list(guards.position)
    most_positives = max(len(guards.positives[q]) + len(guards.same_text[q]) for q in qids)
    index = flat_index(corpus_vectors)
    scores, ids = search_chunked(index, query_vectors, config.range_max + most_positives)
    at = {q: i for i, q in enumerate(qids)}
    rng = random.Random(config.seed)
    removed = Counter()
    fallback = 0
    positive_vectors = {q: corpus_vectors[sorted(guards.positives[q])] for q in qids}
    for r in rows:
        i = at[r.query_id]
        positive_score = float(query_vectors[i] @ corpus_vectors[guards.position[r.positive_id]])
        window = []
        rank = 0
        for score, c in zip(scores[i], ids[i], strict=True):
            c = int(c)
            if c in guards.positives[r.query_id]:
                removed["positive"] += 1
                continue
            if c in guards.same_text[r.query_id]:
                removed["same_text_as_positive"] += 1
                continue
            rank += 1
            if rank <= config.range_min:
                continue
            if rank > config.range_max:
                break
            if config.max_score is not None and score > config.max_score:
                removed["above_max_score"] += 1
                continue
            if config.margin is not None and score > positive_score * (1 - config.margin):
                removed["within_margin_of_positive"] += 1
                continue
            if config.max_cosine_to_positive is not None and _near_positive(
                c, positive_vectors[r.query_id], corpus_vectors, config.max_cosine_to_positive
            ):
                removed["near_duplicate_of_positive"] += 1
                continue
            window.append(c)
        if config.sampling == "random":
            rng.shuffle(window)
        picks = window[: config.num_negatives]
        if len(picks) < config.num_negatives:
            fallback += 1
            picks += _sample_excluding(
                rng, len(corpus_ids), guards.forbidden(r.query_id) | set(picks), config.num_negatives - len(picks)
            )
        r.negative_ids = [corpus_ids[c] for c in picks]
    stats["candidates_removed"] = dict(removed)
    stats["rows_with_random_fallback"] = fallback


def _near_positive(candidate: int, positives: np.ndarray, corpus_vectors: np.ndarray, threshold: float) -> bool:
    """A paraphrase or near-copy of a positive under another id: almost surely relevant, so not a negative."""
    return bool(np.max(positives @ corpus_vectors[candidate]) >= threshold)


def _random_negatives(rows, guards: _Guards, n: int, config: MiningConfig, stats) -> None:
    rng = random.Random(config.seed)
    corpus_ids = list(guards.position)
    for r in rows:
        picks = _sample_excluding(rng, n, guards.forbidden(r.query_id), config.num_negatives)
        r.negative_ids = [corpus_ids[c] for c in picks]


def _sample_excluding(rng: random.Random, n: int, excluded: set[int], count: int) -> list[int]:
    free = n - len(excluded)
    if free <= 0:
        raise ValueError("no passage is left that is not a positive of this query; the corpus is too small")
    picks: list[int] = []
    while len(picks) < count:
        c = rng.randrange(n)
        if c not in excluded and (c not in picks or free < count):
            picks.append(c)
    return picks


def _score_summary(rows, guards: _Guards, corpus_vectors, encoder: Encoder, data: PairData, stats) -> None:
    """Mean query-positive vs query-negative cosine: a quick read of how hard the negatives are."""
    qids = list(dict.fromkeys(r.query_id for r in rows))
    qv = encoder.encode([data.queries[q] for q in qids], desc="encoding queries")
    at = {q: i for i, q in enumerate(qids)}
    pos = [float(qv[at[r.query_id]] @ corpus_vectors[guards.position[r.positive_id]]) for r in rows]
    neg = [float(qv[at[r.query_id]] @ corpus_vectors[guards.position[n]]) for r in rows for n in r.negative_ids]
    stats["mean_query_positive_cosine"] = round(float(np.mean(pos)), 4)
    stats["mean_query_negative_cosine"] = round(float(np.mean(neg)), 4) if neg else None
    bins = np.linspace(-1, 1, 21)
    stats["score_histogram"] = {
        "bin_edges": [round(float(b), 2) for b in bins],
        "query_positive": np.histogram(pos, bins)[0].tolist(),
        "query_negative": np.histogram(neg, bins)[0].tolist(),
    }
    stats["rows_negative_scores_above_positive"] = sum(
        1
        for r, p in zip(rows, pos, strict=True)
        if any(float(qv[at[r.query_id]] @ corpus_vectors[guards.position[n]]) > p for n in r.negative_ids)
    )
