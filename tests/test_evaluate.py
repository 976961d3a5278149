import numpy as np
import pytest

from ragtune.data import LoadStats, PairData
from ragtune.embeddings import Encoder
from ragtune.evaluate import bm25_run, evaluate_systems, pair_scores, triplet_accuracy
from ragtune.metrics import METRICS


def _toy():
    corpus = {
        "d1": "the heart pumps blood through arteries",
        "d2": "kidneys filter blood and make urine",
        "d3": "lungs exchange oxygen and carbon dioxide",
        "d4": "bones store calcium and make blood cells",
    }
    queries = {"q1": "which organ pumps blood", "q2": "where is urine made", "q3": "oxygen exchange organ"}
    qrels = {"q1": {"d1": 1.0}, "q2": {"d2": 1.0}, "q3": {"d3": 1.0}}
    return PairData(corpus, queries, qrels, LoadStats("t", "t"))


def test_bm25_finds_lexical_matches():
    run = bm25_run(_toy())
    assert all(max(run[q], key=run[q].get) == f"d{q[1]}" for q in run)


def test_evaluate_systems_reports_every_metric_over_full_corpus(tiny_model, tmp_path):
    from ragtune.metrics import aggregate, per_query

    data = _toy()
    result = evaluate_systems({"tiny": tiny_model}, data, bm25=True, cache_dir=tmp_path)
    assert set(result.metrics) == {"bm25", "tiny"}
    assert result.metrics["bm25"]["ndcg@10"] == pytest.approx(1.0)
    # The model's figures, recomputed here from its own vectors: every query scored against every passage.
    enc = Encoder(tiny_model, tmp_path / "own", show_progress=False)
    ids = list(data.corpus)
    scores = enc.encode(list(data.queries.values())) @ enc.encode([data.corpus[d] for d in ids]).T
    run = {q: dict(zip(ids, row.tolist(), strict=True)) for q, row in zip(data.queries, scores, strict=True)}
    expected = aggregate(per_query(run, data.qrels))
    assert set(result.metrics["tiny"]) == set(METRICS)
    for metric, value in expected.items():
        assert result.metrics["tiny"][metric] == pytest.approx(value, abs=1e-6), metric
    assert set(result.per_query["tiny"]["ndcg@10"]) == {"q1", "q2", "q3"}


def test_triplet_accuracy_matches_definition(tiny_model, tmp_path):
    enc = Encoder(tiny_model, tmp_path, show_progress=False)
    q, p, n = ["a b", "c d", "e f"], ["a b c", "c", "x y"], [["zzz"], ["c d"], ["e f"]]
    qv, pv = enc.encode(q), enc.encode(p)
    nv = enc.encode([x[0] for x in n])
    expected = np.mean(np.sum(qv * pv, 1) > np.sum(qv * nv, 1))
    scores = pair_scores(enc, q, p, n)
    assert triplet_accuracy(scores) == pytest.approx(expected)
    np.testing.assert_allclose(scores["positive"], np.sum(qv * pv, 1), rtol=1e-5)
    assert triplet_accuracy(pair_scores(enc, ["a"], ["a"], [["a"]])) == 0.0  # a tie is not a win
