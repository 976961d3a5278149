"""A real uvicorn server on a loopback port: embeddings, search, auth, limits, batching, the OpenAI client."""

import base64
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import write_jsonl

from ragtune.data import load_documents
from ragtune.embeddings import Encoder, load_model
from ragtune.errors import RagtuneError
from ragtune.index import Index, search_index

DOCS = [
    {"id": f"d{i}", "text": f"The {t} handles task number {i} in the body.", "topic": t}
    for i, t in enumerate(["heart", "kidney", "lung", "liver", "bone"] * 4)
]


@pytest.fixture(scope="module")
def index_dir(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    corpus = write_jsonl(folder / "corpus.jsonl", DOCS)
    Index.build(Encoder(tiny_model, folder / "cache", show_progress=False), load_documents(corpus), folder / "index")
    return folder / "index"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, app):
        import uvicorn

        self.app, self.port = app, _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(index_dir, tiny_model):
    from ragtune.serve import create_app

    with Server(create_app(index_dir, max_inputs=8, max_chars=200, batch_wait_ms=20)) as s:
        yield s


def test_embeddings_match_model_encode(server, tiny_model):
    texts = ["what does the kidney do?", "bones"]
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts, "model": "tuned"})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]])
    expected = load_model(tiny_model).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] > 4
    one = httpx.post(f"{server.url}/v1/embeddings", json={"input": "bones", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, expected[1], atol=1e-5)


def test_openai_client_works_unchanged(server, tiny_model):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(input=["heart task", "lung"], model="tuned")
    expected = load_model(tiny_model).encode(["heart task", "lung"], normalize_embeddings=True)
    np.testing.assert_allclose([d.embedding for d in result.data], expected, atol=1e-5)


def test_search_matches_the_cli_and_filters(server, index_dir):
    query = "which organ handles task number 3?"
    r = httpx.post(f"{server.url}/search", json={"query": query, "k": 4})
    hits = r.json()["results"]
    direct = search_index(index_dir, [query], 4, show_progress=False)[0]
    assert [h["id"] for h in hits] == [h.id for h in direct]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in direct], atol=1e-5)
    filtered = httpx.post(f"{server.url}/search", json={"query": query, "k": 3, "filters": {"topic": "lung"}}).json()
    assert len(filtered["results"]) == 3 and all(h["metadata"]["topic"] == "lung" for h in filtered["results"])
    assert httpx.get(f"{server.url}/health").json()["documents"] == len(DOCS)


def test_search_modes_answer_as_the_index_does(server, index_dir):
    query = "kidney task number 6"
    for mode in ("bm25", "hybrid"):
        r = httpx.post(f"{server.url}/search", json={"query": query, "k": 5, "mode": mode})
        assert r.status_code == 200 and r.json()["mode"] == mode, r.text
        direct = search_index(index_dir, [query], 5, mode=mode, show_progress=False)[0]
        assert [h["id"] for h in r.json()["results"]] == [h.id for h in direct]
        np.testing.assert_allclose([h["score"] for h in r.json()["results"]], [h.score for h in direct], atol=1e-5)
    # BM25 finds the passage holding the number; dense (a random tiny model) need not.
    assert httpx.post(f"{server.url}/search", json={"query": "16", "mode": "bm25"}).json()["results"][0]["id"] == "d16"
    assert httpx.post(f"{server.url}/search", json={"query": "x", "mode": "sparse"}).status_code == 422
    assert httpx.get(f"{server.url}/health").json()["fusion"] == {"method": "rrf", "weight": 0.0}


def test_limits_refuse_clearly(server):
    url = f"{server.url}/v1/embeddings"
    too_many = httpx.post(url, json={"input": ["x"] * 9})
    assert too_many.status_code == 413 and "limit is 8" in too_many.json()["detail"]
    too_long = httpx.post(url, json={"input": ["ok", "y" * 201]})
    assert too_long.status_code == 413 and "input 1 has 201 characters" in too_long.json()["detail"]
    assert httpx.post(url, json={"input": []}).status_code == 422
    assert httpx.post(f"{server.url}/search", json={"query": "x", "k": 0}).status_code == 422


def test_concurrent_requests_are_batched(server):
    batcher = server.app.state.systems["tuned"][0]
    before = batcher.batches

    def call(i):
        return httpx.post(f"{server.url}/v1/embeddings", json={"input": f"question {i}"}, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(call, range(32)))
    assert codes == [200] * 32
    assert batcher.batches - before < 32  # several requests shared a model call


def test_api_key_is_required_when_set(index_dir):
    from ragtune.serve import create_app

    with Server(create_app(index_dir, api_key="s3cret")) as s:
        body = {"input": "x"}
        assert httpx.post(f"{s.url}/v1/embeddings", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{s.url}/search", json={"query": "x"}, headers=wrong).status_code == 401
        ok = httpx.post(f"{s.url}/v1/embeddings", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200


def test_add_appends_without_reencoding_and_refuses_other_models(tiny_model, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS[:10])
    enc = Encoder(tiny_model, tmp_path / "cache", show_progress=False)
    Index.build(enc, load_documents(corpus), tmp_path / "idx")
    more = write_jsonl(tmp_path / "more.jsonl", DOCS)
    fresh = Encoder(tiny_model, tmp_path / "other-cache", show_progress=False)
    index = Index.load(tmp_path / "idx")
    assert index.add(fresh, load_documents(more)) == 10 and fresh.encoded_count == 10
    again = Index.load(tmp_path / "idx")
    assert len(again.documents) == 20 and again.vectors.ntotal == 20
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    (other / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    with pytest.raises(RagtuneError, match="different one"):
        again.add(Encoder(other, tmp_path / "c2", max_seq_length=16, show_progress=False), load_documents(more))


def test_page_shows_base_and_tuned_side_by_side_in_chromium(index_dir, tiny_model, tmp_path):
    """Type a query into the page; both columns fill, and a known-relevant passage is marked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_report_browser import chrome

    from ragtune.serve import create_app

    pairs = write_jsonl(tmp_path / "qrels.jsonl", [{"query": "what does the lung do?", "passage": DOCS[2]["text"]}])
    with Server(create_app(index_dir, base_model=str(tiny_model), data=str(pairs))) as s, chrome(tmp_path) as browser:
        browser.get(s.url + "/")
        browser.find_element(By.ID, "q").send_keys("what does the lung do?")
        browser.find_element(By.ID, "go").click()
        for side in ("base", "tuned"):
            WebDriverWait(browser, 30).until(
                lambda b, side=side: len(b.find_elements(By.CSS_SELECTOR, f"#col-{side} .hit")) == 5
            )
        assert browser.find_elements(By.CSS_SELECTOR, ".hit.rel")  # d2 is within the top 5 of 20 on one side
        assert "judged relevant" in browser.find_element(By.ID, "note").text
        browser.save_screenshot(str(tmp_path / "page.png"))


def test_openai_and_langchain_example_script(server, tiny_model):
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "openai_client.py"),
            "--base-url",
            f"{server.url}/v1",
            "--question",
            "lung task",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    dim = load_model(tiny_model).get_embedding_dimension()
    assert lines[0]["openai"]["vectors"] == 2 and lines[0]["openai"]["dim"] == dim
    assert lines[1]["langchain"]["dim"] == dim and len(lines[2]["search"]) == 3
