"""Mining time and peak memory: ragtune's least-similar miner vs the classic N x N algorithm.

    python benchmarks/mining.py --rows 20000 --dim 384 --baseline --output-json benchmarks/results/mining-20k.json

Embeddings are synthetic but clustered (unit vectors around 100 centres), the shape real passage embeddings have.
Each algorithm runs in its own fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def embeddings(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    v = centres[rng.integers(0, 100, rows)] + 0.5 * rng.normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def classic(v: np.ndarray) -> list[int]:
    """The classic recipe: the full similarity matrix, then a greedy unique least-similar pick per row."""
    sim = v @ v.T
    used: set[int] = set()
    chosen = []
    for i in range(len(v)):
        for j in np.argsort(sim[i]):
            if j != i and j not in used:
                used.add(int(j))
                chosen.append(int(j))
                break
    return chosen


def ragtune_miner(v: np.ndarray) -> list[int]:
    from ragtune.mining import least_similar_assignment

    chosen, _ = least_similar_assignment(v, v, [{i} for i in range(len(v))])
    return chosen


def measure(which: str, rows: int, dim: int) -> dict:
    v = embeddings(rows, dim)
    start = time.perf_counter()
    chosen = classic(v) if which == "baseline" else ragtune_miner(v)
    seconds = time.perf_counter() - start
    assert len(set(chosen)) == rows, "negatives are not unique"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--baseline", action="store_true", help="also run the classic N x N algorithm")
    parser.add_argument("--output-json", type=Path)
    parser.add_argument("--child", choices=["ragtune", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.rows, args.dim)))
        return

    def child(which: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim), "--child", which],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = {"rows": args.rows, "dim": args.dim, **child("ragtune")}
    if args.baseline:
        base = child("baseline")
        result.update(baseline_seconds=base["seconds"], baseline_peak_rss_mb=base["peak_rss_mb"])
    print(json.dumps(result, indent=2))
    if args.output_json:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
