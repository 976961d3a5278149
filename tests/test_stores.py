"""Vector stores against the real embedded engines (LanceDB, Chroma, Milvus Lite): index, filtered search, hybrid,
add, checked promotion, refusal, rollback, and a server switching models while it is being queried. No mocks."""

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import write_jsonl

from ragtune.data import load_documents
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.hybrid import Fusion
from ragtune.index import Index
from ragtune.rollout import (
    PromotionRefused,
    StoreState,
    add_to_store,
    index_to_store,
    promote_collection,
    rollback,
    serving_collection,
)
from ragtune.search import Searcher
from ragtune.stores import open_store

# Queries that share no content word with their passage: the real model finds them, a random one cannot.
TOPICS = [
    ("heart", "Cardiac arrest happens when the heart suddenly stops pumping blood.", "my chest hurts and my pulse"),
    ("kidney", "The kidneys filter waste from the blood and make urine.", "which organ cleans toxins and makes pee"),
    ("skin", "Eczema causes itchy, red and inflamed patches of skin.", "a rash that will not stop itching"),
    ("bone", "Osteoporosis makes bones brittle and prone to fractures.", "fragile skeleton that breaks easily"),
    ("eye", "Glaucoma damages the optic nerve and can lead to blindness.", "losing my sight from eye pressure"),
    ("lung", "Asthma narrows the airways and makes breathing difficult.", "wheezing and short of breath"),
    (
        "liver",
        "Hepatitis is an inflammation of the liver, often caused by a virus.",
        "jaundice after a viral infection",
    ),
    ("brain", "A stroke occurs when blood flow to part of the brain is cut off.", "sudden numbness on one side"),
    ("sleep", "Insomnia is trouble falling or staying asleep.", "I cannot nod off at night"),
    ("teeth", "Cavities are holes in teeth caused by bacteria and sugar.", "tooth decay from eating candy"),
]
ENGINES = ["lancedb", "chroma", "milvus-lite"]


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    """A BEIR folder whose corpus ids are the ids the store keeps, so it can check a collection."""
    folder = tmp_path_factory.mktemp("beir")
    corpus = [
        {"_id": t, "title": "", "text": text, "ward": "ab"[i % 2], "year": 2020 + i % 3}
        for i, (t, text, _) in enumerate(TOPICS)
    ]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q-{t}", "text": q} for t, _, q in TOPICS])
    (folder / "qrels").mkdir()
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q-{t}\t{t}\t1\n" for t, _, _ in TOPICS)
    for split in ("dev", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text(qrels)
    return folder


@pytest.fixture(scope="module")
def minilm():
    return Encoder("default", show_progress=False)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return Encoder(str(tiny_model), show_progress=False)


def _uri(engine: str, tmp_path) -> str:
    return f"milvus-lite://{tmp_path / 'vectors.db'}" if engine == "milvus-lite" else f"{engine}://{tmp_path / 'vs'}"


def _ranked(hits) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 4)) for h in found] for found in hits]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_store_searches_as_the_exact_index_does_with_filters_modes_and_added_passages(
    engine, beir, minilm, tiny, tmp_path
):
    uri = _uri(engine, tmp_path)

    def search_store(uri, queries, k, filters=None, mode="dense"):
        return Searcher(uri).search(queries, k, filters, mode)

    result = index_to_store(minilm, beir, uri, fusion=Fusion("convex", 0.3))
    assert result.serving == result.collection  # the first collection serves at once: nothing to compare with
    exact = Index.build(minilm, load_documents(beir), tmp_path / "exact", Fusion("convex", 0.3))
    queries = [q for _, _, q in TOPICS] + ["blood"]
    vectors = minilm.model.encode(queries, normalize_embeddings=True)
    for filters in (None, {"ward": "a"}, {"ward": "b", "year": 2021}, {"ward": "nowhere"}):
        for mode in ("dense", "bm25", "hybrid"):
            got = search_store(uri, queries, 4, filters, mode)
            want = exact.query(queries, vectors, 4, filters, mode)
            assert [[h for h, _ in q] for q in _ranked(got)] == [[h for h, _ in q] for q in _ranked(want)], (
                filters,
                mode,
            )
            for g, w in zip(_ranked(got), _ranked(want), strict=True):
                assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=2e-3), (filters, mode)
    filtered = search_store(uri, ["blood"], 10, {"ward": "a"}, "hybrid")[0]
    assert filtered and {h.metadata["ward"] for h in filtered} == {"a"}
    assert {"heart", "kidney"} & {h.id for h in search_store(uri, ["blood"], 10, {"ward": "nowhere"})[0]} == set()

    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "gout", "text": "Gout is uric acid crystals in a joint."}])
    assert add_to_store(minilm, more, uri).added == 1
    assert add_to_store(minilm, more, uri).added == 0  # ids already there are not written twice
    assert search_store(uri, ["my big toe joint is swollen"], 1)[0][0].id == "gout"
    assert search_store(uri, ["uric acid"], 1, mode="bm25")[0][0].id == "gout"
    assert len(open_store(uri).ids(serving_collection(uri).name)) == len(TOPICS) + 1
    with pytest.raises(RagtuneError, match="different model"):
        add_to_store(tiny, more, uri)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_new_model_is_checked_before_it_serves_a_regression_is_refused_and_rollback_returns(
    engine, beir, minilm, tiny, tmp_path
):
    uri = _uri(engine, tmp_path)
    first = index_to_store(tiny, beir, uri).collection
    better = index_to_store(minilm, beir, uri, check_data=beir, check_split="dev")
    assert better.serving == better.collection != first
    assert better.check.new["ndcg@10"] > better.check.serving["ndcg@10"]  # MiniLM beats a random model
    assert Searcher(uri).search(["wheezing and short of breath"], 1)[0][0].id == "lung"

    with pytest.raises(PromotionRefused) as refused:
        index_to_store(tiny, beir, uri, check_data=beir, check_split="dev")
    worse = refused.value.result.collection
    assert refused.value.exit_code == 3 and "--force" in str(refused.value)
    state = StoreState.read(open_store(uri))
    assert state.serving == better.collection and worse in state.collections  # kept, not served
    assert set(open_store(uri).names()) >= {first, better.collection, worse}

    assert promote_collection(uri, worse, beir, "dev", force=True).serving == worse
    assert serving_collection(uri).meta["model_fingerprint"] == tiny.fingerprint
    assert rollback(uri).serving == better.collection
    assert rollback(uri).serving == first
    with pytest.raises(RagtuneError, match="nothing to roll back"):
        rollback(uri)
    staged = index_to_store(minilm, beir, uri, promote=False)
    assert staged.serving == first and StoreState.read(open_store(uri)).serving == first
    assert promote_collection(uri).serving == staged.collection  # the newest, unchecked when asked so


