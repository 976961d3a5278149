import numpy as np
import pytest

from ragtune.config import MiningConfig
from ragtune.data import LoadStats, PairData
from ragtune.mining import least_similar_assignment, mine


def classic_least_similar(vectors: np.ndarray) -> list[int]:
    """The classic recipe, N x N: each row walks its ascending similarities to the first unused passage."""
    sim = vectors @ vectors.T
    used, chosen = set(), []
    for i in range(len(vectors)):
        for j in np.argsort(sim[i], kind="stable"):
            if j != i and j not in used:
                used.add(int(j))
                chosen.append(int(j))
                break
    return chosen


def _vectors(n, d=16, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("n, k", [(50, 2), (200, 4), (300, 32)])
def test_least_similar_matches_classic_and_is_unique(n, k):
    v = _vectors(n)
    chosen, reused = least_similar_assignment(v, v, [{i} for i in range(n)], k=k)
    assert chosen == classic_least_similar(v)
    assert len(set(chosen)) == n and reused == 0
    assert all(c != i for i, c in enumerate(chosen))


class FakeEncoder:
    """Deterministic vectors per text, so mining's rules can be checked exactly."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts, desc=""):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def _planted():
    """Query q1 has positives p1, p2; 'dup' is p1's text under another id (case/space changed); h* are hard."""
    corpus = {
        "p1": "The answer.",
        "p2": "Another answer.",
        "dup": "the   ANSWER.",
        "h1": "hard one",
        "h2": "hard two",
        "h3": "hard three",
        "e1": "easy",
        "p3": "other query's positive",
    }
    queries = {"q1": "question one", "q2": "question two"}
    qrels = {"q1": {"p1": 1.0, "p2": 1.0}, "q2": {"p3": 1.0}}
    table = {
        "question one": _unit(1, 0, 0),
        "question two": _unit(0, 0, 1),
        "The answer.": _unit(1, 0.05, 0),
        "Another answer.": _unit(1, 0.1, 0),
        "the   ANSWER.": _unit(1, 0.01, 0),
        "hard one": _unit(1, 0.3, 0),
        "hard two": _unit(1, 0.6, 0),
        "hard three": _unit(1, 1.2, 0),
        "easy": _unit(0, 1, 0),
        "other query's positive": _unit(0, 0.1, 1),
    }
    return PairData(corpus, queries, qrels, LoadStats("t", "t")), FakeEncoder(table)


def test_hard_never_picks_positives_or_their_duplicates():
    data, enc = _planted()
    result = mine(data, enc, MiningConfig(strategy="hard", num_negatives=3, range_max=5))
    q1_rows = [r for r in result.rows if r.query_id == "q1"]
    for r in q1_rows:
        assert r.negative_ids == ["h1", "h2", "h3"]
    assert result.stats["candidates_removed"]["same_text_as_positive"] >= 1
    assert result.stats["candidates_removed"]["positive"] >= 2


def test_hard_window_and_margin():
    data, enc = _planted()
    windowed = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_min=1, range_max=5))
    assert {r.negative_ids[0] for r in windowed.rows if r.query_id == "q1"} == {"h2"}
    margin = 0.05
    result = mine(data, enc, MiningConfig(strategy="hard", num_negatives=2, range_max=6, margin=margin))
    for r in result.rows:
        q = enc.table[data.queries[r.query_id]]
        pos = float(q @ enc.table[data.corpus[r.positive_id]])
        for n in r.negative_ids:
            assert float(q @ enc.table[data.corpus[n]]) <= pos * (1 - margin) + 1e-6
    assert result.stats["candidates_removed"].get("within_margin_of_positive", 0) > 0


def test_least_similar_and_random_exclude_positives():
    data, enc = _planted()
    for strategy in ("least-similar", "random"):
        result = mine(data, enc if strategy != "random" else None, MiningConfig(strategy=strategy))
        for r in result.rows:
            assert not set(r.negative_ids) & {"p1", "p2", "dup"} if r.query_id == "q1" else True
            assert r.positive_id not in r.negative_ids
    ls = mine(data, enc, MiningConfig(strategy="least-similar"))
    negs = [r.negative_ids[0] for r in ls.rows]
    assert len(set(negs)) == len(negs)


def test_none_keeps_pairs_only():
    data, _ = _planted()
    result = mine(data, None, MiningConfig(strategy="none"))
    assert len(result.rows) == 3 and all(r.negative_ids == [] for r in result.rows)


def test_more_rows_than_passages_reuses_and_counts():
    rows, corpus = _vectors(8, seed=1), _vectors(4, seed=2)
    chosen, reused = least_similar_assignment(rows, corpus, [set() for _ in range(8)], k=2)
    assert reused == 4 and sorted(chosen[:4]) == [0, 1, 2, 3]
    sims = rows @ corpus.T
    assert chosen[4:] == [int(np.argmin(sims[i])) for i in range(4, 8)]  # once all are used: least similar again


def test_near_duplicate_of_positive_is_never_chosen():
    data, enc = _planted()
    # A paraphrase of p1 under another id, not textually equal: only the cosine guard can catch it.
    data.corpus["para"] = "The answer, reworded."
    enc.table["The answer, reworded."] = _unit(1, 0.06, 0.001)
    plain = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_max=5))
    assert [r.negative_ids for r in plain.rows if r.query_id == "q1"][0] == ["para"]
    guarded = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_max=5, max_cosine_to_positive=0.98))
    for r in guarded.rows:
        assert "para" not in r.negative_ids or r.query_id == "q2"  # for q2 it is a fair negative
    assert guarded.stats["candidates_removed"]["near_duplicate_of_positive"] >= 1
    hist = guarded.stats["score_histogram"]
    assert sum(hist["query_positive"]) == len(guarded.rows) and len(hist["bin_edges"]) == 21
