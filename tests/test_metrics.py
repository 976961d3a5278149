import math

import pytest

from ragtune.metrics import (
    METRICS,
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


def test_parity_with_trec_eval_on_real_scifact_runs():
    """Every reported metric, per query, against trec_eval's own code (pytrec_eval), on BM25's ranking of SciFact's
    300 test claims over all 5,183 abstracts, with binary and with graded judgements, ties included."""
    import random

    import pytrec_eval
    from conftest import shared_file

    from ragtune.data import load_pairs
    from ragtune.evaluate import bm25_run

    data = load_pairs(shared_file("scifact"))
    test = data.subset(data.splits["test"])
    run = bm25_run(test)
    # Ties: every second document gets the score of the one before it, so tie-breaking is exercised too.
    for ranking in run.values():
        items = sorted(ranking.items(), key=lambda x: -x[1])
        for (_, score), (doc, _) in zip(items[::2], items[1::2], strict=False):
            ranking[doc] = score
    rng = random.Random(0)
    graded = {q: {d: float(rng.choice([1, 2, 3])) for d in rel} for q, rel in test.qrels.items()}
    theirs = {"ndcg@10": "ndcg_cut_10", "recall@1": "recall_1", "recall@10": "recall_10", "recall@100": "recall_100"}
    theirs |= {"map@100": "map_cut_100", "precision@10": "P_10", "mrr@10": "recip_rank"}
    assert set(theirs) == set(METRICS)
    for qrels in (test.qrels, graded):
        ours = per_query(run, qrels)
        trec_qrels = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
        evaluator = pytrec_eval.RelevanceEvaluator(trec_qrels, set(theirs.values()))
        result = evaluator.evaluate(run)
        assert len(result) == 300
        for qid, values in result.items():
            for name, measure in theirs.items():
                expected = values[measure]
                if name == "mrr@10" and expected < 1 / 10:
                    expected = 0.0  # trec_eval's reciprocal rank has no cutoff; past rank 10 it is 0 at @10
                assert ours[name][qid] == pytest.approx(expected, abs=1e-9), (name, qid)
