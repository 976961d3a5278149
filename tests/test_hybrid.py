import json
import math
import subprocess
import sys

import pytest
from conftest import shared_file

from ragtune.hybrid import Fusion, choose_fusion, fuse, fuse_one
from ragtune.metrics import aggregate, per_query
from ragtune.report import recommend

DENSE = {"a": 0.9, "b": 0.5, "c": 0.1}  # min-max: a 1, b 0.5, c 0
SPARSE = {"b": 10.0, "d": 4.0, "a": 2.0}  # min-max: b 1, d 0.25, a 0


def test_convex_fusion_normalises_each_side_and_weights_bm25():
    low = fuse_one(DENSE, SPARSE, Fusion("convex", 0.3))
    assert low == pytest.approx({"a": 0.7, "b": 0.65, "d": 0.075, "c": 0.0})
    assert list(low) == ["a", "b", "d", "c"]
    high = fuse_one(DENSE, SPARSE, Fusion("convex", 0.9))
    assert high == pytest.approx({"b": 0.95, "d": 0.225, "a": 0.1, "c": 0.0})
    assert list(high) == ["b", "d", "a", "c"]
    assert len(fuse_one(DENSE, SPARSE, Fusion("convex", 0.3), k=2)) == 2


def test_reciprocal_rank_fusion_uses_ranks_only():
    fused = fuse_one(DENSE, {k: v * 1000 for k, v in SPARSE.items()}, Fusion("rrf"))
    assert fused == pytest.approx({"b": 1 / 62 + 1 / 61, "a": 1 / 61 + 1 / 63, "d": 1 / 62, "c": 1 / 63})
    assert list(fused) == ["b", "a", "d", "c"]
    tie = fuse_one({"y": 1.0, "x": 0.5}, {"x": 1.0, "y": 0.5}, Fusion("rrf"))
    assert list(tie) == ["y", "x"]  # equal fused scores: ordered as trec_eval orders ties (id descending)


# Query 1: the dense model is right and BM25 nearly so; query 2: BM25 is right and the dense model nearly so. Only a
# convex BM25 weight between 0.12 and 0.83 ranks both relevant passages first; RRF ties them, and trec_eval's tie
# order (id descending) puts the wrong ones (w1, w2) first.
DENSE_RUN = {"q1": {"r1": 0.9, "w1": 0.5, "b": 0.1}, "q2": {"w2": 0.9, "r2": 0.8, "b": 0.1}}
SPARSE_RUN = {"q1": {"w1": 10.0, "r1": 9.0, "b": 0.5}, "q2": {"r2": 10.0, "w2": 1.0, "b": 0.5}}
QRELS = {"q1": {"r1": 1}, "q2": {"r2": 1}}


def test_the_fusion_is_the_best_candidate_on_the_queries_given():
    choice = choose_fusion(DENSE_RUN, SPARSE_RUN, QRELS, chosen_on="dev")
    assert choice.fusion == Fusion("convex", 0.2)  # 0.1 still loses q2; 0.2 is the first to get both
    assert choice.wins and choice.chosen_on == "dev" and choice.queries == 2
    assert choice.validation["convex, BM25 weight 0.2"] == pytest.approx(1.0)
    assert choice.validation["dense"] == pytest.approx(choice.validation["bm25"])
    assert choice.validation["dense"] < 0.9
    assert choice.validation["RRF (k=60)"] == pytest.approx(1 / math.log2(3))  # both relevant ones second
    fused = fuse(DENSE_RUN, SPARSE_RUN, choice.fusion)
    assert [next(iter(fused[q])) for q in ("q1", "q2")] == ["r1", "r2"]
    ship, sentence = recommend("tuned", {"tuned": choice.to_dict()})
    assert ship == "tuned+bm25" and "--weight 0.2" in sentence


def test_a_fusion_that_loses_on_validation_is_never_recommended():
    perfect = {"q1": {"r1": 0.9, "w1": 0.5, "b": 0.1}, "q2": {"r2": 0.9, "w2": 0.5, "b": 0.1}}
    choice = choose_fusion(perfect, SPARSE_RUN, QRELS)
    assert not choice.wins  # the dense model alone already ranks both first; no fusion can beat it
    ship, sentence = recommend("tuned", {"tuned": choice.to_dict()})
    assert ship == "tuned" and "alone" in sentence


