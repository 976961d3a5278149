import math

import pytest

from ragtune.metrics import (
    aggregate,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    per_query,
    precision_at_k,
    ranked,
    recall_at_k,
)

RANKING = ["a", "b", "c", "d"]
REL = {"b": 2.0, "d": 1.0, "z": 1.0}  # z is never retrieved


def test_ndcg_graded_by_hand():
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKING, REL, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["b", "d", "z"], REL, 10) == pytest.approx(1.0)
    assert ndcg_at_k(RANKING, REL, 1) == 0.0


def test_mrr_recall_map_by_hand():
    assert mrr_at_k(RANKING, REL, 10) == 0.5
    assert mrr_at_k(RANKING, REL, 1) == 0.0
    assert recall_at_k(RANKING, REL, 10) == pytest.approx(2 / 3)
    assert recall_at_k(RANKING, REL, 2) == pytest.approx(1 / 3)
    assert map_at_k(RANKING, REL, 100) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert precision_at_k(RANKING, REL, 10) == pytest.approx(2 / 10)
    assert precision_at_k(RANKING, REL, 2) == pytest.approx(1 / 2)


def test_ties_broken_by_doc_id_descending_like_trec_eval():
    assert ranked({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]


def test_per_query_counts_missing_queries_as_zero():
    values = per_query({"q1": {"x": 1.0}}, {"q1": {"x": 1}, "q2": {"y": 1}})
    assert values["ndcg@10"] == {"q1": 1.0, "q2": 0.0}
    assert aggregate(values)["ndcg@10"] == 0.5
