"""Exact and approximate inner-product top-k with FAISS: the search primitive mining, evaluation, splitting,
validation and serving share, so ties and excluded items are handled one way everywhere."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ragtune.embeddings import ENGINE

_SEARCH_CHUNK = 2048
# From this many queries a search runs on the engine's cluster (Ray tasks over a copy of the index), when one is
# active: mining's and evaluation's full-corpus searches; below, shipping the index costs more than it saves.
_REMOTE_MIN = 4 * _SEARCH_CHUNK


def flat_index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def read_index(path: Path | str):
    """A FAISS index file. An index whose inverted lists live in a file beside it (IVF-PQ built from shards) finds
    them in the same folder wherever the folder has moved to, and maps them rather than reading them into memory.
    The path is made absolute: a serialized on-disk index names its lists file, and Ray workers do not share this
    process' working directory."""
    import faiss

    with faiss_stdout_silenced():  # "updating ondisk filename from ... to ...": not for `ragtune search --json`
        return faiss.read_index(str(Path(path).resolve()), faiss.IO_FLAG_ONDISK_SAME_DIR)


@contextmanager
def faiss_stdout_silenced():
    """FAISS's on-disk inverted lists printf progress ("resizing FILE to N bytes") to the process' stdout, below
    Python, where it would land in the CLI's output: file descriptor 1 points at /dev/null meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def search_chunked(
    index, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product top-k, a chunk of queries at a time so scores never exceed chunk x k. `exclude`: a boolean
    mask of items never returned (missing results are id -1, last). Equal scores (copies of one passage) come in id
    order, as a stable sort would give them, so results do not depend on how FAISS orders ties. Inside a Ray engine,
    a large search is split into chunk-aligned Ray tasks, each running this function: the same results."""
    import faiss

    engine = ENGINE.get()
    if engine is not None and len(queries) >= _REMOTE_MIN:
        return engine.search(index, queries, k, exclude, _SEARCH_CHUNK)
    k = min(k, index.ntotal)
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    params = None
    if exclude is not None:
        keep = np.packbits(~exclude, bitorder="little")  # must outlive the searches below
        selector = faiss.IDSelectorBitmap(len(exclude), faiss.swig_ptr(keep))
        ivf = hasattr(index, "nprobe")
        params = (
            faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
            if ivf
            else faiss.SearchParameters(sel=selector)
        )
    for start in range(0, len(queries), _SEARCH_CHUNK):
        chunk = np.ascontiguousarray(queries[start : start + _SEARCH_CHUNK], dtype=np.float32)
        found_scores, found_ids = index.search(chunk, k, params=params)
        order = np.lexsort((found_ids, -found_scores), axis=-1)
        scores[start : start + len(chunk)] = np.take_along_axis(found_scores, order, axis=-1)
        ids[start : start + len(chunk)] = np.take_along_axis(found_ids, order, axis=-1)
    return scores, ids


def ivf_index(vectors: np.ndarray, nprobe: int = 32, seed: int = 0):
    """Approximate inner-product index (inverted lists over k-means cells) for corpora too big to scan per query.

    About 4*sqrt(N) cells, trained on a seeded sample of 40 points per cell; a query scans `nprobe` cells.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 40))
    sample = vectors[np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(nprobe, nlist)
    return index


def recall_against_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int, sample: int = 500) -> float:
    """Share of the exact top-k that `index` also returns, on a seeded sample of the queries."""
    rows = np.random.default_rng(0).choice(len(queries), min(sample, len(queries)), replace=False)
    q = np.ascontiguousarray(queries[rows], dtype=np.float32)
    _, exact = search_chunked(flat_index(vectors), q, k)
    _, approx = search_chunked(index, q, k)
    hits = sum(len(set(e.tolist()) & set(a.tolist()) - {-1}) for e, a in zip(exact, approx, strict=True))
    return hits / exact.size