def test_evaluate_chooses_the_fusion_on_dev_and_applies_it_unchanged_to_test(tiny_model, tmp_path):
    from ragtune.config import EvalConfig
    from ragtune.pipeline import evaluate_stage

    beir = shared_file("medicationqa")
    settings = EvalConfig(max_seq_length=32)
    models = {"m": str(tiny_model)}
    dev = evaluate_stage(models, beir, "dev", settings, tmp_path / "cache", fusion="dev")
    test = evaluate_stage(models, beir, "test", settings, tmp_path / "cache", fusion="dev")
    chosen = dev.fusion["m"]
    assert chosen.chosen_on == "dev" and test.fusion["m"] == chosen
    assert set(test.metrics) == {"bm25", "m", "m+bm25"}
    # The test row is exactly the dev choice applied to the test runs, not a fusion tuned on test.
    qrels = {q: r for q, r in _qrels(beir, "test").items()}
    fused = fuse(test.runs["m"], test.runs["bm25"], chosen.fusion)
    assert aggregate(per_query(fused, qrels, ["ndcg@10"]))["ndcg@10"] == pytest.approx(
        test.metrics["m+bm25"]["ndcg@10"]
    )
    on_test = choose_fusion(test.runs["m"], test.runs["bm25"], qrels)
    assert on_test.validation[chosen.fusion.label] == pytest.approx(test.metrics["m+bm25"]["ndcg@10"])
    assert dev.metrics["m+bm25"]["ndcg@10"] == pytest.approx(chosen.validation[chosen.fusion.label])


