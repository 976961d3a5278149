"""Evaluating index folders without loading their corpus: the same numbers as `ragtune evaluate`/`compare` over
the corpus in memory, and one-line errors for what cannot be evaluated."""

import json

import pytest
from conftest import build_tiny_bert, write_jsonl
from helpers import toy_rows
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.data import Document
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.index import Index
from ragtune.pipeline import compare_stage, evaluate_stage
from ragtune.shard_eval import compare_from_shards, evaluate_from_shards

N = 300


def beir_folder(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    rows = toy_rows(N)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "text": r["passage"]} for i, r in enumerate(rows)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": r["query"]} for i, r in enumerate(rows)])
    # Two relevant passages for some queries, a non-relevant judgement for one: graded qrels as BEIR has them.
    test = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t{1 + i % 2}" for i in range(0, 200)]
    test += [f"q{i}\td{(i + 10) % N}\t1" for i in range(0, 200, 7)] + ["q250\td3\t0"]
    (folder / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    (folder / "qrels" / "dev.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(200, N)))
    return folder, rows


def build(model, rows, folder):
    documents = [Document(f"d{i}", r["passage"]) for i, r in enumerate(rows)]
    Index.build(Encoder(str(model), show_progress=False), documents, folder)
    return folder


def test_indexes_evaluated_from_their_folders_score_as_the_corpus_in_memory(tiny_model, tmp_path):
    beir, rows = beir_folder(tmp_path)
    other = build_tiny_bert(tmp_path / "other", layers=1)
    first, second = build(tiny_model, rows, tmp_path / "index-a"), build(other, rows, tmp_path / "index-b")

    result = evaluate_from_shards({"a": first, "b": second}, beir, "test")
    expected = evaluate_stage({"a": str(tiny_model), "b": str(other)}, beir, "test", bm25=False)
    assert result.queries == expected.queries == 200 and result.corpus == N
    assert result.metrics == expected.metrics and result.metrics["a"] != result.metrics["b"]
    assert result.per_query == expected.per_query
    assert result.top == expected.top

    compared = compare_from_shards({"a": first, "b": second}, beir, "test")
    reference = compare_stage({"a": str(tiny_model), "b": str(other)}, beir, "test", bm25=False)
    assert compared.systems == ["a", "b"] and compared.ci95 == reference.ci95
    assert [c.to_dict() for c in compared.comparisons] == [c.to_dict() for c in reference.comparisons]

    out = tmp_path / "out.json"
    command = ["evaluate-shards", f"a={first}", f"b={second}", "--data", str(beir), "--split", "test"]
    done = CliRunner().invoke(app, [*command, "--output-json", str(out)])
    assert done.exit_code == 0, done.output
    assert "200 queries over a corpus of 300 passages" in done.output
    assert json.loads(out.read_text())["metrics"]["b"] == pytest.approx(expected.metrics["b"])


def test_what_cannot_be_evaluated_is_a_one_line_error(tiny_model, tmp_path):
    beir, rows = beir_folder(tmp_path)
    index = build(tiny_model, rows, tmp_path / "index")
    with pytest.raises(RagtuneError, match=r"no split 'valid' \(qrels/valid.tsv\); splits: dev, test"):
        evaluate_from_shards({"a": index}, beir, "valid")
    smaller = build(tiny_model, rows[:150], tmp_path / "smaller")
    with pytest.raises(RagtuneError, match=r"judges 51 passage\(s\) not in .*smaller, e.g. 'd150'"):
        evaluate_from_shards({"a": smaller}, beir, "test")
    with pytest.raises(RagtuneError, match="150 passages, but the indexes before it hold 300"):
        evaluate_from_shards({"a": index, "small": smaller}, beir, "test")
    with pytest.raises(RagtuneError, match="not a ragtune index"):
        evaluate_from_shards({"a": tmp_path}, beir, "test")
    (beir / "qrels" / "bad.tsv").write_text("q1\td1\t1\nq2\td2\n")
    with pytest.raises(RagtuneError, match=r"bad.tsv: line 2: expected 3 tab-separated fields"):
        evaluate_from_shards({"a": index}, beir, "bad")
    (beir / "qrels" / "stranger.tsv").write_text("q9999\td1\t1\n")
    with pytest.raises(RagtuneError, match=r"stranger.tsv: line 1: field 'query-id' 'q9999' is not in queries"):
        evaluate_from_shards({"a": index}, beir, "stranger")
