import json
import re
import subprocess
import sys

import pytest
from conftest import write_jsonl
from helpers import toy_rows
from typer.testing import CliRunner

from ragtune.cli import app

runner = CliRunner()
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_the_command_list_is_the_documented_one():
    documented = ["chunk", "compare", "evaluate", "evaluate-shards", "export", "index", "mine", "mine-shards"]
    documented += ["prepare", "run"]
    documented += ["search", "serve"]
    assert sorted(documented + ["split", "synth", "train"]) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_its_options(command):
    """Every option the command accepts appears in its --help, with text after it."""
    import typer.main

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    click_command = typer.main.get_command(app).commands[command]
    params = [p for p in click_command.params if any(o.startswith("--") for o in p.opts)]
    assert params, command
    for param in params:
        option = next(o for o in param.opts if o.startswith("--"))
        starts = re.compile(r"[│\s*]*" + re.escape(option) + r"[\s/,]")  # the option's own row, not a mention
        line = next((line for line in result.output.splitlines() if starts.match(line)), None)
        assert line is not None, (command, option)
        assert param.help, (command, option)  # a default or a type alone does not explain an option
        assert " ".join(param.help.split()[:3]) in line.split(option, 1)[1], (command, option)


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_stages_one_by_one(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(40) + [toy_rows(40)[0]])
    out = _ok(["prepare", src, "--out", tmp_path / "prep"])
    assert '"duplicate_pairs_dropped": 1' in out
    # Mining decides the split (training rows avoid held-out passages), so it reads the split settings too.
    config = tmp_path / "split.yaml"
    config.write_text("split:\n  train: 0.6\n  validation: 0.2\n  test: 0.2\n")
    _ok(
        [
            "mine",
            tmp_path / "prep",
            "--config",
            config,
            "--out",
            tmp_path / "mined",
            "--model",
            tiny_model,
            "--strategy",
            "hard",
            "--range-max",
            "5",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    _ok(
        [
            "split",
            tmp_path / "mined",
            "--out",
            tmp_path / "data",
            "--train",
            "0.6",
            "--validation",
            "0.2",
            "--test",
            "0.2",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    meta = json.loads((tmp_path / "data" / "ragtune_data.json").read_text())
    assert meta["splits"]["test"]["queries"] == 8
    mismatch = runner.invoke(app, ["split", str(tmp_path / "mined"), "--out", str(tmp_path / "d2"), "--seed", "7"])
    assert "same split settings" in str(mismatch.exception)
    _ok(
        [
            "train",
            "--data",
            tmp_path / "data",
            "--out",
            tmp_path / "tuned",
            "--model",
            tiny_model,
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ]
    )
    tuned = tmp_path / "tuned" / "model"
    out = _ok(
        [
            "evaluate",
            "--model",
            tiny_model,
            "--model",
            tuned,
            "--data",
            tmp_path / "data",
            "--split",
            "test",
            "--output-json",
            tmp_path / "eval.json",
            "--markdown",
            tmp_path / "eval.md",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert set(scores) == {"bm25", str(tiny_model), str(tuned)}
    for metrics in scores.values():
        assert set(metrics) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100", "precision@10"}
    assert "| bm25 |" in (tmp_path / "eval.md").read_text() and "8 queries over a corpus of 40" in out
    (tmp_path / "q.txt").write_text("what does the kidney do?\n\nlungs?\n")
    out = _ok(
        ["search", tuned, "--corpus", tmp_path / "data", "--queries-file", tmp_path / "q.txt", "-k", "3", "--json"]
    )
    hits = json.loads(out)
    assert [h["query"] for h in hits] == ["what does the kidney do?", "lungs?"]
    assert all(len(h["results"]) == 3 for h in hits)
    assert hits[0]["results"][0]["score"] >= hits[0]["results"][1]["score"]


def test_evaluate_on_a_beir_folder_with_a_split(tiny_model, tmp_path):
    from conftest import shared_file

    out = _ok(
        [
            "evaluate",
            "--model",
            tiny_model,
            "--data",
            shared_file("scifact"),
            "--split",
            "test",
            "--output-json",
            tmp_path / "s.json",
            "--cache-dir",
            tmp_path / "cache",
            "--max-seq-length",
            "32",
        ]
    )
    assert "300 queries over a corpus of 5183" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["bm25"]["ndcg@10"] > 0.5  # published BM25 on this split: about 0.665


def test_config_section_with_command_line_override(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(20))
    (tmp_path / "c.yaml").write_text(f"data:\n  path: {src}\n  max_pairs: 10\n")
    _ok(["prepare", "--config", tmp_path / "c.yaml", "--out", tmp_path / "a"])
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["load_stats"]["pairs"] == 10
    _ok(["prepare", "--config", tmp_path / "c.yaml", "--max-pairs", "5", "--out", tmp_path / "b"])
    assert json.loads((tmp_path / "b" / "stats.json").read_text())["load_stats"]["pairs"] == 5


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ragtune", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "passage": "p"}, {"query": "", "passage": "p"}])
    result = _cli("prepare", tmp_path / "bad.jsonl", "--out", tmp_path / "o")
    assert result.returncode == 2
    assert "bad.jsonl: line 2: field 'query' is empty" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 3\n")
    result = _cli("run", tmp_path / "c.yaml")
    assert result.returncode == 2 and "train.epochz: Extra inputs are not permitted" in result.stderr
    good = write_jsonl(tmp_path / "good.jsonl", [{"query": "q", "passage": "p"}])
    result = _cli("evaluate", "--model", tmp_path / "missing", "--data", good)
    assert result.returncode == 2 and "model folder not found" in result.stderr
    result = _cli("train", "--data", tmp_path, "--out", tmp_path / "t", "--attention-dropout", "lots")
    assert result.returncode == 2 and "attention_dropout" in result.stderr and "Traceback" not in result.stderr


def test_compare_a_model_with_bm25_gives_the_verdict_of_its_interval(tiny_model, tmp_path):
    from helpers import split_folder

    data = split_folder(tmp_path, tiny_model)
    out = _ok(
        [
            "compare",
            tiny_model,
            tiny_model,
            "--data",
            data,
            "--split",
            "test",
            "--output-json",
            tmp_path / "c.json",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["systems"] == [str(tiny_model), "bm25"]  # the same model twice is one system
    (bm25_vs,) = [c for c in result["comparisons"] if c["metric"] == "ndcg@10"]
    assert bm25_vs["baseline"] == str(tiny_model) and bm25_vs["system"] == "bm25"
    metrics = result["metrics"]
    assert bm25_vs["delta"] == pytest.approx(metrics["bm25"]["ndcg@10"] - metrics[str(tiny_model)]["ndcg@10"])
    assert bm25_vs["ci_low"] <= bm25_vs["delta"] <= bm25_vs["ci_high"]
    excludes_zero = bm25_vs["ci_low"] > 0 or bm25_vs["ci_high"] < 0
    assert bm25_vs["verdict"] == ("significant" if excludes_zero else "not significant")
    assert "significant" in out and "95% CI" in out
    low, high = result["ci95"]["bm25"]["ndcg@10"]
    assert low <= result["metrics"]["bm25"]["ndcg@10"] <= high


def test_compare_two_models_reports_difference_with_interval(tiny_model, tmp_path):
    import shutil

    from helpers import split_folder

    data = split_folder(tmp_path, tiny_model)
    twin = tmp_path / "twin"
    shutil.copytree(tiny_model, twin)
    _ok(
        [
            "compare",
            tiny_model,
            twin,
            "--data",
            data,
            "--no-bm25",
            "--output-json",
            tmp_path / "c.json",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    result = json.loads((tmp_path / "c.json").read_text())
    ndcg = next(c for c in result["comparisons"] if c["metric"] == "ndcg@10")
    assert ndcg["delta"] == 0 and ndcg["verdict"] == "not significant"  # same weights, same ranking


def test_index_then_search_and_add(tiny_model, tmp_path):
    rows = [{"id": f"d{i}", "text": f"passage about topic {i}", "lang": "en" if i % 2 else "fr"} for i in range(12)]
    write_jsonl(tmp_path / "c.jsonl", rows[:8])
    write_jsonl(tmp_path / "all.jsonl", rows)
    _ok(["index", tiny_model, tmp_path / "c.jsonl", "--out", tmp_path / "idx", "--cache-dir", tmp_path / "cache"])
    out = _ok(
        [
            "index",
            tiny_model,
            tmp_path / "all.jsonl",
            "--out",
            tmp_path / "idx",
            "--add",
            "--cache-dir",
            tmp_path / "cache",
        ]
    )
    assert "added 4 new documents (8 already indexed)" in out
    hits = json.loads(_ok(["search", tmp_path / "idx", "topic 3", "-k", "12", "--filter", "lang=en", "--json"]))
    results = hits[0]["results"]
    assert len(results) == 6 and all(r["metadata"]["lang"] == "en" for r in results)
    again = runner.invoke(app, ["index", str(tiny_model), str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "idx")])
    assert again.exit_code != 0 and "already holds an index" in str(again.exception)


def test_mine_screen_switch_gives_the_same_negatives_and_refuses_bad_values(tiny_model, tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(60))
    _ok(["prepare", src, "--out", tmp_path / "prep"])
    negatives = {}
    for setting in ("on", "off"):
        out = tmp_path / f"mined-{setting}"
        args = ["mine", tmp_path / "prep", "--out", out, "--model", tiny_model, "--strategy", "least-similar"]
        _ok(args + ["--screen", setting, "--cache-dir", tmp_path / "cache"])
        stats = json.loads((out / "stats.json").read_text())["stats"]
        assert (stats["index"].get("screen") == "bfloat16") == (setting == "on")
        negatives[setting] = [json.loads(line)["negative_ids"] for line in (out / "rows.jsonl").open()]
    assert negatives["on"] == negatives["off"] and len(negatives["on"]) == 60
    bad = runner.invoke(app, ["mine", str(tmp_path / "prep"), "--model", tiny_model, "--screen", "maybe"])
    # The choices are the option's type: typer refuses the value before any work, naming the option (exit 2).
    assert bad.exit_code == 2 and "--screen" in bad.output and "'maybe' is not one of" in bad.output
