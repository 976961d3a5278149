"""The Ray engine on a local cluster (2 CPUs, the tiny BERT): the same vectors, negatives, metrics and index as one
process."""

import json

import numpy as np
import pytest
from conftest import write_jsonl
from helpers import toy_rows

from ragtune.config import DataConfig, EvalConfig, MiningConfig, SplitConfig
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
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


@pytest.mark.slow  # starts a Ray cluster (~15 s)
def test_gpu_actors_are_as_many_as_the_gpus_hold(tiny_model, tmp_path):
    """A cluster that declares one GPU (no real one: Ray schedules by declared resources, torch stays on the CPU):
    actors of one GPU each make a pool of one, half a GPU each a pool of two, whatever the CPU count; more GPU than
    the cluster has is a one-line error, not a pool that waits forever."""
    import ray

    from ragtune.shards import embed_shards

    texts = [r["passage"] for r in toy_rows(300)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    alone = Encoder(tiny_model, tmp_path / "cache-alone").encode(texts)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        for gpus, pool in ((1.0, 1), (0.5, 2)):
            with ray_engine(gpus=gpus) as engine:
                vectors = Encoder(tiny_model, tmp_path / f"cache-{gpus}").encode(texts)
                shards = embed_shards(Encoder(tiny_model), [corpus], tmp_path / f"shards-{gpus}")
            assert engine.pools == [pool, pool] and engine.batches > 0
            np.testing.assert_allclose(vectors, alone, atol=1e-5)
            assert shards.meta["count"] == 300
        with ray_engine(gpus=2.0), pytest.raises(RagtuneError, match="has 1 GPUs; an actor asks for 2"):
            Encoder(tiny_model, tmp_path / "cache-2").encode(texts)
    finally:
        ray.shutdown()


def test_a_worker_keeps_the_models_it_loaded_and_loads_a_retrained_one_again(tiny_model, tmp_path, monkeypatch):
    """What a Ray worker process keeps between encoding tasks: the same model is loaded once; a model retrained in
    the same folder (other files, so another fingerprint) is loaded anew; the two last used stay."""
    from conftest import build_tiny_bert

    from ragtune import embeddings, ray_engine

    monkeypatch.setattr(ray_engine, "_LOADED", {})
    loads = []
    real = embeddings.load_model
    monkeypatch.setattr(embeddings, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    base = ray_engine.WorkerModel.of(Encoder(tiny_model))
    first = base.load()
    assert base.load() is first and len(loads) == 1
    folder = build_tiny_bert(tmp_path / "run", layers=1)
    before = ray_engine.WorkerModel.of(Encoder(folder))
    assert before.load() is not first and len(loads) == 2
    build_tiny_bert(tmp_path / "run", layers=3)  # retrained where it was
    after = ray_engine.WorkerModel.of(Encoder(folder))
    assert after.location == before.location and after != before
    assert after.load().get_embedding_dimension() == 32 and len(loads) == 3
    assert list(ray_engine._LOADED) == [before, after]  # the base model, least recently used, made room
    assert before.load() is not None and len(loads) == 3 and base.load() is not first and len(loads) == 4
