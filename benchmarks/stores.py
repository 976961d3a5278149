"""Index build time and query latency: ragtune's FAISS index folder vs each vector store, at N passages.

    python benchmarks/stores.py --passages 100000 --output-json benchmarks/results/stores-100k.json

The vectors are synthetic (unit vectors around 100 centres, 384 dimensions as all-MiniLM-L6-v2's; made before any
clock starts) so that the engines are measured, not the model. Build: everything ragtune writes for the dense side,
from vectors in memory to files on disk (FAISS: the flat index, docs.jsonl and index.json, without the BM25 side;
a store: its collection). Queries: one at a time, k=10, through ragtune's own search path (what `ragtune search`
and `/search` call), unfiltered and with a metadata filter that keeps a tenth of the passages; p50 and p99 over
`--queries` queries after 10 warm-up ones. recall@10 is against the exact top 10: Chroma searches an HNSW graph
(approximate); LanceDB without a vector index, Milvus Lite and FAISS's flat index search exhaustively.
Each engine runs in its own fresh process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from output import report

ENGINES = ["faiss", "lancedb", "chroma", "milvus-lite"]


def vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim)).astype(np.float32)
    v = centres[rng.integers(0, 100, rows)] + 0.7 * rng.normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def documents(rows: int):
    from ragtune.data import Document

    return [Document(f"p{i}", f"passage number {i}", {"shard": i % 10}) for i in range(rows)]


def exact_top(corpus: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[str]]:
    scores = queries @ corpus.T
    if allowed is not None:
        mask = np.full(len(corpus), -np.inf, dtype=np.float32)
        mask[allowed] = 0
        scores = scores + mask
    return [[f"p{j}" for j in np.argsort(-row)[:k]] for row in scores]


def one_engine(engine: str, rows: int, dim: int, n_queries: int, folder: Path) -> dict:
    corpus, queries = vectors(rows, dim, 0), vectors(n_queries + 10, dim, 1)
    docs = documents(rows)
    filters = {"shard": 3}
    if engine == "faiss":
        from ragtune.faiss_search import flat_index
        from ragtune.index import Index

        start = time.perf_counter()
        index = Index(folder / "index", {"dim": dim, "count": rows}, flat_index(corpus), docs)
        write_dense_side(index)
        build = time.perf_counter() - start

        def search(vector, f):
            return index.search(vector[None, :], 10, f)[0]
    else:
        from ragtune.stores import open_store

        uri = f"milvus-lite://{folder / 'v.db'}" if engine == "milvus-lite" else f"{engine}://{folder / 'store'}"
        store = open_store(uri)
        start = time.perf_counter()
        store.create("bench", docs, corpus)
        build = time.perf_counter() - start

        def search(vector, f):
            return store.search("bench", vector[None, :], 10, f)[0]

    result = {"engine": engine, "build_seconds": round(build, 2)}
    allowed = np.flatnonzero([d.metadata["shard"] == 3 for d in docs])
    for label, f, truth in (
        ("unfiltered", None, exact_top(corpus, queries[10:], 10)),
        ("filtered", filters, exact_top(corpus, queries[10:], 10, allowed)),
    ):
        for q in queries[:10]:
            search(q, f)
        times, found = [], []
        for q in queries[10:]:
            start = time.perf_counter()
            hits = search(q, f)
            times.append((time.perf_counter() - start) * 1000)
            found.append([h.id for h in hits])
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(found, truth, strict=True)])
        result[label] = {
            "p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2),
            "recall@10_vs_exact": round(float(recall), 4),
        }
    return result


def write_dense_side(index) -> None:
    """What `Index._write` writes, less the BM25 side (the stores are measured without theirs too)."""
    import faiss

    from ragtune.outputs import write_json, write_jsonl

    index.folder.mkdir(parents=True)
    write_jsonl(
        index.folder / "docs.jsonl", ({"id": d.id, "text": d.text, "metadata": d.metadata} for d in index.documents)
    )
    faiss.write_index(index.vectors, str(index.folder / "index.faiss"))
    write_json(index.folder / "index.json", index.meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one engine, prints its JSON
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_engine(args.one, args.passages, args.dim, args.queries, Path(tmp))))
        return
    results = []
    for engine in args.engines:
        command = [sys.executable, __file__, "--one", engine, "--passages", str(args.passages)]
        command += ["--dim", str(args.dim), "--queries", str(args.queries)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import platform

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    report(
        {"passages": args.passages, "dim": args.dim, "queries": args.queries, "k": 10, "cpu": cpu, "engines": results},
        args.output_json,
    )


if __name__ == "__main__":
    main()
