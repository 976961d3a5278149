"""Offline synthesis methods and chunking on real documents from ../shared/data."""

import json
import re

import pytest
from conftest import shared_file, write_jsonl

from ragtune.data import Document, load_documents, load_pairs
from ragtune.errors import RagtuneError
from ragtune.synth import sentences, synthesize


@pytest.fixture(scope="module")
def scifact_docs():
    docs = load_documents(shared_file("scifact"))
    return docs[:300]


@pytest.fixture(scope="module")
def medquad_docs(tmp_path_factory):
    """MedQuAD answers as a bare corpus (the questions are thrown away)."""
    rows = []
    with shared_file("medquad", "medquad_pairs.jsonl").open() as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == 300:
                break
    path = write_jsonl(tmp_path_factory.mktemp("mq") / "answers.jsonl", [{"text": r["answer"]} for r in rows])
    return load_documents(path)


def test_title_pairs_are_beir_titles_and_bodies(scifact_docs):
    pairs, stats = synthesize(scifact_docs, ["title"], seed=1)
    assert len(pairs) == stats.pairs and len(pairs) >= 290
    by_id = {d.id: d for d in scifact_docs}
    for p in pairs:
        doc = by_id[p.doc_id]
        assert p.method == "title" and p.query == doc.metadata["title"].strip()
        assert not p.passage.startswith(p.query) and p.passage in doc.text
    assert stats.documents == 300 and sum(stats.skipped.values()) == 300 - len(pairs)


def test_title_from_markdown_heading_or_first_line():
    docs = [
        Document("a", "# Kidney stones\n\nMost kidney stones pass on their own within weeks."),
        Document("b", "Hypertension overview\nHigh blood pressure damages arteries over many years."),
        Document("c", "One long sentence without any title that goes on. And another sentence follows it here."),
    ]
    pairs, stats = synthesize(docs, ["title"])
    assert [(p.doc_id, p.query) for p in pairs] == [("a", "Kidney stones"), ("b", "Hypertension overview")]
    assert stats.skipped["title: no title"] == 1


def test_ict_query_is_a_sentence_of_the_passage(medquad_docs):
    pairs, stats = synthesize(medquad_docs, ["ict"], seed=3)
    assert len(pairs) > 150
    kept = 0
    for p in pairs:
        doc_text = next(d.text for d in medquad_docs if d.id == p.doc_id)
        assert p.query in sentences(doc_text)
        kept += p.query in p.passage
    assert 0 < kept < len(pairs) * 0.3  # the sentence stays in ~10% of pairs (ict_keep)
    assert all(k.startswith("ict: ") for k in stats.skipped)


def test_crop_spans_come_from_the_document(medquad_docs):
    pairs, _ = synthesize(medquad_docs, ["crop"], seed=5)
    assert len(pairs) > 150
    for p in pairs[:50]:
        words = " ".join(next(d.text for d in medquad_docs if d.id == p.doc_id).split())
        assert p.query in words and p.passage in words and p.query != p.passage


def test_same_seed_same_pairs_other_seed_other_pairs(medquad_docs):
    first, _ = synthesize(medquad_docs, ["ict", "crop"], seed=7)
    again, _ = synthesize(list(reversed(medquad_docs)), ["ict", "crop"], seed=7)
    other, _ = synthesize(medquad_docs, ["ict", "crop"], seed=8)
    assert sorted(map(str, first)) == sorted(map(str, again))  # a document's pairs do not depend on order
    assert sorted(map(str, first)) != sorted(map(str, other))


def test_unknown_method_is_a_clear_error(medquad_docs):
    with pytest.raises(RagtuneError, match="needs an endpoint"):
        synthesize(medquad_docs, ["llm"])
    with pytest.raises(RagtuneError, match="unknown offline method"):
        synthesize(medquad_docs, ["summaries"])


def test_synth_cli_writes_pairs_the_pipeline_reads(tmp_path):
    from typer.testing import CliRunner

    from ragtune.cli import app

    (tmp_path / "beir").mkdir()
    out = tmp_path / "pairs.jsonl"
    with shared_file("scifact", "corpus.jsonl").open() as f:
        lines = [next(f) for _ in range(120)]
    (tmp_path / "beir" / "corpus.jsonl").write_text("".join(lines))
    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "beir"), "--method", "title", "--method", "crop", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = load_pairs(out, "auto", "query", "passage")
    assert set(data.methods.values()) == {"title", "crop"}
    assert len(data.qrels) == sum(1 for _ in out.open())


def test_chunks_fit_the_model_and_overlap(tmp_path):
    from transformers import AutoTokenizer

    from ragtune.chunking import chunk_corpus, chunk_document
    from ragtune.embeddings import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("default"))
    long_doc = Document("d", " ".join(d.text for d in load_documents(shared_file("scifact"))[:6]), {"title": "T"})
    chunks = chunk_document(long_doc, tok, max_tokens=64, overlap=16)
    assert len(chunks) > 5
    for c in chunks:
        assert c.text in long_doc.text and len(tok(c.text)["input_ids"]) <= 64  # [CLS] and [SEP] included
        assert c.metadata == {"title": "T"} and c.doc_id == "d"
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.text[-20:] in long_doc.text and set(a.text.split()[-5:]) & set(b.text.split()[:30])
    assert max(len(tok(c.text)["input_ids"]) for c in chunks) >= 60  # the budget is used, not halved
    ends = sum(bool(re.search(r"[.!?][\"')\]]?$", c.text)) for c in chunks[:-1])
    assert ends >= len(chunks[:-1]) // 2  # most chunks end at a sentence end
    covered = "".join(c.text for c in chunks)
    assert all(w in covered for w in long_doc.text.split()[-10:])  # nothing at the end is lost
    with shared_file("scifact", "corpus.jsonl").open() as f:  # 300 real abstracts: chunking all 5,183 takes 30 s
        write_jsonl(tmp_path / "corpus.jsonl", [json.loads(next(f)) for _ in range(300)])
    stats = chunk_corpus(tmp_path / "corpus.jsonl", tmp_path / "chunks.jsonl", max_tokens=128, overlap=16)
    assert stats["documents"] == 300 and stats["chunks"] > 300 and stats["longest_chunk_tokens"] <= 128
    with pytest.raises(RagtuneError, match="overlap"):
        chunk_document(long_doc, tok, max_tokens=16, overlap=16)


def test_sentences_keep_biomedical_abbreviations_whole():
    from ragtune.sentences import sentence_ends
    from ragtune.synth import sentences

    text = (
        "Smith et al. showed this in Fig. 2 of the paper. The effect was 0.5 mg (p < 0.01). Dr. J. Jones agreed, "
        "e.g. in vol. 3. Did it hold? Yes!"
    )
    assert sentences(text) == [
        "Smith et al. showed this in Fig. 2 of the paper.",
        "The effect was 0.5 mg (p < 0.01).",
        "Dr. J. Jones agreed, e.g. in vol. 3.",
        "Did it hold?",
        "Yes!",
    ]
    assert [text[:e][-6:] for e in sentence_ends(text)] == ["paper.", "0.01).", "ol. 3.", " hold?", "? Yes!"]
