"""A hostile-but-realistic user: outputs pointed at inputs and at their own folders, crashes mid-write, bad requests.

Every bad input must end in one line naming the file or folder and exit status 2, leave the user's files as they
were, and leave nothing half-written that a re-run would trust.
"""

import asyncio
import contextlib
import io
import json
import sys
from unittest import mock

import numpy as np
import pytest
from conftest import write_jsonl
from helpers import toy_rows
from typer.testing import CliRunner

from ragtune import stages
from ragtune.cli import app, main
from ragtune.errors import RagtuneError
from ragtune.outputs import MARKER, claim_folder, replace_folder, write_json

runner = CliRunner()


def _fails_cleanly(args, *names):
    """Run the real entry point (`ragtune.cli.main`, which turns errors into exit codes) in this process."""
    err = io.StringIO()
    argv = mock.patch.object(sys, "argv", ["ragtune", *map(str, args)])
    with argv, contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main()
    message = err.getvalue().strip()
    assert exit_.value.code == 2, message
    assert message.count("\n") == 0 and "Traceback" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_never_deletes_its_own_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    src = write_jsonl(data / "pairs.jsonl", toy_rows(10))
    before = _snapshot(data)
    _fails_cleanly(["prepare", src, "--out", data], data)
    assert _snapshot(data) == before


def test_prepare_refuses_a_users_folder_but_replaces_its_own(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(10))
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    _fails_cleanly(["prepare", src, "--out", mine], mine)
    assert (mine / "thesis.txt").read_text() == "years of work"

    out = tmp_path / "prepared"
    assert runner.invoke(app, ["prepare", str(src), "--out", str(out)]).exit_code == 0
    (out / "stale.txt").write_text("from an earlier version")
    write_jsonl(src, toy_rows(12))
    assert runner.invoke(app, ["prepare", str(src), "--out", str(out)]).exit_code == 0
    assert not (out / "stale.txt").exists()  # replaced as a whole: ragtune made it
    assert len((out / "queries.jsonl").read_text().splitlines()) == 12
    assert not list(tmp_path.glob(".prepared.*"))  # no temporary folder left beside it


def test_out_that_is_a_file_or_inside_the_input(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(10))
    _fails_cleanly(["prepare", src, "--out", src], src)
    assert src.read_text().count("\n") == 10
    beir = tmp_path / "beir"
    beir.mkdir()
    write_jsonl(beir / "corpus.jsonl", [{"_id": "p1", "text": "a passage"}])
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "a question"}])
    (beir / "qrels").mkdir()
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\n")
    _fails_cleanly(["prepare", beir, "--out", beir / "prepared"], beir)
    assert not (beir / "prepared").exists()


def test_run_with_output_dir_holding_the_users_data(tmp_path, monkeypatch):
    """`output_dir: .` beside `data/pairs.jsonl` once deleted the user's data folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    src = write_jsonl(tmp_path / "data" / "pairs.jsonl", toy_rows(10))
    (tmp_path / "run.yaml").write_text(f"output_dir: .\ndata:\n  path: {src}\n")
    before = _snapshot(tmp_path)
    _fails_cleanly(["run", tmp_path / "run.yaml"], "output")
    assert _snapshot(tmp_path) == before


def test_split_refuses_a_users_folder(tmp_path, tiny_model):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(20))
    assert runner.invoke(app, ["prepare", str(src), "--out", str(tmp_path / "prep")]).exit_code == 0
    mined = ["mine", tmp_path / "prep", "--out", tmp_path / "mined", "--strategy", "random"]
    assert runner.invoke(app, [str(a) for a in mined]).exit_code == 0
    users = tmp_path / "results"
    users.mkdir()
    (users / "keep.csv").write_text("a,b\n")
    _fails_cleanly(["split", tmp_path / "mined", "--out", users], users)
    assert (users / "keep.csv").read_text() == "a,b\n"


def test_output_json_that_is_a_folder_fails_before_the_work(tmp_path):
    folder = tmp_path / "out.json"
    folder.mkdir()
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(10))
    # The model does not exist: had the output been checked after the work, this would name the model instead.
    _fails_cleanly(["evaluate", "--model", tmp_path / "no-model", "--data", src, "--output-json", folder], folder)


def test_legacy_run_folders_stay_replaceable(tmp_path):
    """A run made before the marker existed is still recognised as ragtune's own."""
    run = tmp_path / "run"
    (run / "prepared").mkdir(parents=True)
    (run / "config.yaml").write_text("output_dir: run\n")
    (run / "prepared" / stages.STAGE_FILE).write_text('{"key": "x"}')
    claim_folder(run, "run")
    assert (run / MARKER).exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.yaml").write_text("mine")
    with pytest.raises(RagtuneError, match="not made by ragtune"):
        claim_folder(user, "run")


