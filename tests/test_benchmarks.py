"""The benchmark scripts run end to end at a small size and write what the README quotes from them."""

import json
import subprocess
import sys
from pathlib import Path

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