@pytest.mark.slow  # twelve commands, five of them loading a model
def test_store_commands_index_search_refuse_force_and_roll_back(beir, tiny_model, tmp_path, capsys):
    from helpers import entry_point

    uri = f"lancedb://{tmp_path / 'vs'}"

    def ragtune(*args) -> subprocess.CompletedProcess:
        """The `ragtune` entry point in this process: its exit status and what it printed on stdout and stderr."""
        code = entry_point(*args)
        printed = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, printed.out, printed.err)

    done = ragtune("index", "default", str(beir), "--store", uri, "--weight", "0.3")
    assert done.returncode == 0 and "now serves" in done.stdout, done.stderr
    found = ragtune("search", uri, "wheezing and short of breath", "--filter", "ward=b", "--json", "-k", "2")
    hits = json.loads(found.stdout)[0]["results"]
    assert found.returncode == 0 and hits[0]["id"] == "lung" and {h["metadata"]["ward"] for h in hits} == {"b"}
    hybrid = ragtune("search", uri, "blood", "--mode", "hybrid", "--json")
    assert hybrid.returncode == 0 and json.loads(hybrid.stdout)[0]["results"]

    check = ["--check", str(beir), "--check-split", "dev"]
    refused = ragtune("index", str(tiny_model), str(beir), "--store", uri, *check)
    assert refused.returncode == 3 and "not promoted" in refused.stderr and "Traceback" not in refused.stderr
    forced = ragtune("index", "--store", uri, "--promote", "--force", *check)
    assert forced.returncode == 0 and "now serves" in forced.stdout, forced.stderr
    back = ragtune("index", "--store", uri, "--rollback")
    assert back.returncode == 0 and "serves again" in back.stdout
    assert ragtune("search", uri, "wheezing and short of breath", "--json").stdout.count('"lung"') >= 1

    for args, says in [
        (["index", "default", str(beir), "--store", "qdrant://localhost:6333"], "remote servers are not supported"),
        (["index", "default", str(beir), "--store", uri, "--out", str(tmp_path / "x")], "give one of --out"),
        (["index", "--store", uri, "--rollback", "--promote"], "--rollback stands alone"),
        (["index", "default", str(beir), "--out", str(tmp_path / "y"), "--promote"], "are for --store"),
    ]:
        bad = ragtune(*args)
        assert bad.returncode == 2 and says in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)


