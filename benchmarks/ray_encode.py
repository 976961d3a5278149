"""Corpus encoding on a local Ray cluster vs one process, on the same machine and texts.

    python benchmarks/ray_encode.py --model default --passages 2000 --output-json benchmarks/results/ray-encode.json

Synthetic passages of 20 to 200 words (a fixed seed), encoded once by one process (torch using every core) and once
through `ray_engine` with `--actors` model copies (one core each), each into an empty embedding cache; the cluster
is started before the clock. Reports passages/s of both, the cluster's per-actor rate, the largest difference
between the two sets of vectors, and the driver's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from output import cpu_name, report

from ragtune.embeddings import Encoder
from ragtune.ray_engine import ray_engine

WORDS = [
    "the",
    "a",
    "of",
    "patients",
    "dose",
    "heart",
    "kidney",
    "liver",
    "blood",
    "pressure",
    "treatment",
    "study",
    "results",
    "trial",
    "risk",
]


def passages(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 200)))) + f" ({i})" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    texts = passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        one = Encoder(args.model, Path(tmp) / "one", args.max_seq_length, show_progress=False)
        _ = one.model
        start = time.perf_counter()
        alone = one.encode(texts)
        alone_s = time.perf_counter() - start
        with ray_engine(actors=args.actors) as engine:
            engine.encode(one, texts[: args.actors * one.batch_size])  # actors and model loads, before the clock
            spread = Encoder(args.model, Path(tmp) / "ray", args.max_seq_length, show_progress=False)
            start = time.perf_counter()
            on_ray = spread.encode(texts)
            ray_s = time.perf_counter() - start
    report(
        {
            "model": args.model,
            "passages": args.passages,
            "max_seq_length": args.max_seq_length,
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "one_process_per_s": round(args.passages / alone_s, 1),
            "ray_actors": args.actors,
            "ray_per_s": round(args.passages / ray_s, 1),
            "ray_per_actor_per_s": round(args.passages / ray_s / args.actors, 1),
            "max_abs_difference": float(np.abs(alone - on_ray).max()),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "note": "the cluster's start and its actors' model loads are not timed",
        },
        args.output_json,
    )


if __name__ == "__main__":
    sys.exit(main())
