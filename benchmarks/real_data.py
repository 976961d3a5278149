"""Base vs BM25 vs tuned, with 95% intervals, on the real datasets: runs `ragtune run` per config and collects.

    python benchmarks/real_data.py examples/pubmedqa.yaml examples/medquad.yaml examples/scifact.yaml \
        --output-json benchmarks/results/real_data.json

Each config runs in its own process (wall time and peak RSS of that process are recorded); finished stages are
skipped as usual, so pass --fresh to time a run from scratch. The tuned model is accepted even when it is not
better than the base model: recording that outcome is the point.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def run_one(config: Path, fresh: bool) -> dict:
    output_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    if fresh and output_dir.exists():
        shutil.rmtree(output_dir)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ragtune", "run", str(config), "--allow-regression"], text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{config}: ragtune run failed with status {done.returncode}")
    results = json.loads((output_dir / "results.json").read_text())
    return {
        "config": str(config),
        "command": f"ragtune run {config}",
        "wall_seconds": round(seconds, 1),
        "peak_rss_mb_of_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "fresh": fresh,
        **{
            k: results[k] for k in ("metrics", "ci95", "comparisons", "verdict", "regression", "test_queries", "corpus")
        },
    }


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}` — {result['test_queries']} test queries over {result['corpus']} passages", ""]
    lines += ["| system | ndcg@10 [95% CI] | mrr@10 | recall@10 |", "|---|---:|---:|---:|"]
    for s in ("bm25", "base", "tuned"):
        m, ci = result["metrics"][s], result["ci95"][s]["ndcg@10"]
        lines.append(
            f"| {s} | {m['ndcg@10']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}] | {m['mrr@10']:.4f} | {m['recall@10']:.4f} |"
        )
    for c in result["comparisons"]:
        if c["metric"] == "ndcg@10":
            lines.append(
                f"\n{c['system']} vs {c['baseline']}: {c['delta'] * 100:+.2f} NDCG@10 points, 95% CI "
                f"[{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}], p = {c['p_value']:.3f}: **{c['verdict']}**"
            )
    lines += ["", result["verdict"], "", result["regression"]["message"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--output-json", type=Path, default=Path("benchmarks/results/real_data.json"))
    parser.add_argument("--fresh", action="store_true", help="delete each run's output directory first")
    args = parser.parse_args()
    previous = json.loads(args.output_json.read_text()) if args.output_json.exists() else {}
    for config in args.configs:
        result = run_one(config, args.fresh)
        previous[config.stem] = result
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(previous, indent=2) + "\n")
        print(markdown(result))
    args.output_json.with_suffix(".md").write_text(
        "\n\n".join(f"### {k}\n\n{markdown(v)}" for k, v in previous.items())
    )


if __name__ == "__main__":
    main()
