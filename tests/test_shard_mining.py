"""The least-similar walk over an index built from shards (written here without a cluster): the negatives
`ragtune mine --strategy least-similar` picks from the same vectors, row for row."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from helpers import toy_rows

from ragtune.config import DataConfig, MiningConfig
from ragtune.data import Row, load_prepared
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.index import SHA1_FILE
from ragtune.mining import _Guards, mine
from ragtune.pipeline import prepare_stage
from ragtune.shard_mining import PassageIds, _ShardGuards, held_out_mask, least_similar_from_shards, pair_rows
from ragtune.shards import index_from_shards


def test_the_walk_over_shards_picks_what_ragtune_mine_picks(tiny_model, tmp_path):
    rows = toy_rows(400)
    rows.append({"query": rows[7]["query"], "passage": "The heart also has a second job."})  # two positives
    prepare_stage(DataConfig(path=str(write_jsonl(tmp_path / "pairs.jsonl", rows))), tmp_path / "prepared")
    data = load_prepared(tmp_path / "prepared")
    ids = list(data.corpus)
    encoder = Encoder(str(tiny_model), show_progress=False)
    vectors = encoder.encode([data.corpus[i] for i in ids])
    texts = [data.corpus[i] for i in ids]
    (tmp_path / "shards").mkdir()
    table = {
        "id": ids,
        "text": texts,
        "sha1": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
    }
    pq.write_table(pa.table(table), tmp_path / "shards" / "part-0.parquet")
    meta = {**encoder.identity(), "dim": vectors.shape[1], "count": len(ids)}
    (tmp_path / "shards" / "shards.json").write_text(json.dumps(meta))
    index = index_from_shards(tmp_path / "shards", tmp_path / "index")

    reference = mine(data, encoder, MiningConfig(strategy="least-similar", num_negatives=2)).rows
    pairs = write_jsonl(
        tmp_path / "rows.jsonl", [{"query": data.queries[r.query_id], "positive_id": r.positive_id} for r in reference]
    )
    found, stats = least_similar_from_shards(index, pair_rows([str(pairs)], "query", "positive_id"), 2)
    assert stats["rows"] == len(reference) == 401
    assert found == [r.negative_ids for r in reference]
    (twice,) = [q for q, t in data.queries.items() if t == rows[7]["query"]]
    assert len(data.qrels[twice]) == 2  # neither of its positives is a negative of either of its rows
    walked = [f for f, r in zip(found, reference, strict=True) if r.query_id == twice]
    assert len(walked) == 2 and not set().union(*walked) & set(data.qrels[twice])
    assert all(len(set(f)) == 2 for f in found)

    # Held out (the last 50 queries, say a test split): no training row takes their positives, as in `ragtune mine`
    # (whose walk reaches the held-out rows last, so the training rows' picks are the comparable ones).
    test = set(list(dict.fromkeys(r.query_id for r in reference))[-50:])
    held = mine(data, encoder, MiningConfig(strategy="least-similar"), held_out=test).rows
    train_rows = [r for r in held if r.query_id not in test]
    assert held[: len(train_rows)] == train_rows
    held_file = write_jsonl(
        tmp_path / "test.jsonl",
        [{"query": data.queries[r.query_id], "positive_id": r.positive_id} for r in held if r.query_id in test],
    )
    mask = held_out_mask(index, [str(held_file)], "query", "positive_id")
    assert mask.sum() == len({p for q in test for p in data.qrels[q]})
    train = [(data.queries[r.query_id], r.positive_id, "x") for r in train_rows]
    walked, _ = least_similar_from_shards(index, train, 1, mask)
    assert walked == [r.negative_ids for r in train_rows]
    unguarded, _ = least_similar_from_shards(index, train, 1)
    assert any(mask[ids.index(n[0])] for n in unguarded)  # without the mask, some training rows take test answers

    # What each query may never take: the guards of `ragtune mine`, and a planted copy of a positive's text.
    sha1 = np.fromfile(index / SHA1_FILE, dtype="S20")
    walk_rows = [Row(data.queries[r.query_id], r.positive_id, 1.0) for r in reference]
    theirs = _Guards(data, ids)
    ours = _ShardGuards(ids, sha1, walk_rows)
    assert all(ours.forbidden(data.queries[q]) == theirs.forbidden(q) for q in data.qrels)
    first = ids.index(reference[0].positive_id)
    sha1[first + 1] = sha1[first]
    planted = _ShardGuards(ids, sha1, walk_rows).forbidden(data.queries[reference[0].query_id])
    assert planted == theirs.forbidden(reference[0].query_id) | {first + 1}


def test_what_the_walk_cannot_use_is_a_one_line_error(tiny_model, tmp_path):
    from test_shard_index import write_shards

    vectors = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    write_shards(tmp_path / "shards", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    exact = index_from_shards(tmp_path / "shards", tmp_path / "exact")
    compressed = index_from_shards(tmp_path / "shards", tmp_path / "pq", ivf_pq_from=1000, code_bytes=8)
    with pytest.raises(RagtuneError, match=r"compressed index \(ivf\d+,pq8\): least-similar mining walks"):
        least_similar_from_shards(compressed, [("q", "p1", "x")], 1)
    stranger = write_jsonl(tmp_path / "stranger.jsonl", [{"query": "q", "positive_id": "p1"}, {"query": "r"}])
    with pytest.raises(RagtuneError, match=r"stranger.jsonl: line 2: field 'positive_id' is missing"):
        pair_rows([str(stranger)], "query", "positive_id")
    with pytest.raises(RagtuneError, match=r"where-1: positive id 'nowhere' is not in the index"):
        least_similar_from_shards(exact, [("q", "nowhere", "where-1")], 1)


def test_mined_rows_become_a_training_folder_that_trains(tiny_model, tmp_path, monkeypatch):
    from test_shard_index import write_shards

    from ragtune.config import TrainConfig
    from ragtune.data import load_ragtune_data
    from ragtune.shard_mining import training_data_from_shards, validation_pool
    from ragtune.train import train, validation_evaluator

    rng = np.random.default_rng(0)
    vectors = _unit(rng, 300)
    write_shards(tmp_path / "shards", vectors)
    index = index_from_shards(tmp_path / "shards", tmp_path / "index")
    rows = [(f"what is passage {i}?", f"p{i}", "x") for i in range(0, 300, 3)]
    negatives, _ = least_similar_from_shards(index, rows, 2)
    (tmp_path / "mined").mkdir()
    table = {"query": [q for q, _, _ in rows], "positive_id": [p for _, p, _ in rows], "negative_ids": negatives}
    pq.write_table(pa.table(table), tmp_path / "mined" / "part-00000.parquet")

    folder = training_data_from_shards(tmp_path / "mined", index, tmp_path / "train-data")
    data = load_ragtune_data(folder)
    assert sorted(data.splits["train"]) == sorted(data.queries) and len(data.queries) == 100
    assert set(data.splits) == {"train"}  # no validation: training keeps its last checkpoint
    by_text = {t: q for q, t in data.queries.items()}
    for (query, positive, _), negs in zip(rows, negatives, strict=True):
        assert data.qrels[by_text[query]] == {positive: 1.0}
        assert data.corpus[positive] == f"passage {positive[1:]}"  # the text the index holds for that id
        assert all(data.corpus[n] == f"passage {n[1:]}" for n in negs)
    result = train(str(tiny_model), folder, tmp_path / "tuned", TrainConfig(epochs=1, batch_size=8))
    assert result.steps == 13 and (result.model_dir / "config.json").is_file() and result.best_metric is None

    # Validation from a pool: 40 of 100 held-out queries, each among its positive and the index's top 5 for it
    # (the index's model is a stand-in here that knows each query's vector: near its passage's).
    held = [{"query": f"what is passage {i}?", "positive_id": f"p{i}"} for i in range(1, 300, 3)]
    noise = _unit(rng, 300)
    known = {r["query"]: vectors[int(r["positive_id"][1:])] + 0.5 * noise[n] for n, r in enumerate(held)}
    monkeypatch.setattr("ragtune.index.encoder_for", lambda meta, **_: _Vectors(known))
    pool = validation_pool(index, write_jsonl(tmp_path / "validation.jsonl", held), queries=40, depth=5, seed=0)
    assert len(pool.queries) == 40 and set(pool.queries.values()) <= set(known)
    positives = {p for rel in pool.qrels.values() for p in rel}
    assert len(positives) == 40 and positives <= set(pool.passages) and 40 < len(pool.passages) <= 40 * 6
    folder = training_data_from_shards(tmp_path / "mined", index, tmp_path / "train-val", pool)
    data = load_ragtune_data(folder)
    assert sorted(data.splits["validation"]) == sorted(pool.queries) and len(data.splits["train"]) == 100
    evaluator = validation_evaluator(folder, 8)
    assert sorted(evaluator.data.corpus) == pool.passages  # the pool, not the 300 training passages
    result = train(str(tiny_model), folder, tmp_path / "tuned-val", TrainConfig(epochs=1, batch_size=8))
    assert result.steps == 13 and result.best_metric is not None and result.best_checkpoint

    (tmp_path / "other").mkdir()
    table["negative_ids"] = [["p0", "elsewhere"]] + negatives[1:]
    pq.write_table(pa.table(table), tmp_path / "other" / "part-00000.parquet")
    with pytest.raises(RagtuneError, match=r"passage 'elsewhere' is not in .*index \(mined over another index\?\)"):
        training_data_from_shards(tmp_path / "other", index, tmp_path / "train-2")


def test_passage_ids_find_every_id_and_nothing_else(tmp_path):
    import pickle

    ids = ["p10", "p1", "b", "ünï-çødé/7", "p100", "a" * 40, "p2"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"id": i, "text": "t"}) + "\n" for i in ids))
    table = pickle.loads(pickle.dumps(PassageIds.read(tmp_path)))  # as the actors get it from the object store
    assert [table.position(i) for i in ids] == list(range(len(ids)))
    assert [table[n] for n in range(len(ids))] == ids
    assert table.ids.dtype.itemsize == 40  # the longest id in bytes, not a Python object per id
    for absent in ("p", "p3", "p1000", "a" * 39, "zz", ""):
        assert table.position(absent) is None


class _Vectors:
    """An encoder that knows each text's vector: one process's mining and the shards' miner then see the same."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def encode(self, texts, **_):
        return np.stack([self.vectors[t] for t in texts])


