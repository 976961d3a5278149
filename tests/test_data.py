import json

import pandas as pd
import pytest
from conftest import shared_file, write_jsonl

from ragtune.data import load_pairs, load_prepared, save_beir
from ragtune.errors import RagtuneError

ROWS = [
    {"query": "what is a cat", "passage": "A cat is a small feline."},
    {"query": "what is a dog", "passage": "A dog is a loyal canine."},
    {"query": "what is a cat", "passage": "A cat is a small feline."},  # duplicate pair
    {"query": "feline pets?", "passage": "A cat is a small feline."},  # same passage, other query
    {"query": "what is a cat", "passage": "Cats purr."},  # second positive of one query
]


def test_jsonl_dedups_pairs_and_shares_passages(tmp_path):
    data = load_pairs(write_jsonl(tmp_path / "p.jsonl", ROWS))
    s = data.stats
    assert (s.rows_read, s.duplicate_pairs_dropped, s.pairs, s.queries, s.passages) == (5, 1, 4, 3, 3)
    assert s.passages_under_several_queries == 1
    cat = next(q for q, t in data.queries.items() if t == "what is a cat")
    assert sorted(data.corpus[p] for p in data.qrels[cat]) == ["A cat is a small feline.", "Cats purr."]


def test_csv_and_parquet_with_custom_columns(tmp_path):
    frame = pd.DataFrame([{"question": r["query"], "answer": r["passage"]} for r in ROWS])
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        data = load_pairs(tmp_path / name, query_column="question", passage_column="answer")
        assert data.stats.pairs == 4 and data.stats.duplicate_pairs_dropped == 1


def test_saved_hf_dataset_keeps_its_splits(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[3:4])}
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    data = load_pairs(tmp_path / "hf")
    assert set(data.splits) == {"train", "test"}
    assert [data.queries[q] for q in data.splits["test"]] == ["feline pets?"]


def test_missing_column_names_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(RagtuneError, match=r"p.jsonl: no column 'query'.*\['question', 'answer'\]"):
        load_pairs(path)


