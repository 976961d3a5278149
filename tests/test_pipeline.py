import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import write_jsonl
from helpers import ragtune_here, toy_rows

from ragtune.config import RunConfig
from ragtune.data import load_pairs
from ragtune.errors import RegressionError
from ragtune.pipeline import run

STAGE_DIRS = ["prepared", "mined", "data", "eval/base", "model", "eval/tuned"]


def _config(tmp_path, model, data_path, **train):
    return RunConfig.model_validate(
        {
            "base_model": str(model),
            "output_dir": str(tmp_path / "run"),
            "data": {"path": str(data_path), "format": "pubmedqa", "max_pairs": 60},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 1, **train},
        }
    )


def _markers(out):
    return {d: (out / d / ".stage.json").stat().st_mtime_ns for d in STAGE_DIRS}


def test_run_writes_everything_then_skips_finished_stages(tiny_model, pubmedqa_path, tmp_path, caplog):
    cfg = _config(tmp_path, tiny_model, pubmedqa_path)
    summary = run(cfg, allow_regression=True)
    out = tmp_path / "run"
    for name in [
        "config.yaml",
        "report.md",
        "results.json",
        "model/README.md",
        "data/ragtune_data.json",
        "eval/base/result.json",
        "eval/tuned/result.json",
        "mined/rows.jsonl",
    ]:
        assert (out / name).exists(), name
    assert set(summary.metrics) == {"bm25", "base", "tuned", "base+bm25", "tuned+bm25"}
    assert all(0 <= v <= 1 for m in summary.metrics.values() for v in m.values())
    base = json.loads((out / "eval/base/result.json").read_text())
    assert base["test"]["corpus"] == 60 and base["test"]["queries"] == 6  # test queries over every passage
    assert base["validation"]["queries"] == 6
    results = json.loads((out / "results.json").read_text())
    low, high = results["ci95"]["base"]["ndcg@10"]
    assert low <= results["metrics"]["base"]["ndcg@10"] <= high
    assert {(c["system"], c["baseline"]) for c in results["comparisons"]} == {
        ("tuned", "base"),
        ("base", "bm25"),
        ("tuned", "bm25"),
        ("base+bm25", "base"),
        ("base+bm25", "bm25"),
        ("tuned+bm25", "tuned"),
        ("tuned+bm25", "bm25"),
    }
    # Each fusion was chosen on validation and applied unchanged to test; the recommendation follows validation.
    tuned_eval = json.loads((out / "eval/tuned/result.json").read_text())
    choice = tuned_eval["validation"]["fusion"]["tuned"]
    assert choice["chosen_on"] == "validation" and tuned_eval["test"]["fusion"]["tuned"] == choice
    assert tuned_eval["validation"]["metrics"]["tuned+bm25"]["ndcg@10"] == pytest.approx(
        choice["validation"][choice["label"]]
    )
    model = summary.recommended_model
    shipped = results["fusion"][model]
    assert summary.recommended_system == (f"{model}+bm25" if shipped["wins"] else model)
    assert shipped["wins"] == (
        shipped["validation"][shipped["label"]] > max(shipped["validation"]["dense"], shipped["validation"]["bm25"])
    )
    for c in results["comparisons"]:
        m = results["metrics"]
        assert c["delta"] == pytest.approx(m[c["system"]][c["metric"]] - m[c["baseline"]][c["metric"]])
        assert c["ci_low"] <= c["delta"] <= c["ci_high"]
        assert c["verdict"] == ("significant" if c["ci_low"] > 0 or c["ci_high"] < 0 else "not significant")
    report = (out / "report.md").read_text()
    assert "| tuned |" in report and "ndcg@10" in report and "duplicate pairs dropped" in report
    assert "## ragtune evaluation" in (out / "model/README.md").read_text()

    before = _markers(out)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="ragtune")  # the run logs each skipped stage; it prints nothing
    run(cfg, allow_regression=True)
    assert _markers(out) == before
    assert caplog.text.count("up to date, skipped") == len(STAGE_DIRS)

    run(_config(tmp_path, tiny_model, pubmedqa_path, learning_rate=1e-4), allow_regression=True)
    after = _markers(out)
    assert [d for d in STAGE_DIRS if after[d] != before[d]] == ["model", "eval/tuned"]


