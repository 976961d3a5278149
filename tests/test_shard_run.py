"""The run from shards without a cluster: its config checks, its split and its eval-set table (the whole run on a
local Ray cluster is in tests/test_shards.py)."""

import json
import subprocess
import sys

import pytest
from conftest import write_jsonl

from ragtune.config import RunConfig
from ragtune.errors import RagtuneError
from ragtune.shard_run import split_pairs
from ragtune.tables import eval_sets_table


def _config(tmp_path, **extra) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"path": str(tmp_path / "pairs.jsonl")},
            "shards": {"corpus": str(tmp_path / "corpus.jsonl")},
            "output_dir": str(tmp_path / "run"),
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"mining": {"strategy": "random"}}, "mining.strategy: random"),
        ({"mining": {"cross_encoder": "ce/", "max_cosine_to_positive": 0.9}}, "to_positive, mining.cross_encoder"),
        ({"split": {"split_by": "group"}}, "split.split_by: group"),
        ({"data": {"path": "p.jsonl", "corpus": "users/"}}, "data.corpus"),
        ({"adapt": {"pairs": ["llm.jsonl"]}}, "adapt.pairs not supported"),
        ({"eval_sets": [{"name": "users", "path": "users/"}]}, "users needs a split"),
    ],
)
def test_what_a_run_from_shards_cannot_do_is_refused_by_name(tmp_path, extra, named):
    with pytest.raises(ValueError, match=named):
        _config(tmp_path, **extra)


def test_a_run_from_shards_needs_its_pairs(tmp_path):
    with pytest.raises(ValueError, match="data.path must name"):
        RunConfig.model_validate({"shards": {"corpus": "c/"}})
    assert _config(tmp_path).shards.positive_column == "positive_id"  # the defaults pass


def test_the_split_keeps_each_query_and_each_passage_in_one_split(tmp_path):
    rows = [{"query": f"question {i}", "positive_id": f"d{i}"} for i in range(200)]
    rows += [{"query": f"question {i}", "positive_id": f"d{i + 1}"} for i in range(0, 200, 10)]  # second answers
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    for split_by in ("pair", "passage"):
        config = _config(tmp_path, split={"split_by": split_by})
        out = tmp_path / f"split-{split_by}"
        summary = split_pairs(config, out)
        found = {}
        for name in ("train", "validation", "test"):
            for line in (out / f"{name}.jsonl").read_text().splitlines():
                row = json.loads(line)
                found.setdefault(name, []).append((row["query"], row["positive_id"]))
        assert sorted(p for rows_ in found.values() for p in rows_) == sorted(
            (r["query"], r["positive_id"]) for r in rows
        )
        queries = {name: {q for q, _ in pairs} for name, pairs in found.items()}
        assert not queries["train"] & queries["test"] and not queries["validation"] & queries["test"]
        assert not queries["train"] & queries["validation"]
        assert summary["splits"]["test"]["queries"] == len(queries["test"]) == 20
        if split_by == "passage":
            passages = {name: {p for _, p in pairs} for name, pairs in found.items()}
            assert not passages["train"] & passages["test"] and not passages["train"] & passages["validation"]
        # The held-out queries as a BEIR folder: every test pair judged, under the query's own text.
        texts = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (out / "queries.jsonl").open()}
        judged = [line.split("\t") for line in (out / "qrels" / "test.tsv").read_text().splitlines()[1:]]
        assert sorted((texts[q], p) for q, p, _ in judged) == sorted(found["test"])


def test_max_pairs_samples_whole_queries_before_the_split(tmp_path):
    rows = [{"query": f"question {i}", "positive_id": f"d{i}"} for i in range(200)]
    rows += [{"query": f"question {i}", "positive_id": f"d{i + 1}"} for i in range(0, 200, 2)]  # half have 2 answers
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    summary = split_pairs(
        _config(tmp_path, data={"path": str(tmp_path / "pairs.jsonl"), "max_pairs": 60}), tmp_path / "split"
    )
    kept = [
        json.loads(line)
        for name in ("train", "validation", "test")
        for line in (tmp_path / "split" / f"{name}.jsonl").open()
    ]
    assert 60 <= len(kept) <= 61 and summary["pairs_sampled_out"] == 300 - len(kept)
    answers = {r["query"]: 1 + (int(r["query"].split()[1]) % 2 == 0) for r in rows}
    assert all(sum(k["query"] == q for k in kept) == answers[q] for q in {k["query"] for k in kept})  # whole queries


def test_a_split_of_no_rows_is_an_error(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(RagtuneError, match="no \\(query, positive id\\) rows"):
        split_pairs(_config(tmp_path), tmp_path / "split")
    write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "doc": "d1"}])
    with pytest.raises(RagtuneError, match="pairs.jsonl: line 1: field 'positive_id' is missing"):
        split_pairs(_config(tmp_path), tmp_path / "split")


def test_the_eval_set_table_shows_bm25_only_where_it_was_run():
    def result(systems):
        c = {"baseline": "base", "system": "tuned", "metric": "ndcg@10", "delta": 0.02, "ci_low": 0.01}
        comparisons = [
            {**c, "ci_high": 0.03, "p_value": 0.01},
            {**c, "baseline": "bm25", "ci_high": 0.03, "p_value": 0.2},
        ]
        return {
            "queries": 10,
            "corpus": 50,
            "metrics": {s: {"ndcg@10": 0.5} for s in systems},
            "ci95": {s: {"ndcg@10": (0.4, 0.6)} for s in systems},
            "comparisons": comparisons,
        }

    with_bm25 = eval_sets_table({"users": result(["bm25", "base", "tuned"])})
    assert "| bm25 | base | tuned | tuned − base [95% CI], p | tuned − bm25 [95% CI], p |" in with_bm25
    assert (
        "| users | 10 | 50 | 0.5000 [0.400, 0.600] | 0.5000" in with_bm25 and "+2.00 [+1.00, +3.00], 0.200" in with_bm25
    )
    without = eval_sets_table({"users": result(["base", "tuned"])})
    assert "bm25" not in without and without.splitlines()[2].count("|") == 7


def test_a_missing_corpus_is_one_line_before_any_cluster_starts(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "positive_id": "d1"}])
    (tmp_path / "run.yaml").write_text("data: {path: pairs.jsonl}\nshards: {corpus: corpus/}\noutput_dir: out\n")
    done = subprocess.run(
        [sys.executable, "-m", "ragtune", "run", "run.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 2 and done.stderr.strip() == "error: corpus/: no such file or folder"
    assert not (tmp_path / "out").exists() and "ray" not in done.stdout.lower()


def test_bad_mining_settings_for_shards_are_one_line_before_any_cluster_starts(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", [{"query": "q", "positive_id": "d1"}])
    command = [
        sys.executable,
        "-m",
        "ragtune",
        "mine-shards",
        "index/",
        "pairs.jsonl",
        "--out",
        "neg",
        "--margin",
        "-1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: mining settings: margin: Input should be greater than or equal to 0"
    (tmp_path / "index").mkdir()
    done = subprocess.run(command[:-2], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: index: not a ragtune index"), done.stderr
    assert not (tmp_path / "neg").exists()
