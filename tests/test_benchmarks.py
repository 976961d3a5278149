"""The benchmark scripts run end to end at a small size and write what the README quotes from them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_mining_benchmark_writes_ragtune_and_classic_figures(tmp_path):
    out = tmp_path / "mining.json"
    command = [sys.executable, str(BENCHMARKS / "mining.py"), "--rows", "3000", "--dim", "32", "--baseline"]
    command += ["--index", "ivf", "--output-json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)  # the script checks the picks are unique
    result = json.loads(out.read_text())
    assert result["rows"] == 3000 and result["strategy"] == "least-similar"
    assert result["index"]["type"] == "ivf" and 0 < result["index"]["recall@64_vs_exact"] <= 1
    for key in ("seconds", "peak_rss_mb", "baseline_seconds", "baseline_peak_rss_mb"):
        assert result[key] > 0, key
    assert result["rows_reusing_a_negative"] == 0


def test_mining_benchmark_checks_the_screened_picks_against_the_classic_recipe(tmp_path):
    out = tmp_path / "mining.json"
    command = [sys.executable, str(BENCHMARKS / "mining.py"), "--rows", "3000", "--dim", "48", "--baseline"]
    command += ["--index", "exact", "--screen", "on", "--output-json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["index"] == {"type": "exact", "screen": "bfloat16"}
    assert result["same_picks_as_baseline"] is True


@pytest.mark.slow
def test_serve_load_poisoned_requests_fail_alone(tmp_path, tiny_model):
    from conftest import write_jsonl

    from ragtune.data import load_documents
    from ragtune.embeddings import Encoder
    from ragtune.index import Index

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"passage {i} about drugs"} for i in range(30)])
    Index.build(Encoder(tiny_model, tmp_path / "cache", show_progress=False), load_documents(corpus), tmp_path / "i")
    out = tmp_path / "load.json"
    command = [sys.executable, str(BENCHMARKS / "serve_load.py"), "--index", str(tmp_path / "i"), "--clients", "8"]
    command += ["--requests", "100", "--poison", "0.1", "--large-clients", "1", "--output-json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["poisoned_requests"] == 10 and result["poisoned_not_refused"] == 0
    assert result["errors"] == 0 and result["large_requests_done"] >= 1 and result["large_requests_failed"] == 0
    assert result["search_p99_ms"] > 0


def test_pseudo_label_benchmark_scores_against_the_labels(tmp_path, tiny_model):
    from conftest import write_jsonl

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    topics = ["warfarin bleeding risk", "metformin with meals", "ibuprofen stomach pain", "insulin storage fridge"]
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"p{i}", "text": t} for i, t in enumerate(topics)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(topics)])
    # q3's label points at the wrong passage: its (agreeing) pseudo-label must count as wrong.
    rows = "".join(f"q{i}\tp{i if i < 3 else 0}\t1\n" for i in range(4))
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    out = tmp_path / "p.json"
    command = [sys.executable, str(BENCHMARKS / "pseudo_labels.py"), "--data", str(beir), "--model", str(tiny_model)]
    subprocess.run(command + ["--output-json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["questions"] == 4 and result["agreed"] == 4  # each question is its own passage, word for word
    assert result["agreed_right"] == 0.75 and result["dense_first_right"] == 0.75
    chosen = result["selections"]
    assert chosen["agreed"] == {"labelled": 4, "right": 3, "precision": 0.75}
    assert chosen["agreed or margin > 0.1"]["labelled"] == 4  # a wider selection holds every agreeing question
    assert all(c["precision"] == round(c["right"] / c["labelled"], 4) for c in chosen.values() if c["labelled"])


@pytest.mark.slow  # four processes, one per engine
def test_store_benchmark_measures_every_engine_against_the_exact_top_ten(tmp_path):
    out = tmp_path / "stores.json"
    command = [sys.executable, str(BENCHMARKS / "stores.py"), "--passages", "2000", "--dim", "16", "--queries", "20"]
    subprocess.run([*command, "--output-json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert [e["engine"] for e in result["engines"]] == ["faiss", "lancedb", "chroma", "milvus-lite"]
    for engine in result["engines"]:
        assert engine["build_seconds"] > 0
        for side in ("unfiltered", "filtered"):
            assert 0 < engine[side]["p50_ms"] <= engine[side]["p99_ms"]
        # Exhaustive search must find the exact top 10, filtered or not (FAISS is the exact search itself).
        if engine["engine"] != "chroma":
            assert engine["unfiltered"]["recall@10_vs_exact"] == 1.0 == engine["filtered"]["recall@10_vs_exact"]


@pytest.mark.slow  # a local Ray cluster
def test_ray_scale_benchmark_encodes_indexes_mines_and_evaluates_every_row(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "shards.json"
    command = [sys.executable, str(BENCHMARKS / "ray_scale.py"), "--passages", "3000", "--files", "3"]
    command += ["--ivf-pq-from", "1000", "--compare", "500", "--output-json", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=BENCHMARKS)
    result = json.loads(out.read_text())
    assert result["passages"] == 3000 and result["queries_mined"] == 300  # one query per 10 passages
    assert result["index"].startswith("ivf") and 0 < result["index_recall@10_vs_exact"] <= 1
    assert result["ray_encode_per_s"] == pytest.approx(3000 / result["encode_s"], rel=0.05)
    peaks = result["driver_peak_rss_mb_by_stage"]
    assert result["driver_peak_rss_mb_before_cluster_work"] <= peaks["after_encode"] <= peaks["after_index"]
    assert peaks["after_index"] <= result["driver_peak_rss_mb_after"]
    anon = result["driver_peak_anon_mb_by_stage"]
    assert set(anon) == {"before", "encode", "index", "mine", "evaluate"} and all(v > 0 for v in anon.values())
    assert result["queries_evaluated"] == 30 and 0 <= result["evaluated"]["ndcg@10"] <= 1  # one per 10 mined
    # Each query is its passage's first 8 words: even the random model ranks some positives in the top 100.
    assert result["evaluated"]["recall@100"] > 0


def test_shard_index_memory_benchmark_reports_each_size(tmp_path):
    out = tmp_path / "memory.json"
    command = [sys.executable, str(BENCHMARKS / "shard_index_memory.py"), "--passages", "4000", "8000"]
    subprocess.run([*command, "--output-json", str(out)], check=True, capture_output=True, text=True, cwd=BENCHMARKS)
    result = json.loads(out.read_text())
    assert [s["passages"] for s in result["sizes"]] == [4000, 8000]
    for size in result["sizes"]:
        assert size["float32_mb"] == round(size["passages"] * 32 * 4 / 2**20, 1)
        # The lists file holds each passage's 16-byte code and 8-byte id (plus FAISS's per-list headroom).
        assert 24 * size["passages"] / 2**20 <= size["lists_file_mb"] + 0.05
        assert size["index"].startswith("ivf") and 0 < size["recall"] <= 1
        assert size["anon_peak_growth_mb"] > 0 and size["rss_peak_growth_mb"] > 0


def test_brand_name_benchmark_counts_only_questions_a_brand_mapping_could_help(tmp_path):
    from conftest import write_jsonl

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    passages = [
        "Diazepam acts on GABA receptors in the brain.",
        "Do not take naproxen (Aleve, Naprosyn) or diazepam (Valium) with alcohol.",
        "Diazepam, sold as Valium, may cause drowsiness.",
        "Take one tablet daily.",
    ]
    questions = ["how does valium affect the brain", "is valium sedating", "does aleve hurt", "how much valium"]
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"p{i}", "text": t} for i, t in enumerate(passages)])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(questions)])
    # q0: brand only in the question, generic in its answer -> helped. q1: its answer names the brand as well.
    # q2: its answer names neither. q3: no generic in its answer.
    rows = "q0\tp0\t1\nq1\tp2\t1\nq2\tp0\t1\nq3\tp3\t1\n"
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    out = tmp_path / "b.json"
    command = [sys.executable, str(BENCHMARKS / "brand_names.py"), "--data", str(beir), "--split", "test"]
    subprocess.run(command + ["--output-json", str(out)], check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["brands"] == 3  # aleve, naprosyn, valium
    assert result["splits"]["test"]["questions"] == 4
    assert result["splits"]["test"]["examples"] == {"q0": {"question": questions[0], "brands": ["valium"]}}