def test_regression_guard_keeps_the_base_model(tiny_model, pubmedqa_path, tmp_path):
    cfg = _config(tmp_path, tiny_model, pubmedqa_path, learning_rate=1e-12)  # training changes nothing
    with pytest.raises(RegressionError, match="not better than the base model on validation"):
        run(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["recommended_model"] == "base" and results["regression"]["regressed"]
    assert "not better than the base model" in (tmp_path / "run" / "report.md").read_text()
    cfg.allow_regression = True
    assert run(cfg).recommended_model == "base"  # accepted: same verdict, exit 0


@pytest.mark.slow
def test_killed_during_training_resumes_from_checkpoint(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(200))
    cfg = {
        "base_model": str(tiny_model),
        "output_dir": str(tmp_path / "run"),
        "data": {"path": str(data)},
        "mining": {"strategy": "random"},
        "train": {"epochs": 4, "batch_size": 4, "evals_per_epoch": 4},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "ragtune", "run", str(tmp_path / "c.yaml")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    time.sleep(0.5)  # let the trainer finish writing that checkpoint's optimizer state
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "model" / ".stage.json").exists(), "training finished before the kill"

    ragtune_here(*command[3:])  # the re-run (and the uninterrupted one below) in this process: no second import
    info = json.loads((tmp_path / "run" / "model" / "ragtune_train.json").read_text())
    assert info["resumed_from"] and "checkpoint-" in info["resumed_from"]
    assert info["steps"] == 4 * 40  # 160 train rows / batch 4, four epochs: the full schedule ran
    assert (tmp_path / "run" / "report.md").exists()
    # Optimizer, scheduler and RNG state came back with the checkpoint: the interrupted run ends where an
    # uninterrupted one does (within 0.5 NDCG@10 points on validation).
    ragtune_here(*command[3:], "--output-dir", tmp_path / "whole")
    uninterrupted = json.loads((tmp_path / "whole" / "model" / "ragtune_train.json").read_text())
    assert uninterrupted["resumed_from"] is None
    assert abs(info["best_validation_ndcg@10"] - uninterrupted["best_validation_ndcg@10"]) <= 0.005


def test_run_from_a_bare_corpus_makes_pairs_and_reports_by_method(tiny_model, tmp_path):
    from conftest import shared_file

    beir = tmp_path / "scifact60"
    beir.mkdir()
    with shared_file("scifact", "corpus.jsonl").open() as f:
        (beir / "corpus.jsonl").write_text("".join(next(f) for _ in range(60)))
    cfg = RunConfig.model_validate(
        {
            "base_model": str(tiny_model),
            "output_dir": str(tmp_path / "run"),
            "allow_regression": True,
            "synth": {"corpus": str(beir), "methods": ["title", "crop"], "chunk_tokens": 96},
            "mining": {"strategy": "hard", "range_max": 5},
            "split": {"split_by": "group"},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 1},
        }
    )
    summary = run(cfg)
    assert cfg.data.path is None and cfg.data.group_column is None  # run works on its own copy of the config
    out = tmp_path / "run"
    pairs = [json.loads(line) for line in (out / "synth" / "pairs.jsonl").read_text().splitlines()]
    assert {p["method"] for p in pairs} == {"title", "crop"}
    assert {p["doc_id"] for p in pairs} <= {json.loads(line)["_id"] for line in (beir / "corpus.jsonl").open()}
    stats = json.loads((out / "synth" / "stats.json").read_text())
    assert stats["chunking"]["chunks"] > 60 and stats["chunking"]["longest_chunk_tokens"] <= 96
    assert set(summary.results["by_method"]) == {"title", "crop"}
    assert "by the method that made each test pair" in (out / "report.md").read_text()


@pytest.mark.slow
def test_changed_input_data_reruns_every_stage(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(60))
    cfg = RunConfig.model_validate(
        {
            "base_model": str(tiny_model),
            "output_dir": str(tmp_path / "run"),
            "data": {"path": str(data)},
            "mining": {"strategy": "random"},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 1},
            "allow_regression": True,
        }
    )
    first = run(cfg)
    out = tmp_path / "run"
    before = _markers(out)
    write_jsonl(data, toy_rows(80))  # same path, new content: the file's key changes
    second = run(cfg)
    after = _markers(out)
    assert [d for d in STAGE_DIRS if after[d] == before[d]] == []  # nothing stale was trusted
    prepared = json.loads((out / "prepared" / "stats.json").read_text())["load_stats"]
    assert prepared["queries"] == 80 and first.test_queries != second.test_queries


def test_run_trains_on_pairs_files_counted_by_source(tiny_model, tmp_path):
    """adapt.pairs (e.g. an LLM's questions in the users' style) join a run without data.corpus, train-only."""
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(60))
    rows = [
        {"query": f"{t} job {i} pls", "passage": f"The {t} has job number {i} in the body.", "method": "llm"}
        for i, t in enumerate(["heart", "kidney", "lung", "liver", "bone"])
    ]
    llm = write_jsonl(tmp_path / "llm.jsonl", rows)
    cfg = RunConfig.model_validate(
        {
            "base_model": str(tiny_model),
            "output_dir": str(tmp_path / "run"),
            "data": {"path": str(data)},
            "adapt": {"methods": [], "pairs": [str(llm)]},
            "mining": {"strategy": "random"},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 1},
            "allow_regression": True,
        }
    )
    summary = run(cfg)
    out = tmp_path / "run"
    assert summary.results["training_pairs_by_source"]["llm"] == 5
    trained = load_pairs(out / "data")
    train_texts = {trained.queries[q] for q in trained.splits["train"]}
    assert {r["query"] for r in rows} <= train_texts  # train-only: never validation or test
    tested = {trained.queries[q] for q in trained.splits["validation"] + trained.splits["test"]}
    assert not tested & {r["query"] for r in rows}
    write_jsonl(llm, rows[:3])  # a changed pairs file is read again
    assert run(cfg).results["training_pairs_by_source"]["llm"] == 3