@pytest.mark.parametrize(
    "bad, problem",
    [("", "is empty or whitespace"), ("   \n", "is empty or whitespace"), (None, "is missing"), (3, "is not text")],
)
def test_bad_text_names_file_row_and_field(tmp_path, bad, problem):
    rows = [ROWS[0], {"query": "ok", "passage": bad}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(RagtuneError, match=rf"p.jsonl: line 2: field 'passage' {problem}"):
        load_pairs(path)
    data = load_pairs(path, skip_bad_rows=True)
    assert data.stats.bad_rows_skipped == 1 and data.stats.pairs == 1
    assert "line 2" in data.stats.skipped_examples[0]


def test_csv_nan_is_an_error_with_spreadsheet_row(tmp_path):
    (tmp_path / "p.csv").write_text("query,passage\nq1,p1\nq2,\n")
    with pytest.raises(RagtuneError, match=r"p.csv: row 3: field 'passage' is missing"):
        load_pairs(tmp_path / "p.csv")


def test_invalid_json_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"query": "q", "passage": "p"}\n{not json\n')
    with pytest.raises(RagtuneError, match=r"p.jsonl: line 2: not valid JSON"):
        load_pairs(tmp_path / "p.jsonl")


def _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\td3\t0\n"):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in (1, 2, 3)])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}])
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_beir_graded_multi_positive(tmp_path):
    data = load_pairs(_beir(tmp_path))
    assert data.qrels == {"q1": {"d1": 2.0, "d2": 1.0}}
    assert data.corpus["d1"] == "T1 text 1" and len(data.corpus) == 3  # distractors stay in the corpus
    assert data.stats.non_relevant_judgements == 1 and data.splits == {"test": ["q1"]}


def test_beir_unknown_corpus_id(tmp_path):
    folder = _beir(tmp_path, "query-id\tcorpus-id\tscore\nq1\tnope\t1\n")
    with pytest.raises(RagtuneError, match=r"test.tsv: line 2: field 'corpus-id' 'nope' is not in corpus.jsonl"):
        load_pairs(folder)


def test_pubmedqa_format_and_bad_entry(tmp_path):
    good = {"1": {"QUESTION": "Q?", "CONTEXTS": ["a.", "b."]}, "2": {"QUESTION": "R?", "CONTEXTS": ["c."]}}
    (tmp_path / "p.json").write_text(json.dumps(good))
    data = load_pairs(tmp_path / "p.json")
    assert sorted(data.corpus.values()) == ["a. b.", "c."]
    good["2"]["QUESTION"] = " "
    (tmp_path / "p.json").write_text(json.dumps(good))
    with pytest.raises(RagtuneError, match=r"entry 2: field 'QUESTION' is empty"):
        load_pairs(tmp_path / "p.json")


def test_sample_is_seeded_and_whole_queries(tmp_path):
    rows = [{"query": f"q{i % 30}", "passage": f"p{i}"} for i in range(90)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    a = load_pairs(path, max_pairs=30, sample_seed=1)
    b = load_pairs(path, max_pairs=30, sample_seed=1)
    c = load_pairs(path, max_pairs=30, sample_seed=2)
    assert a.qrels == b.qrels and a.qrels != c.qrels
    assert all(len(r) == 3 for r in a.qrels.values()) and a.stats.pairs == 30
    assert a.stats.pairs_sampled_out == 60 and len(a.corpus) == 30


def test_prepared_round_trip(tmp_path):
    data = load_pairs(_beir(tmp_path))
    save_beir(data, tmp_path / "prep")
    again = load_prepared(tmp_path / "prep")
    assert (again.corpus, again.queries, again.qrels, again.splits) == (
        data.corpus,
        data.queries,
        data.qrels,
        data.splits,
    )
    assert again.stats == data.stats


def test_real_pubmedqa(pubmedqa_path):
    data = load_pairs(pubmedqa_path, format="pubmedqa")
    assert (data.stats.pairs, len(data.queries), len(data.corpus)) == (1000, 1000, 1000)


def test_real_medquad_quirks():
    data = load_pairs(shared_file("medquad", "medquad_pairs.jsonl"), query_column="question", passage_column="answer")
    s = data.stats
    assert s.rows_read == 16407
    # Repeated questions become one query with several positives; shared answers one passage.
    assert s.pairs + s.duplicate_pairs_dropped == 16407
    assert s.queries < s.pairs and s.passages < s.pairs
    assert s.passages_under_several_queries > 0


def test_real_scifact_beir():
    data = load_pairs(shared_file("scifact"))
    assert len(data.corpus) == 5183
    assert len(data.splits["test"]) == 300 and len(data.splits["train"]) == 809


def test_pubmedqa_download_into_cache_when_missing(tmp_path, monkeypatch):
    import io

    import ragtune.data as data_mod

    payload = json.dumps({"7": {"QUESTION": "Q?", "CONTEXTS": ["c."]}}).encode()
    monkeypatch.chdir(tmp_path)  # no ../shared from here
    monkeypatch.delenv("RAGTUNE_PUBMEDQA", raising=False)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", fake_urlopen)
    data = load_pairs(None, format="pubmedqa")
    assert calls == [data_mod.PUBMEDQA_URL] and data.stats.pairs == 1
    assert (tmp_path / "cache" / "pubmedqa" / "ori_pqal.json").read_bytes() == payload
    load_pairs(None, format="pubmedqa")
    assert len(calls) == 1  # the cached copy is used next time


def test_pubmedqa_unreachable_says_where_it_looked(tmp_path, monkeypatch):
    import ragtune.data as data_mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAGTUNE_PUBMEDQA", raising=False)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)
    with pytest.raises(RagtuneError, match=r"RAGTUNE_PUBMEDQA.*downloading .* failed: no network"):
        load_pairs("missing.json", format="pubmedqa")


def test_unknown_extension_and_missing_path(tmp_path):
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(RagtuneError, match="cannot tell the format"):
        load_pairs(tmp_path / "p.txt")
    with pytest.raises(RagtuneError, match="data not found"):
        load_pairs(tmp_path / "nope.jsonl")