def _qrels(beir, split):
    qrels = {}
    for line in (beir / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(q, {})[d] = int(score)
    return qrels


def test_compare_cli_fuses_at_a_fixed_weight_and_refuses_two_fusions(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from ragtune.cli import app

    beir, runner = shared_file("medicationqa"), CliRunner()
    args = ["compare", str(tiny_model), "--data", str(beir), "--split", "test", "--max-seq-length", "32"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--output-json", str(tmp_path / "c.json")]
    result = runner.invoke(app, [*args, "--hybrid-weight", "0.4"])
    assert result.exit_code == 0, result.output
    assert "+bm25: convex, BM25 weight 0.4" in result.output
    out = json.loads((tmp_path / "c.json").read_text())
    fused = f"{tiny_model}+bm25"
    assert out["systems"][-1] == fused and out["fusion"][str(tiny_model)]["chosen_on"] is None
    pairs = {(c["baseline"], c["system"]) for c in out["comparisons"] if c["system"] == fused}
    assert pairs == {(str(tiny_model), fused), ("bm25", fused)}
    both = subprocess.run(
        [sys.executable, "-m", "ragtune", *args, "--hybrid-weight", "0.4", "--rrf"], capture_output=True, text=True
    )
    assert both.returncode == 2 and both.stderr.strip().endswith("give one of --hybrid-on, --hybrid-weight and --rrf")
    assert "Traceback" not in both.stderr


# A corpus where the words decide: each passage has one rare word, the tiny random model knows none of them.
PASSAGES = [
    {"id": f"p{i}", "text": f"Report {i} mentions {word} among routine findings.", "ward": ward}
    for i, (word, ward) in enumerate(
        [("amiodarone", "a"), ("warfarin", "b"), ("metformin", "a"), ("lisinopril", "b"), ("atorvastatin", "a")] * 2
        + [("sertraline", "b"), ("omeprazole", "a")]
    )
]


@pytest.fixture
def small_index(tiny_model, tmp_path):
    from conftest import write_jsonl

    from ragtune.embeddings import Encoder
    from ragtune.index import index_corpus

    corpus = write_jsonl(tmp_path / "corpus.jsonl", PASSAGES)
    encoder = Encoder(tiny_model, tmp_path / "cache", show_progress=False)
    index_corpus(encoder, corpus, tmp_path / "index", fusion=Fusion("convex", 0.5))
    return tmp_path / "index", encoder


def test_a_saved_index_searches_dense_bm25_and_hybrid_with_filters(small_index):
    from ragtune.bm25 import Bm25
    from ragtune.index import Index, search_index

    folder, encoder = small_index
    index = Index.load(folder)
    assert index.meta["fusion"] == {"method": "convex", "weight": 0.5}
    queries = ["is warfarin in the report", "sertraline"]
    bm25 = search_index(folder, queries, 3, mode="bm25", show_progress=False)
    assert [h.id for h in bm25[1]] == ["p10"]  # only one passage holds the word: nothing else is "retrieved"
    assert {h.id for h in bm25[0][:2]} == {"p1", "p6"}
    direct = Bm25.build([d.text for d in index.documents]).search(queries, 3)
    assert [[(index.documents[h].id, s) for h, s in q] for q in direct] == [[(h.id, h.score) for h in q] for q in bm25]
    # Hybrid at BM25 weight 0 is the dense order; at weight 1, BM25's passages come first in BM25's order.
    dense = search_index(folder, queries, 5, show_progress=False)
    at0 = search_index(folder, queries, 5, mode="hybrid", fusion=Fusion("convex", 0.0), show_progress=False)
    assert [[h.id for h in q] for q in at0] == [[h.id for h in q] for q in dense]
    at1 = search_index(folder, queries, 5, mode="hybrid", fusion=Fusion("convex", 1.0), show_progress=False)
    assert {h.id for h in at1[0][:2]} == {"p1", "p6"} and at1[1][0].id == "p10"  # p1, p6 tie on BM25
    # The index's own fusion is used by default, and equals the same fusion of the two sides computed by hand.
    default = search_index(folder, queries[:1], 4, mode="hybrid", show_progress=False)[0]
    sides = (
        {h.id: h.score for h in search_index(folder, queries[:1], 100, mode=m, show_progress=False)[0]}
        for m in ("dense", "bm25")
    )
    assert [(h.id, pytest.approx(h.score)) for h in default] == list(fuse_one(*sides, Fusion("convex", 0.5), 4).items())
    # Filters hold on every mode, inside the ranking (the top-k of the allowed passages, not a post-filter).
    for mode in ("dense", "bm25", "hybrid"):
        hits = search_index(folder, ["warfarin lisinopril"], 3, {"ward": "b"}, False, mode)[0]
        assert hits and all(h.metadata["ward"] == "b" for h in hits), mode
    assert search_index(folder, ["amiodarone"], 3, {"ward": "b"}, False, "bm25") == [[]]


def test_added_passages_are_found_by_bm25_and_the_run_fusion_is_the_default(small_index, tiny_model, tmp_path):
    from conftest import write_jsonl

    from ragtune.index import Index, index_corpus, search_index

    folder, encoder = small_index
    more = write_jsonl(tmp_path / "more.jsonl", [{"id": "new", "text": "A note on levothyroxine dosing.", "ward": "a"}])
    index_corpus(encoder, more, folder, add=True)
    assert search_index(folder, ["levothyroxine"], 2, mode="bm25", show_progress=False)[0][0].id == "new"
    assert Index.load(folder).bm25.count == len(PASSAGES) + 1
    # A model in a run folder: the index takes the fusion that run chose on validation.
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_model, run / "model")
    (run / "results.json").write_text(json.dumps({"fusion": {"tuned": {"method": "convex", "weight": 0.2}}}))
    from ragtune.embeddings import Encoder

    index_corpus(Encoder(run / "model", show_progress=False), tmp_path / "corpus.jsonl", tmp_path / "run-index")
    assert Index.load(tmp_path / "run-index").meta["fusion"] == {"method": "convex", "weight": 0.2}


@pytest.mark.slow  # CLI processes, each loading torch
def test_search_cli_modes_over_an_index_and_over_a_model_with_a_corpus(small_index, tiny_model, tmp_path):
    folder, _ = small_index
    base = [sys.executable, "-m", "ragtune", "search"]

    def top(*args):
        done = subprocess.run([*base, *map(str, args), "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [h["id"] for h in json.loads(done.stdout)[0]["results"]]

    assert top(folder, "sertraline", "--mode", "bm25") == ["p10"]
    assert top(folder, "sertraline", "--mode", "hybrid", "--weight", "1")[0] == "p10"
    corpus = tmp_path / "corpus.jsonl"
    same = top(tiny_model, "sertraline", "--corpus", corpus, "--mode", "hybrid", "--rrf", "-k", "12")
    assert same[0] == "p10" and sorted(same) == sorted(p["id"] for p in PASSAGES)
    assert set(top(tiny_model, "warfarin", "--corpus", corpus, "--mode", "bm25")) == {"p1", "p6"}
    wrong = subprocess.run([*base, str(folder), "x", "--mode", "sparse"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "sparse" in wrong.stderr
    both = subprocess.run([*base, str(folder), "x", "--weight", "0.3", "--rrf"], capture_output=True, text=True)
    assert both.returncode == 2 and "give one of --weight and --rrf" in both.stderr
