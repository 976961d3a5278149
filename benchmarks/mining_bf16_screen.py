"""A tried and dropped design for exact least-similar search below the float32 product: time its stages.

    python benchmarks/mining_bf16_screen.py --rows 20000 --output-json benchmarks/results/mining-bf16-screen.json

The idea: a bfloat16 product (AMX tiles) screens every pair, each row keeps the items within the product's
rounding bound of a per-row threshold (the m-th lowest score on a sample of columns), and only those are rescored in
float32. It would be exact (the bound is proven from the bfloat16 rounding), but on this CPU the screen alone (the
product and the elementwise passes over the N x N screened scores: threshold, compare, torch.nonzero) takes about
as long as FAISS's whole exact float32 search, before the hundreds of candidates it keeps per row are rescored and
sorted, so ragtune's miner does not use it. This script times each stage over all row blocks, next to FAISS's
exact search of the same k, on `benchmarks/mining.py`'s clustered embeddings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mining import embeddings
from output import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--block", type=int, default=1024, help="rows screened per product")
    parser.add_argument("--k", type=int, default=128, help="candidates per row (ragtune's exact first search)")
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()

    import faiss
    import torch

    v = embeddings(args.rows, 384)
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    start = time.perf_counter()
    index.search(-v, args.k)
    faiss_seconds = time.perf_counter() - start

    x = torch.from_numpy(v).to(torch.bfloat16)
    sample = torch.randperm(args.rows, generator=torch.Generator().manual_seed(0))[: args.rows // 10]
    # bfloat16 keeps 8 significant bits: inputs and output each round by at most 2^-8 relative, so for unit vectors
    # a screened score is within ~3 x 2^-8 of the float32 one; the band is twice that.
    band = 6 * 2**-8
    m = max(1, args.k * len(sample) // args.rows)
    stages = dict.fromkeys(("bf16_product", "threshold", "compare", "nonzero"), 0.0)
    kept = 0
    for first in range(0, args.rows, args.block):
        t = time.perf_counter()
        scores = -x[first : first + args.block] @ x.T  # largest = least similar
        stages["bf16_product"] += time.perf_counter() - t
        t = time.perf_counter()
        threshold = scores[:, sample].float().topk(m).values[:, -1]
        stages["threshold"] += time.perf_counter() - t
        t = time.perf_counter()
        mask = scores >= (threshold - band).to(torch.bfloat16)[:, None]
        stages["compare"] += time.perf_counter() - t
        t = time.perf_counter()
        kept += len(mask.nonzero())
        stages["nonzero"] += time.perf_counter() - t
    result = {
        "rows": args.rows,
        "k": args.k,
        "faiss_exact_search_seconds": round(faiss_seconds, 3),
        "screen_seconds": {name: round(s, 3) for name, s in stages.items()},
        "screen_total_seconds": round(sum(stages.values()), 3),
        "candidates_per_row": round(kept / args.rows, 1),
        "threads": torch.get_num_threads(),
    }
    report(result, args.output_json)


if __name__ == "__main__":
    main()
