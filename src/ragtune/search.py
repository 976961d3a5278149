"""Search a corpus with a model: exact inner-product top-k over cached, normalised embeddings (FAISS).

Also the one place the FAISS helpers live; mining and evaluation search through them too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ragtune.data import DATA_MARKER, _read_frame, _read_jsonl, detect_format, text_id
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError

_SEARCH_CHUNK = 2048


def flat_index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search_chunked(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k, a chunk of queries at a time so scores never exceed chunk x k."""
    k = min(k, index.ntotal)
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _SEARCH_CHUNK):
        chunk = np.ascontiguousarray(queries[start : start + _SEARCH_CHUNK], dtype=np.float32)
        scores[start : start + len(chunk)], ids[start : start + len(chunk)] = index.search(chunk, k)
    return scores, ids


@dataclass
class Hit:
    id: str
    score: float
    text: str


def load_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> dict[str, str]:
    """Passages to search: a ragtune data folder, a BEIR folder, a saved dataset, or a JSONL/CSV/Parquet file."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"corpus not found: {path}")
    if path.is_dir() and (path / DATA_MARKER).exists():
        ds = datasets.load_from_disk(str(path / "corpus"))
        return dict(zip(ds["id"], ds["text"], strict=True))
    fmt = detect_format(path)
    if fmt == "beir":
        records = _read_jsonl(path / "corpus.jsonl")
        text_column, id_column = "text", "_id"
    elif fmt == "hf":
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise RagtuneError(f"{path}: not a corpus folder ({err})") from err
        if isinstance(ds, datasets.DatasetDict):
            raise RagtuneError(f"{path}: a DatasetDict; point at one split's folder, or a ragtune data folder")
        records = ((f"{path}: row {i + 1}", r) for i, r in enumerate(ds))
    elif fmt == "jsonl":
        records = _read_jsonl(path)
    elif fmt in ("csv", "parquet"):
        records = _read_frame(path, fmt)
    else:
        raise RagtuneError(f"{path}: not a corpus format ragtune can search (use JSONL, CSV, Parquet or BEIR)")
    corpus: dict[str, str] = {}
    for where, rec in records:
        text = rec.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise RagtuneError(f"{where}: field '{text_column}' is missing or empty")
        title = rec.get("title") if fmt == "beir" else None
        text = f"{title.strip()} {text.strip()}" if isinstance(title, str) and title.strip() else text.strip()
        doc_id = rec.get(id_column)
        corpus[str(doc_id) if doc_id is not None else text_id("p", text)] = text
    if not corpus:
        raise RagtuneError(f"{path}: no passages")
    return corpus


def corpus_cache_dir(path: str | Path) -> Path | None:
    """The embedding cache a ragtune run used for this data folder, so search reuses its vectors."""
    marker = Path(path) / DATA_MARKER
    if marker.exists():
        cache = json.loads(marker.read_text()).get("cache_dir")
        if cache:
            return (Path(path) / cache).resolve()
    return None


def search(
    encoder: Encoder,
    corpus: dict[str, str],
    queries: list[str],
    k: int = 10,
) -> list[list[Hit]]:
    ids = list(corpus)
    corpus_vectors = encoder.encode([corpus[i] for i in ids], desc="encoding corpus")
    query_vectors = encoder.encode(queries, desc="encoding queries")
    scores, found = search_chunked(flat_index(corpus_vectors), query_vectors, k)
    return [
        [Hit(ids[int(j)], float(s), corpus[ids[int(j)]]) for s, j in zip(scores[n], found[n], strict=True) if j >= 0]
        for n in range(len(queries))
    ]


def hits_to_json(queries: list[str], hits: list[list[Hit]]) -> list[dict]:
    return [{"query": q, "results": [asdict(h) for h in hs]} for q, hs in zip(queries, hits, strict=True)]
