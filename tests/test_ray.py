"""The Ray engine on a local cluster (2 CPUs, the tiny BERT): the same vectors, negatives, metrics and index as one
process."""

import json

import numpy as np
import pytest
from conftest import write_jsonl
from helpers import toy_rows

from ragtune.config import DataConfig, EvalConfig, MiningConfig, SplitConfig
from ragtune.embeddings import Encoder
from ragtune.index import index_corpus, search_index
from ragtune.pipeline import evaluate_stage, mine_stage, prepare_stage, split_stage
from ragtune.ray_engine import ray_engine

pytest.importorskip("ray")

N = 600


def _stages(folder, model):
    """prepare -> mine (hard negatives) -> split -> evaluate, as `ragtune run` chains them."""
    rows = toy_rows(N)
    for i, r in enumerate(rows):  # lengths from a few words to a paragraph: batches with real padding
        r["passage"] = r["passage"] + " It also matters." * (i % 23)
    src = write_jsonl(folder / "pairs.jsonl", rows)
    prepare_stage(DataConfig(path=str(src)), folder / "prepared")
    mine_stage(folder / "prepared", str(model), MiningConfig(strategy="hard"), folder / "mined", folder / "cache")
    split_stage(folder / "mined", SplitConfig(), folder / "data", folder / "cache")
    result = evaluate_stage({"m": str(model)}, folder / "data", "test", EvalConfig(), folder / "cache")
    index_corpus(Encoder(str(model), folder / "cache", show_progress=False), folder / "data", folder / "index")
    return result


@pytest.mark.slow  # starts a Ray cluster (~15 s) and runs the stages twice
def test_a_local_ray_cluster_encodes_mines_evaluates_and_indexes_as_one_process(tiny_model, tmp_path, monkeypatch):
    from ragtune import faiss_search

    # Small enough that mining's and evaluation's searches run as several Ray tasks (the same chunks both sides).
    monkeypatch.setattr(faiss_search, "_REMOTE_MIN", 256)
    monkeypatch.setattr(faiss_search, "_SEARCH_CHUNK", 64)
    (tmp_path / "one").mkdir()
    (tmp_path / "ray").mkdir()
    alone = _stages(tmp_path / "one", tiny_model)
    with ray_engine(actors=2) as engine:
        assert engine.actors == 2
        spread = _stages(tmp_path / "ray", tiny_model)
        assert engine.search_tasks >= 2  # the corpus-wide searches ran on the cluster
        texts = [json.loads(line)["passage"] for line in (tmp_path / "ray" / "pairs.jsonl").read_text().splitlines()]
        on_ray = Encoder(str(tiny_model), tmp_path / "fresh-ray", show_progress=False)
        before = engine.batches
        vectors_ray = on_ray.encode(texts)
        assert on_ray.encoded_count == N and engine.batches - before == -(-N // on_ray.batch_size)  # by the cluster
    vectors_one = Encoder(str(tiny_model), tmp_path / "fresh-one", show_progress=False).encode(texts)
    # Each batch is the one a single process makes; only the actors' thread count differs (float rounding).
    assert np.abs(vectors_ray - vectors_one).max() < 1e-6
    assert (vectors_ray @ vectors_ray.T).argsort(axis=1)[:, -10:].tolist() == (
        (vectors_one @ vectors_one.T).argsort(axis=1)[:, -10:].tolist()
    )
    rows = [(tmp_path / side / "mined" / "rows.jsonl").read_text().splitlines() for side in ("one", "ray")]
    assert len(rows[0]) == N and rows[0] == rows[1]  # the same negatives, row for row
    assert alone.metrics == spread.metrics  # the same ranks, so the same metrics, exactly
    queries = ["what does the kidney do, case 7?", "the heart has job number 12"]
    hits = [search_index(tmp_path / side / "index", queries, 10, show_progress=False) for side in ("one", "ray")]
    assert [[h.id for h in q] for q in hits[0]] == [[h.id for h in q] for q in hits[1]]