def _unit(rng, n, dim=16):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_hard_miner_screens_as_ragtune_mine_and_tops_up_short_rows(tmp_path):
    import faiss

    from ragtune.data import LoadStats, PairData
    from ragtune.shard_mining import COUNTS, HardMiner, mined_counts

    rng = np.random.default_rng(0)
    passages = _unit(rng, 300)
    corpus = {f"p{i}": f"passage {i}" for i in range(300)}
    corpus["p299"] = corpus["p0"]  # the same text as a positive: never its negative
    passages[299] = passages[0]
    queries = {f"q{i}": f"question {i}" for i in range(120)}
    noise = _unit(rng, 120)
    vectors = {corpus[f"p{i}"]: passages[i] for i in range(300)}
    qrels = {}
    for i in range(120):
        qrels[f"q{i}"] = {f"p{i}": 1.0}
        query = passages[i] + 0.9 * noise[i]
        vectors[queries[f"q{i}"]] = query / np.linalg.norm(query)
    qrels["q5"]["p200"] = 1.0  # a query with two positives
    data = PairData(corpus, queries, qrels, LoadStats(source="test", format="test"))
    config = MiningConfig(strategy="hard", num_negatives=3, range_min=2, range_max=8, margin=0.15, max_score=0.55)
    held_out = {f"q{i}" for i in range(100, 120)}  # their answers are no training row's negatives
    expected = mine(data, _Vectors(vectors), config, held_out).rows
    train = [r for r in expected if r.query_id not in held_out]

    index = faiss.IndexFlatIP(16)
    index.add(passages)
    ids = PassageIds(np.array(list(corpus), dtype="S4"))
    sha1 = np.array([hashlib.sha1(corpus[f"p{i}"].encode()).digest() for i in range(300)], dtype="S20")
    excluded = np.zeros(300, dtype=bool)
    excluded[[int(p[1:]) for q in held_out for p in qrels[q]]] = True
    siblings = {queries["q5"]: (5, 200)}
    settings = {**config.model_dump(include={"num_negatives", "range_min", "range_max", "margin", "max_score"})}
    settings.update(sampling="top", seed=1, nprobe=1, extra=9)
    miner = HardMiner(index, ids, sha1, siblings, excluded, None, settings)
    texts = [queries[r.query_id] for r in train]
    positives = [r.positive_id for r in train]
    query_vectors = np.stack([vectors[t] for t in texts])
    table = miner.negatives(texts, positives, query_vectors, ["pairs.jsonl"] * len(train)).to_pylist()

    # The screens removed candidates and left rows short, so both paths below are exercised.
    assert sum(r["within_margin"] for r in table) > 0 and sum(r["above_max_score"] for r in table) > 0
    short = [i for i, r in enumerate(table) if r["random_negatives"]]
    assert 0 < len(short) < len(table)
    for i, (row, reference) in enumerate(zip(table, train, strict=True)):
        if i not in short:
            assert row["negative_ids"] == reference.negative_ids, (row, reference)
        picks = row["negative_ids"]
        assert len(picks) == len(set(picks)) == 3
        forbidden = set(qrels[reference.query_id]) | {p for q in held_out for p in qrels[q]}
        if "p0" in qrels[reference.query_id]:
            forbidden.add("p299")
        assert not set(picks) & forbidden
    # Each row's random picks are its own: mined in other blocks, the rows get the same negatives.
    halves = [
        miner.negatives(texts[a:b], positives[a:b], query_vectors[a:b], ["pairs.jsonl"] * (b - a)).to_pylist()
        for a, b in ((0, 37), (37, len(train)))
    ]
    assert [r["negative_ids"] for r in halves[0] + halves[1]] == [r["negative_ids"] for r in table]
    # The counts a run's stats report, read from the files' count columns.
    mined = tmp_path / "mined"
    mined.mkdir()
    pq.write_table(pa.Table.from_pylist(table), mined / "part-0.parquet")
    counts = mined_counts(mined)
    assert counts["rows"] == len(train) and counts["rows_with_random_fallback"] == len(short)
    assert all(counts[c] == sum(r[c] for r in table) for c in COUNTS)

    # A row with no passage left to give (every one held out) is an error naming its file and positive.
    tiny = HardMiner(index, ids, sha1, siblings, np.ones(300, dtype=bool), None, {**settings, "margin": None})
    with pytest.raises(RagtuneError, match="pairs.jsonl: the row of positive 'p1': too few passages"):
        tiny.negatives([queries["q1"]], ["p1"], query_vectors[1:2], ["pairs.jsonl"])


def test_an_ivf_pq_index_scores_a_positive_from_its_code_as_the_search_does():
    import faiss

    from ragtune.faiss_search import search_chunked
    from ragtune.shard_mining import list_positions, stored_vectors

    rng = np.random.default_rng(1)
    vectors = _unit(rng, 2000)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(16), 16, 8, 4, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    index.nprobe = 8  # every cell: each passage is found
    where = list_positions(index)
    queries = _unit(rng, 20)
    scores, found = search_chunked(index, queries, 50)
    for q, s, f in zip(queries, scores, found, strict=True):
        decoded = stored_vectors(index, f.tolist(), where)
        np.testing.assert_allclose(decoded @ q, s, atol=1e-5)
        # The exact vectors score differently: comparing a margin against them would shift the cut.
        assert np.abs(vectors[f] @ q - s).max() > 1e-3
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    assert list_positions(flat) is None
    np.testing.assert_array_equal(stored_vectors(flat, [3, 1999], None), vectors[[3, 1999]])
