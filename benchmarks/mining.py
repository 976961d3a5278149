"""Mining time and peak memory: ragtune's least-similar miner vs the classic N x N algorithm.

    python benchmarks/mining.py --rows 20000 --dim 384 --baseline --output-json benchmarks/results/mining-20k.json

Embeddings are synthetic but clustered (unit vectors around 100 centres), the shape real passage embeddings have.
Each algorithm runs in its own fresh process so its peak RSS is its own; the embeddings are made before the clock
starts and are in every process's RSS.

`--baseline` is the classic recipe as written: the full similarity matrix, every row argsorted up front (N x N
float32 + N x N int64: 4.8 GB at 20,000 rows, the figure the issue measured), then a greedy walk.
`--lean-baseline` is the same N x N algorithm sorting one row at a time (only the float matrix is held).
ragtune's miner uses exact search below `--ivf-threshold` rows and an IVF index above it (`--index exact|ivf`
forces one); exact least-similar search is a bfloat16 screen with float32 rescoring on CPUs with AMX tiles from
4,096 rows (`--screen auto|on|off`), else FAISS's flat search. `same_picks_as_baseline` says whether ragtune's picks
are the classic recipe's, row for row (each process hashes its picks). `--strategy hard` times hard mining (top-30
window, one negative) instead of least-similar. Modules are imported before the clock starts (in a pipeline torch
and FAISS are loaded long before mining).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from output import report


def embeddings(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    v = centres[rng.integers(0, 100, rows)] + 0.5 * rng.normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def classic(v: np.ndarray) -> list[int]:
    """The classic recipe: the full similarity matrix sorted row by row up front, then a greedy unique pick."""
    order = np.argsort(v @ v.T, axis=1)
    used: set[int] = set()
    chosen = []
    for i in range(len(v)):
        for j in order[i]:
            if j != i and j not in used:
                used.add(int(j))
                chosen.append(int(j))
                break
    return chosen


def lean_classic(v: np.ndarray) -> list[int]:
    """The same N x N algorithm, sorting each row only when it is reached."""
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


def ragtune_miner(v: np.ndarray, strategy: str, config_kwargs: dict, stats: dict) -> list[int]:
    from ragtune.config import MiningConfig
    from ragtune.mining import candidate_search, least_similar_assignment, least_similar_candidates

    config = MiningConfig(**config_kwargs)
    if strategy == "hard":  # queries = the passages themselves; the top 30 minus the row's own passage
        search = candidate_search(v, config, v, 30, stats)
        _, ids = search(v, 31)
        return [next(int(c) for c in row if c != i and c >= 0) for i, row in enumerate(ids)]
    search, candidates, k = least_similar_candidates(v, v, config, stats)
    approximate = stats["index"]["type"] == "ivf"
    chosen, stats["rows_reusing_a_negative"] = least_similar_assignment(
        v, v, [{i} for i in range(len(v))], k=k, search=search, approximate=approximate, candidates=candidates
    )
    return chosen


def measure(which: str, rows: int, dim: int, strategy: str, config_kwargs: dict) -> dict:
    v = embeddings(rows, dim)
    if which == "ragtune":
        import faiss  # noqa: F401
        import torch  # noqa: F401

        import ragtune.mining  # noqa: F401
    stats: dict = {}
    start = time.perf_counter()
    if which == "baseline":
        chosen = classic(v)
    elif which == "lean-baseline":
        chosen = lean_classic(v)
    else:
        chosen = ragtune_miner(v, strategy, config_kwargs, stats)
    seconds = time.perf_counter() - start
    if strategy == "least-similar":
        assert len(set(chosen)) == rows, "negatives are not unique"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    picks = hashlib.sha1(np.asarray(chosen, dtype=np.int64).tobytes()).hexdigest()
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1), "picks_sha1": picks, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--baseline", action="store_true", help="also run the classic recipe (N x N, sorted up front)")
    parser.add_argument("--lean-baseline", action="store_true", help="also run N x N sorting one row at a time")
    parser.add_argument("--strategy", choices=["least-similar", "hard"], default="least-similar")
    parser.add_argument("--index", choices=["auto", "exact", "ivf"], default="auto", help="ragtune's search")
    parser.add_argument("--ivf-threshold", type=int, default=200_000, help="rows from which ragtune uses IVF")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells searched per query")
    parser.add_argument("--screen", choices=["auto", "on", "off"], default="auto", help="ragtune's bfloat16 screen")
    parser.add_argument("--output-json", type=Path)
    parser.add_argument("--child", choices=["ragtune", "baseline", "lean-baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = dict(index=args.index, ivf_threshold=args.ivf_threshold, nprobe=args.nprobe, screen=args.screen)
        print(json.dumps(measure(args.child, args.rows, args.dim, args.strategy, config)))
        return

    def child(which: str) -> dict:
        command = [sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim), "--child", which]
        command += [
            "--strategy",
            args.strategy,
            "--index",
            args.index,
            "--ivf-threshold",
            str(args.ivf_threshold),
            "--nprobe",
            str(args.nprobe),
            "--screen",
            args.screen,
        ]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)  # progress on stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = {"rows": args.rows, "dim": args.dim, "strategy": args.strategy, "index_option": args.index}
    result["screen_option"] = args.screen
    result.update(child("ragtune"))
    picks = result.pop("picks_sha1")
    for which, flag in (("baseline", args.baseline), ("lean_baseline", args.lean_baseline)):
        if flag:
            base = child(which.replace("_", "-"))
            result[f"{which}_seconds"], result[f"{which}_peak_rss_mb"] = base["seconds"], base["peak_rss_mb"]
            if args.strategy == "least-similar":
                result[f"same_picks_as_{which}"] = base["picks_sha1"] == picks
    report(result, args.output_json)


if __name__ == "__main__":
    main()