def test_serve_switches_models_while_queried_with_no_error_and_one_model_per_answer(beir, minilm, tiny, tmp_path):
    from test_serve import Server

    from ragtune.serve import create_app

    uri = f"lancedb://{tmp_path / 'vs'}"
    a = index_to_store(tiny, beir, uri).collection
    b = index_to_store(minilm, beir, uri, promote=False).collection
    queries = [q for _, _, q in TOPICS]
    store, state = open_store(uri), StoreState.read(open_store(uri))
    expected = {}
    for name, encoder in ((a, tiny), (b, minilm)):
        from ragtune.rollout import StoreCollection

        hits = StoreCollection(store, name, state.collections[name]).query(
            queries, encoder.model.encode(queries, normalize_embeddings=True), 5
        )
        expected[name] = {q: [h.id for h in found] for q, found in zip(queries, hits, strict=True)}
    assert expected[a] != expected[b]  # the two models answer differently, so an answer tells which one made it

    answers, errors, stop = [], [], threading.Event()

    def client(url: str, n: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                q = queries[n % len(queries)]
                n += 1
                try:
                    r = http.post(f"{url}/search", json={"query": q, "k": 5})
                    r.raise_for_status()
                    body = r.json()
                    answers.append((q, body["collection"], [h["id"] for h in body["results"]]))
                except Exception as err:  # every failure counts: none is expected
                    errors.append(repr(err))

    with Server(create_app(uri)) as server:
        threads = [threading.Thread(target=client, args=(server.url, i)) for i in range(4)]
        for t in threads:
            t.start()
        seen = []
        for step in (lambda: promote_collection(uri, b), lambda: rollback(uri), lambda: promote_collection(uri, b)):
            time.sleep(0.75)  # four clients keep asking through each switch
            step()
            deadline = time.monotonic() + 60
            target = StoreState.read(store).serving
            while httpx.get(f"{server.url}/health").json()["collection"] != target:
                assert time.monotonic() < deadline, "the server did not pick up the switch"
                time.sleep(0.1)
            seen.append(target)
        time.sleep(0.75)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        # Passages added beside a running server are found by it, on both sides of hybrid search.
        more = write_jsonl(tmp_path / "more.jsonl", [{"id": "gout", "text": "Gout is uric acid crystals in a joint."}])
        add_to_store(minilm, more, uri)
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/health").json()["documents"] != len(TOPICS) + 1:
            assert time.monotonic() < deadline, "the server did not pick up the added passage"
            time.sleep(0.1)
        for mode, query in (("dense", "my big toe joint is swollen"), ("bm25", "uric acid")):
            top = httpx.post(f"{server.url}/search", json={"query": query, "k": 1, "mode": mode}).json()
            assert top["results"][0]["id"] == "gout", mode
    assert seen == [b, a, b]
    assert errors == []
    assert {c for _, c, _ in answers} == {a, b} and len(answers) > 20
    wrong = [(q, c, ids) for q, c, ids in answers if ids != expected[c][q]]
    assert wrong == []  # each answer is exactly the named collection's, by the model that built it


@pytest.mark.slow  # four processes loading torch, LangChain and LlamaIndex
@pytest.mark.parametrize("target", ["index", "lancedb"])
def test_langchain_and_llamaindex_retrievers_answer_as_ragtune_does(target, beir, minilm, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if target == "index":
        where = str(tmp_path / "index")
        Index.build(minilm, load_documents(beir), where, Fusion("convex", 0.3))
    else:
        where = f"lancedb://{tmp_path / 'vs'}"
        index_to_store(minilm, beir, where, fusion=Fusion("convex", 0.3))
    question = "wheezing and short of breath"
    for mode in ("hybrid", "bm25"):
        done = subprocess.run(
            [sys.executable, str(root / "examples" / "retrievers.py"), where, question, "-k", "3", "--mode", mode],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout.strip().splitlines()[-1])
        want = [{"id": h.id, "score": round(h.score, 4)} for h in Searcher(where).search([question], 3, None, mode)[0]]
        assert got["langchain"] == want == got["llamaindex"], mode
        assert want[0]["id"] == "lung"


def test_what_a_store_cannot_keep_is_refused_by_name(tiny, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"id": "huge", "text": "word " * 14000}])
    with pytest.raises(RagtuneError, match="document huge: 69999 bytes of text; Milvus keeps at most 65535"):
        index_to_store(tiny, long, f"milvus-lite://{tmp_path / 'v.db'}")
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"id": "a", "text": "some text", "vector": "mine"}])
    with pytest.raises(RagtuneError, match="document a: metadata field 'vector' clashes"):
        index_to_store(tiny, clash, f"lancedb://{tmp_path / 'vs'}")
    with pytest.raises(RagtuneError, match="Milvus Lite keeps a collection file"):
        open_store(f"milvus-lite://{tmp_path / 'folder'}")
