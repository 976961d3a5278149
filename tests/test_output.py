"""What a person sees: a run's terminal output fits on two screens, one line per stage; library users see nothing."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import write_jsonl
from helpers import toy_rows

STAGES = [
    "prepare",
    "mine negatives",
    "split",
    "evaluate base model and BM25 (full corpus)",
    "train",
    "evaluate tuned model (full corpus)",
]
LIBRARY_BARS = ("Batches", "Loading weights", "it/s]", "s/it]", "%|", "{'loss'", "Computing widget")


def _config(tmp_path, tiny_model, name):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(60))
    config = {
        "base_model": str(tiny_model),
        "output_dir": str(tmp_path / name),
        "data": {"path": str(data)},
        "mining": {"strategy": "hard", "range_max": 10},
        "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 2},
        "allow_regression": True,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _ragtune(*args):
    return subprocess.run(
        [sys.executable, "-m", "ragtune", *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # three runs: 35 s
def test_a_run_prints_one_line_per_stage_and_fits_two_screens(tiny_model, tmp_path):
    config = _config(tmp_path, tiny_model, "run")
    first = _ragtune("run", config)
    assert first.returncode == 0, first.stderr
    shown = first.stdout + first.stderr
    lines = shown.splitlines()
    assert len(lines) <= 50, shown  # two screens, result table included
    for stage in STAGES:
        assert sum(line.startswith(f"✓ {stage} (") for line in lines) == 1, (stage, shown)
    assert not [bar for bar in LIBRARY_BARS if bar in shown], shown
    assert "| tuned |" in shown and "report:" in shown

    again = _ragtune("--quiet", "run", config)  # every stage up to date; quiet keeps only the result
    assert again.returncode == 0, again.stderr
    assert "✓" not in again.stdout + again.stderr and "up to date" not in again.stdout
    assert "| tuned |" in again.stdout

    verbose = _ragtune("--verbose", "run", config, "--output-dir", tmp_path / "verbose")
    assert "debug: step" in verbose.stdout  # the trainer's loss lines, hidden by default


@pytest.mark.slow
def test_library_users_see_nothing_unless_they_configure_logging(tiny_model, tmp_path):
    config = _config(tmp_path, tiny_model, "lib")
    code = (
        "import sys; from ragtune.config import load_config; from ragtune.pipeline import run; "
        f"r = run(load_config({str(config)!r})); sys.stdout.write('ok ' + r.recommended_model)"
    )
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    results = json.loads((tmp_path / "lib" / "results.json").read_text())
    assert quiet.stdout == "ok " + results["recommended_model"]
    assert "✓" not in quiet.stderr and not [bar for bar in LIBRARY_BARS if bar in quiet.stderr], quiet.stderr
    logged = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(level=logging.INFO); " + code],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "prepare (up to date, skipped)" in logged.stderr  # the same run again, now with logging on
