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


def test_mined_rows_become_a_training_folder_that_trains(tiny_model, tmp_path):
    from test_shard_index import write_shards

    from ragtune.config import TrainConfig
    from ragtune.data import load_ragtune_data
    from ragtune.shard_mining import training_data_from_shards
    from ragtune.train import train

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    write_shards(tmp_path / "shards", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
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
    assert result.steps == 13 and (result.model_dir / "config.json").is_file()

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