def test_a_folder_killed_while_being_marked_stays_ragtunes(tmp_path):
    """A kill -9 between writing the marker's temporary file and renaming it left a folder holding only that file:
    the rerun must claim it (seen in test_kill.py), while a user's file beside such a name still refuses."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / f".{MARKER}.a08__0m7.tmp").write_text('{"kind": "m')
    claim_folder(folder, "model")
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    (user / ".ragtune-notes.tmp").write_text("also mine")
    with pytest.raises(RagtuneError, match="not made by ragtune"):
        claim_folder(user, "model")
    assert sorted(p.name for p in user.iterdir()) == [".ragtune-notes.tmp", "notes.txt"]  # nothing removed
    # In ragtune's own folder, only the marker's cut-off temporary file goes: the rest stays.
    (folder / f".{MARKER}.zz.tmp").write_text("{")
    (folder / "ragtune_train.json").write_text("{}")
    claim_folder(folder, "model")
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "ragtune_train.json"]


def test_a_failed_rebuild_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "out"
    with replace_folder(folder, "test") as new:
        write_json(new / "v.json", 1)
    with pytest.raises(OSError), replace_folder(folder, "test") as new:
        write_json(new / "v.json", 2)
        raise OSError("disk full")
    assert json.loads((folder / "v.json").read_text()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_stage_forgets_it_was_done_before_it_starts(tmp_path):
    """A run killed mid-stage must re-run that stage, not trust the marker of the previous version."""
    folder = tmp_path / "model"
    folder.mkdir()
    stages.mark_done(folder, "old-key")

    def crash():
        (folder / "weights.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run_stage("train", folder, "new-key", crash)
    assert not stages.stage_done(folder, "old-key")
    assert not stages.stage_done(folder, "new-key")
    ran = []
    assert stages.run_stage("train", folder, "new-key", lambda: ran.append(1))
    assert ran == [1] and stages.stage_done(folder, "new-key")


def test_index_add_that_crashes_keeps_the_old_index(tmp_path, tiny_model, monkeypatch):
    import faiss

    from ragtune.embeddings import Encoder
    from ragtune.index import Index, index_corpus

    encoder = Encoder(tiny_model, tmp_path / "cache", show_progress=False)
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 3}"} for i in range(12)]
    first = write_jsonl(tmp_path / "first.jsonl", docs[:8])
    every = write_jsonl(tmp_path / "all.jsonl", docs)
    index_corpus(encoder, first, tmp_path / "idx")
    before = _snapshot(tmp_path / "idx")

    def disk_full(*args):
        raise OSError("no space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError):
        index_corpus(encoder, every, tmp_path / "idx", add=True)
    assert _snapshot(tmp_path / "idx") == before
    assert len(Index.load(tmp_path / "idx").documents) == 8
    monkeypatch.undo()
    _, added, _ = index_corpus(encoder, every, tmp_path / "idx", add=True)
    assert added == 4 and len(Index.load(tmp_path / "idx").documents) == 12


def test_index_refuses_a_users_folder(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "one passage"}])
    users = tmp_path / "vectors"
    users.mkdir()
    (users / "mine.npy").write_bytes(b"x")
    _fails_cleanly(["index", tiny_model, corpus, "--out", users], users)
    assert (users / "mine.npy").read_bytes() == b"x"


# ---- the server ------------------------------------------------------------------------------------------------


class _Flaky:
    """An encoder whose model call fails on any batch holding a poisoned text, like a tokenizer on a bad string."""

    batch_size = 8

    class model:  # noqa: N801 - stands in for a SentenceTransformer
        @staticmethod
        def encode(texts, **kwargs):
            if any("poison" in t for t in texts):
                raise ValueError("tokenizer failed")
            return np.ones((len(texts), 4), dtype=np.float32) * np.arange(len(texts))[:, None]


def test_one_bad_request_does_not_fail_its_batch():
    from ragtune.serve import Batcher

    async def go():
        batcher = Batcher(_Flaky(), wait_ms=50, max_batch=64)
        texts = [["a"], ["b", "c"], ["poison"], ["d"]]
        every = asyncio.gather(*(batcher.encode(t, [1] * len(t)) for t in texts), return_exceptions=True)
        return await asyncio.wait_for(every, 60)  # a request left waiting forever fails here

    results = asyncio.run(go())
    assert isinstance(results[2], ValueError)
    for i in (0, 1, 3):
        assert isinstance(results[i], np.ndarray), results[i]
    assert [len(r) for r in (results[0], results[1], results[3])] == [1, 2, 1]


class _Recording:
    """Records what each model call held; a call costs time in proportion to its texts."""

    batch_size = 64

    def __init__(self):
        self.calls: list[list[str]] = []
        outer = self

        class model:  # noqa: N801 - stands in for a SentenceTransformer
            @staticmethod
            def encode(texts, **kwargs):
                import time

                outer.calls.append(list(texts))
                time.sleep(0.002 * len(texts))
                return np.ones((len(texts), 4), dtype=np.float32)

        self.model = model


def test_a_small_request_is_not_stuck_behind_a_huge_one():
    from ragtune.serve import Batcher

    encoder = _Recording()

    async def go():
        batcher = Batcher(encoder, wait_ms=1, max_batch_tokens=1024)
        huge = asyncio.create_task(batcher.encode([f"long {i}" for i in range(256)], [256] * 256))
        await asyncio.sleep(0.05)  # the huge request is already being encoded
        small = await asyncio.wait_for(batcher.encode(["one line"], [6]), 60)
        return small, huge.done(), await asyncio.wait_for(huge, 60)

    small, huge_done_first, huge = asyncio.run(go())
    assert small.shape == (1, 4) and huge.shape == (256, 4) and not huge_done_first
    assert all(sum(256 for t in call if t.startswith("long")) <= 1024 for call in encoder.calls)
    position = next(i for i, call in enumerate(encoder.calls) if "one line" in call)
    assert position < len(encoder.calls) - 10  # served between pieces of the huge request, not after all of them


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    from test_serve import DOCS, Server

    from ragtune.data import load_documents
    from ragtune.embeddings import Encoder
    from ragtune.index import Index
    from ragtune.serve import create_app

    folder = tmp_path_factory.mktemp("hostile")
    corpus = write_jsonl(folder / "corpus.jsonl", DOCS)
    Index.build(Encoder(tiny_model, folder / "cache", show_progress=False), load_documents(corpus), folder / "index")
    with Server(create_app(folder / "index", batch_wait_ms=30, max_request_tokens=4096)) as s:
        yield s


def test_a_lone_surrogate_fails_only_its_own_request(served):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def post(i):
        text = "x \ud800" if i % 5 == 0 else f"question {i}"
        body = json.dumps({"input": text}).encode()  # json escapes the surrogate, as a client in any language would
        r = httpx.post(f"{served.url}/v1/embeddings", content=body, headers={"content-type": "application/json"})
        return i, r.status_code, r.json()

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(post, range(30)))
    for i, status, body in results:
        if i % 5 == 0:
            assert status == 422 and "input 0" in body["error"]["message"], body
        else:
            assert status == 200, body
    body = json.dumps({"query": "x \ud800 y"}).encode()
    search = httpx.post(f"{served.url}/search", content=body, headers={"content-type": "application/json"})
    assert search.status_code == 422


def test_dimensions_models_and_empty_inputs(served):
    import httpx

    url = f"{served.url}/v1/embeddings"
    huge = ["word " * 300] * 200  # within the count and character limits, far over the token limit
    too_much = httpx.post(url, json={"input": huge})
    assert too_much.status_code == 413 and "tokens" in too_much.json()["error"]["message"]
    for bad in (-300, 0, 10_000):
        assert httpx.post(url, json={"input": "bones", "dimensions": bad}).status_code == 422
    short = httpx.post(url, json={"input": "bones", "dimensions": 8}).json()["data"][0]["embedding"]
    assert len(short) == 8 and abs(np.linalg.norm(short) - 1) < 1e-5
    unknown = httpx.post(url, json={"input": "bones", "model": "gpt-4"})
    assert unknown.status_code == 404 and "gpt-4" in unknown.json()["error"]["message"]
    assert httpx.post(url, json={"input": "bones", "model": "tuned"}).json()["model"] == "tuned"
    assert httpx.post(url, json={"input": ""}).status_code == 422
    assert httpx.post(url, json={"input": []}).status_code == 422
    assert httpx.post(f"{served.url}/search", json={"query": "   "}).status_code == 422
    assert httpx.post(f"{served.url}/search", json={"query": "heart", "model": "nope"}).status_code == 404


def test_an_api_key_guards_the_descriptions_too(tiny_model, tmp_path, monkeypatch):
    import httpx
    from test_serve import Server

    from ragtune.data import load_documents
    from ragtune.embeddings import Encoder
    from ragtune.index import Index
    from ragtune.serve import create_app

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "one passage"}])
    Index.build(Encoder(tiny_model, tmp_path / "cache", show_progress=False), load_documents(corpus), tmp_path / "i")
    with Server(create_app(tmp_path / "i", api_key="s3cret")) as s:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{s.url}{path}").status_code in (401, 404), path
        assert httpx.get(f"{s.url}/health").json() == {"status": "ok"}
        auth = {"authorization": "Bearer s3cret"}
        assert httpx.get(f"{s.url}/health", headers=auth).json()["documents"] == 1
    monkeypatch.setenv("RAGTUNE_API_KEY", "  ")
    with pytest.raises(RagtuneError, match="empty"):
        create_app(tmp_path / "i")


# ---- one line and exit 2, never a traceback -------------------------------------------------------------------


def test_a_non_utf8_line_is_named_or_skipped_and_counted(tmp_path):
    src = tmp_path / "pairs.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in toy_rows(5))
    src.write_bytes(good.encode() + b'{"query": "caf\xe9", "passage": "p"}\n')
    _fails_cleanly(["prepare", src, "--out", tmp_path / "o"], f"{src}: line 6", "not UTF-8")
    from ragtune.data import load_pairs

    data = load_pairs(src, skip_bad_rows=True)
    assert data.stats.bad_rows_skipped == 1 and len(data.qrels) == 5


def test_unreadable_inputs_and_bad_model_weights(tmp_path, tiny_model):
    import os
    import shutil

    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(5))
    if os.geteuid() != 0:  # root reads anything; the check only means something for other users
        src.chmod(0)
        _fails_cleanly(["prepare", src, "--out", tmp_path / "o"], src)
        src.chmod(0o644)
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    for weights in broken.rglob("model.safetensors"):
        weights.write_bytes(b"not a tensor file")
    _fails_cleanly(["evaluate", "--model", broken, "--data", src], broken, "weights")


def test_out_under_a_file_and_empty_or_duplicate_yaml(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(5))
    _fails_cleanly(["prepare", src, "--out", src / "sub"], src)
    (tmp_path / "empty.yaml").write_text("")
    _fails_cleanly(["run", tmp_path / "empty.yaml"], "empty.yaml", "empty")
    (tmp_path / "twice.yaml").write_text(f"data:\n  path: {src}\n  path: other.jsonl\n")
    _fails_cleanly(["run", tmp_path / "twice.yaml"], "twice.yaml", "duplicate key 'path'")


def test_csv_keeps_words_like_nan_and_reads_tsv_by_tabs(tmp_path):
    from ragtune.data import load_pairs

    (tmp_path / "p.csv").write_text("query,passage\nNaN,Nan is a flat bread\nwhat is NA,None\n")
    data = load_pairs(tmp_path / "p.csv")
    assert sorted(data.queries.values()) == ["NaN", "what is NA"] and "None" in data.corpus.values()
    (tmp_path / "e.csv").write_text("query,passage\nq,\n")
    _fails_cleanly(["prepare", tmp_path / "e.csv", "--out", tmp_path / "o"], "row 2", "passage")
    (tmp_path / "p.tsv").write_text("query\tpassage\nwhat, then?\tcommas, inside, text\n")
    data = load_pairs(tmp_path / "p.tsv")
    assert list(data.queries.values()) == ["what, then?"] and list(data.corpus.values()) == ["commas, inside, text"]


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAGTUNE_DEBUG", "1")
    argv = mock.patch.object(sys, "argv", ["ragtune", "run", str(tmp_path / "missing.yaml")])
    with argv, pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "Traceback" in capsys.readouterr().err


def test_serve_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    _fails_cleanly(["serve", tmp_path / "index"], "ragtune[serve]")


def test_run_set_names_a_bad_key_before_any_work(tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(5))
    (tmp_path / "c.yaml").write_text(f"data:\n  path: {src}\noutput_dir: {tmp_path / 'run'}\n")
    _fails_cleanly(["run", tmp_path / "c.yaml", "--set", "train.epochz=3"], "train.epochz")
    _fails_cleanly(["run", tmp_path / "c.yaml", "--set", "train.epochs=[1, 2"], "train.epochs", "YAML")
    assert not (tmp_path / "run").exists()


def test_search_without_an_index_refuses_filters_and_missing_corpus(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "one passage"}])
    _fails_cleanly(["search", tiny_model, "q", "--corpus", corpus, "--filter", "lang=en"], "--filter")
    _fails_cleanly(["search", tiny_model, "q"], "--corpus")
    _fails_cleanly(["search", tiny_model], "give a query")


def test_every_deletion_touches_only_what_ragtune_made(tmp_path):
    """The deleting lines of outputs.py: a failed atomic write removes only its temporary file; the clean-up of
    crash leftovers removes only folders holding ragtune's marker; remove_own_folder refuses a user's folder."""
    from ragtune.outputs import atomic_open, remove_own_folder

    target = tmp_path / "results.json"
    target.write_text("the user's old results")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "the user's old results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left

    users = tmp_path / ".out.old-mine"  # named like a leftover, but not made by ragtune
    users.mkdir()
    (users / "notes.txt").write_text("keep")
    leftover = tmp_path / ".out.new-dead"
    leftover.mkdir()
    write_json(leftover / MARKER, {"kind": "test"})
    with replace_folder(tmp_path / "out", "test") as new:
        write_json(new / "v.json", 1)
    assert (users / "notes.txt").read_text() == "keep" and not leftover.exists()

    with pytest.raises(RagtuneError, match="was not made by ragtune"):
        remove_own_folder(users)
    assert (users / "notes.txt").exists()
    remove_own_folder(tmp_path / "out")
    assert not (tmp_path / "out").exists()
