"""Models trained with query and passage prompts (E5, BGE): ragtune reads them from the model and puts them before
every query and passage it encodes, trains on, indexes, searches and serves, once."""

import json
import shutil

import httpx
import numpy as np
import pytest
from conftest import write_jsonl
from helpers import split_folder
from test_serve import DOCS, Server

from ragtune.config import TrainConfig
from ragtune.data import load_documents
from ragtune.embeddings import PASSAGE, QUERY, Encoder, load_model, model_prompts, model_settings
from ragtune.errors import RagtuneError
from ragtune.index import Index, encode_queries
from ragtune.train import column_prompts, train, training_arguments

PROMPTS = {"query": "query: ", "document": "passage: "}


def with_settings(model, folder, **settings):
    """A copy of `model` whose config_sentence_transformers.json has these settings."""
    shutil.copytree(model, folder)
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **settings}))
    return folder


@pytest.fixture(scope="module")
def prompted(tiny_model, tmp_path_factory):
    # default_prompt_name too: a model that asks for its query prompt on every text must still get it only once.
    return with_settings(tiny_model, tmp_path_factory.mktemp("p") / "m", prompts=PROMPTS, default_prompt_name="query")


def plain(tiny_model, texts):
    """The same weights without any prompt machinery: the texts exactly as given."""
    return load_model(tiny_model).encode(texts, normalize_embeddings=True)


def test_prompts_are_read_from_the_model_and_put_before_each_text_once(prompted, tiny_model, tmp_path):
    assert model_prompts(tiny_model) == {}  # empty prompts, as sentence-transformers saves them, are no prompts
    assert model_prompts(prompted) == {QUERY: "query: ", PASSAGE: "passage: "}
    encoder = Encoder(prompted, tmp_path / "cache", show_progress=False)
    texts = ["what does the kidney do?", "The kidney filters blood."]
    queries, passages = encoder.encode(texts, kind=QUERY), encoder.encode(texts)
    np.testing.assert_allclose(queries, plain(tiny_model, [f"query: {t}" for t in texts]), atol=1e-5)
    np.testing.assert_allclose(passages, plain(tiny_model, [f"passage: {t}" for t in texts]), atol=1e-5)
    # The cache keeps a query and a passage of the same words apart, also when read back by a new encoder.
    again = Encoder(prompted, tmp_path / "cache", show_progress=False)
    np.testing.assert_allclose(again.encode(texts[:1], kind=QUERY), queries[:1], atol=1e-6)
    np.testing.assert_allclose(again.encode(texts[:1]), passages[:1], atol=1e-6)
    assert again.encoded_count == 0 and encoder.identity()["prompts"] == model_prompts(prompted)

    broken = with_settings(tiny_model, tmp_path / "broken", prompts={"query": 3})
    with pytest.raises(RagtuneError, match="field 'prompts' must map names to strings"):
        Encoder(broken, tmp_path / "cache")


def test_index_search_and_server_read_queries_with_the_query_prompt(prompted, tiny_model, tmp_path):
    from ragtune.serve import create_app

    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    index = Index.build(
        Encoder(prompted, tmp_path / "cache", show_progress=False), load_documents(corpus), tmp_path / "i"
    )
    query = "which organ handles task number 3?"
    stored = index.vectors.reconstruct_n(0, index.vectors.ntotal)
    np.testing.assert_allclose(stored, plain(tiny_model, [f"passage: {d['text']}" for d in DOCS]), atol=1e-5)
    np.testing.assert_allclose(
        encode_queries(Index.load(tmp_path / "i").query_encoder(False), [query]),
        plain(tiny_model, [f"query: {query}"]),
        atol=1e-5,
    )
    with Server(create_app(tmp_path / "i", batch_wait_ms=5)) as server:
        for kind, prefix in (
            ({}, "passage: "),
            ({"input_type": "passage"}, "passage: "),
            ({"input_type": "query"}, "query: "),
        ):
            r = httpx.post(f"{server.url}/v1/embeddings", json={"input": [query], **kind})
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]])
            np.testing.assert_allclose(got, plain(tiny_model, [prefix + query]), atol=1e-5)
        bad = httpx.post(f"{server.url}/v1/embeddings", json={"input": [query], "input_type": "question"})
        assert bad.status_code == 422
        hits = httpx.post(f"{server.url}/search", json={"query": query, "k": 1}).json()["results"]
        scores = plain(tiny_model, [f"query: {query}"]) @ stored.T
        assert hits[0]["score"] == pytest.approx(float(scores.max()), abs=1e-5)


def test_training_reads_texts_with_the_models_prompts_and_saves_them(prompted, tiny_model, tmp_path):
    columns = ["query", "positive", "negative_1"]
    assert column_prompts(columns, model_prompts(prompted)) == {
        "query": "query: ",
        "positive": "passage: ",
        "negative_1": "passage: ",
    }
    assert column_prompts(columns, {QUERY: "query: "}) == {"query": "query: "}
    args = training_arguments(TrainConfig(), tmp_path / "args", 32, False, {"query": "query: "})
    assert args.prompts == {"query": "query: "}

    data = split_folder(tmp_path, tiny_model)
    cfg = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, evals_per_epoch=1)
    with_prompts = train(str(prompted), data, tmp_path / "with", cfg)
    without = train(str(tiny_model), data, tmp_path / "without", cfg)
    probe = ["what does the heart do?"]
    # Same weights, data and seed: only the prompts differ, so different weights mean they reached the loss.
    assert not np.allclose(plain(with_prompts.model_dir, probe), plain(without.model_dir, probe), atol=1e-4)
    saved = model_settings(with_prompts.model_dir)
    assert saved["prompts"] == PROMPTS and saved["default_prompt_name"] == "query"
    assert model_settings(without.model_dir)["default_prompt_name"] is None
