"""Search a corpus with a model: exact inner-product top-k over cached, normalised embeddings (FAISS).

Also the one place the FAISS helpers live; mining and evaluation search through them too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ragtune.data import DATA_MARKER, detect_format, read_frame, read_jsonl, text_id
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.outputs import check_no_overlap, claim_folder, recover_folder, replace_folder, write_json, write_jsonl

_SEARCH_CHUNK = 2048


def flat_index(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def search_chunked(
    index, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product top-k, a chunk of queries at a time so scores never exceed chunk x k. `exclude`: a boolean
    mask of items never returned (missing results are id -1, last). Equal scores (copies of one passage) come in id
    order, as a stable sort would give them, so results do not depend on how FAISS orders ties."""
    import faiss

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


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def _plain(value):
    """JSON-safe metadata values; NaN (pandas' empty cell) is no value."""
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, str | int | float | bool | list | dict) or value is None else str(value)


def load_documents(path: str | Path, text_column: str = "text", id_column: str = "id") -> list[Document]:
    """Passages with ids and metadata: a ragtune data folder, a BEIR folder, a saved dataset, JSONL/CSV/Parquet.

    Columns other than the id and the text become metadata (filterable in the search API). A file without an id
    column gets content-hash ids; a repeated id is an error naming the row.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"corpus not found: {path}")
    if path.is_dir() and (path / DATA_MARKER).exists():
        ds = datasets.load_from_disk(str(path / "corpus"))
        return [Document(i, t) for i, t in zip(ds["id"], ds["text"], strict=True)]
    fmt = detect_format(path)
    if fmt == "beir":
        records = read_jsonl(path / "corpus.jsonl")
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
        records = read_jsonl(path)
    elif fmt in ("csv", "parquet"):
        records = read_frame(path, fmt)
    else:
        raise RagtuneError(f"{path}: not a corpus format ragtune can search (use JSONL, CSV, Parquet or BEIR)")
    docs: dict[str, Document] = {}
    for where, rec in records:
        text = rec.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise RagtuneError(f"{where}: field '{text_column}' is missing or empty")
        title = rec.get("title") if fmt == "beir" else None
        text = f"{title.strip()} {text.strip()}" if isinstance(title, str) and title.strip() else text.strip()
        raw_id = _plain(rec.get(id_column))
        doc_id = str(raw_id) if raw_id is not None else text_id("p", text)
        if doc_id in docs:
            if raw_id is None:
                continue  # the same text twice without ids is one passage
            raise RagtuneError(f"{where}: id {doc_id!r} appears twice (field '{id_column}')")
        meta = {k: _plain(v) for k, v in rec.items() if k not in (text_column, id_column)}
        docs[doc_id] = Document(doc_id, text, {k: v for k, v in meta.items() if v is not None})
    if not docs:
        raise RagtuneError(f"{path}: no passages")
    return list(docs.values())


def load_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> dict[str, str]:
    return {d.id: d.text for d in load_documents(path, text_column, id_column)}


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


INDEX_META = "index.json"


class Index:
    """A persisted corpus index: FAISS vectors + a document store (ids, texts, metadata) + what built them.

    Folder layout: `index.faiss` (exact inner product over normalised vectors), `docs.jsonl` (one document per
    line, in vector order), `index.json` (model, its fingerprint, max_seq_length, dimension, count). A query model
    whose fingerprint or truncation differs from the one that built the index is refused: its vectors would live
    in another space and every score would be meaningless.
    """

    def __init__(self, folder: Path, meta: dict, vectors, documents: list[Document]):
        self.folder, self.meta, self.vectors, self.documents = folder, meta, vectors, documents
        self.position = {d.id: i for i, d in enumerate(documents)}

    @classmethod
    def build(cls, encoder: Encoder, documents: list[Document], folder: str | Path) -> Index:
        folder = claim_folder(folder, "index")  # before the encoding: a user's own folder fails at once
        vectors = encoder.encode([d.text for d in documents], desc="encoding documents")
        meta = {
            "model": encoder.model_name,
            "model_fingerprint": encoder.fingerprint,
            "max_seq_length": encoder.max_seq_length,
            "backend": encoder.backend,
            "dim": int(vectors.shape[1]),
            "count": len(documents),
            "similarity": "cosine",
        }
        index = cls(folder, meta, flat_index(vectors), documents)
        index._write()
        return index

    @classmethod
    def load(cls, folder: str | Path) -> Index:
        import faiss

        folder = Path(folder)
        recover_folder(folder)
        if not (folder / INDEX_META).exists():
            raise RagtuneError(f"{folder}: not a ragtune index (no {INDEX_META}); build one with `ragtune index`")
        meta = json.loads((folder / INDEX_META).read_text())
        with (folder / "docs.jsonl").open(encoding="utf-8") as f:
            documents = [Document(**json.loads(line)) for line in f]
        vectors = faiss.read_index(str(folder / "index.faiss"))
        if vectors.ntotal != len(documents):
            raise RagtuneError(f"{folder}: {vectors.ntotal} vectors but {len(documents)} documents; rebuild the index")
        return cls(folder, meta, vectors, documents)

    def check_model(self, encoder: Encoder) -> None:
        same = (encoder.fingerprint, encoder.max_seq_length, encoder.backend) == (
            self.meta["model_fingerprint"],
            self.meta["max_seq_length"],
            self.meta.get("backend", "torch"),
        )
        if not same:
            raise RagtuneError(
                f"{self.folder} was built with model {self.meta['model']} (max_seq_length "
                f"{self.meta['max_seq_length']}, backend {self.meta.get('backend', 'torch')}); the query model "
                f"{encoder.model_name} (max_seq_length {encoder.max_seq_length}, backend {encoder.backend}) is a "
                "different one, so its scores would be meaningless"
            )

    def query_encoder(self, show_progress: bool = True) -> Encoder:
        """The encoder queries must use: the model, truncation and backend that built the index."""
        meta = self.meta
        encoder = Encoder(
            meta["model"],
            max_seq_length=meta["max_seq_length"],
            show_progress=show_progress,
            backend=meta.get("backend", "torch"),
        )
        self.check_model(encoder)
        return encoder

    def add(self, encoder: Encoder, documents: list[Document]) -> int:
        """Append documents whose ids are new; old vectors are never re-encoded. Returns how many were added."""
        self.check_model(encoder)
        new = [d for d in documents if d.id not in self.position]
        if new:
            vectors = encoder.encode([d.text for d in new], desc="encoding new documents")
            self.vectors.add(vectors)
            for d in new:
                self.position[d.id] = len(self.documents)
                self.documents.append(d)
            self.meta["count"] = len(self.documents)
            self._write()
        return len(new)

    def _write(self) -> None:
        """Write the whole index as a new folder beside the old one and swap: a reader or a crash sees the old
        version or the new one, never documents without their vectors."""
        import faiss

        with replace_folder(self.folder, "index") as new:
            write_jsonl(new / "docs.jsonl", (asdict(d) for d in self.documents))
            faiss.write_index(self.vectors, str(new / "index.faiss"))
            write_json(new / INDEX_META, self.meta)

    def search(self, query_vectors: np.ndarray, k: int = 10, filters: dict | None = None) -> list[list[Hit]]:
        """Top-k per query; `filters` keeps documents whose metadata equals every given value."""
        if not filters:
            scores, found = search_chunked(self.vectors, query_vectors, k)
            return [
                [self._hit(j, s) for s, j in zip(sc, fo, strict=True) if j >= 0]
                for sc, fo in zip(scores, found, strict=True)
            ]
        allowed = np.flatnonzero([all(d.metadata.get(f) == v for f, v in filters.items()) for d in self.documents])
        # Exact: score only the allowed documents (the flat index can hand their vectors back).
        candidates = self.vectors.reconstruct_batch(allowed) if len(allowed) else np.zeros((0, self.meta["dim"]))
        scores = candidates @ np.asarray(query_vectors, dtype=np.float32).T
        results = []
        for column in scores.T:
            order = np.argsort(-column)[:k]
            results.append([self._hit(int(allowed[o]), float(column[o])) for o in order])
        return results

    def _hit(self, position: int, score: float) -> Hit:
        d = self.documents[int(position)]
        return Hit(d.id, float(score), d.text, d.metadata)


def search_index(
    folder: str | Path, queries: list[str], k: int = 10, filters: dict | None = None, show_progress: bool = True
) -> list[list[Hit]]:
    """Search a persisted index with the model that built it (queries are not cached: they are one-off)."""
    index = Index.load(folder)
    encoder = index.query_encoder(show_progress)
    vectors = encoder.model.encode(queries, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    return index.search(vectors, k, filters)


def index_corpus(
    encoder: Encoder,
    corpus: str | Path,
    out: str | Path,
    add: bool = False,
    text_column: str = "text",
    id_column: str = "id",
) -> tuple[Index, int, int]:
    """Build an index of `corpus` in `out`, or with `add` append its new documents to the index there.

    Returns the index, how many documents were added, and how many the corpus holds."""
    out = Path(out)
    check_no_overlap(out, [corpus])
    documents = load_documents(corpus, text_column, id_column)
    if add:
        index = Index.load(out)
        return index, index.add(encoder, documents), len(documents)
    if (out / INDEX_META).exists():
        raise RagtuneError(f"{out} already holds an index; pass --add to append, or choose another --out")
    return Index.build(encoder, documents, out), len(documents), len(documents)


def parse_filters(items: list[str]) -> dict:
    """`field=value` strings (values read as YAML, so `year=2020` is a number) as a metadata filter."""
    import yaml

    filters = {}
    for item in items:
        if "=" not in item:
            raise RagtuneError(f"--filter expects field=value, got {item!r}")
        key, value = item.split("=", 1)
        filters[key] = yaml.safe_load(value)
    return filters


def search_anything(
    model_or_index: str | Path,
    queries: list[str],
    k: int = 10,
    corpus: str | Path | None = None,
    filters: dict | None = None,
    text_column: str = "text",
    id_column: str = "id",
    max_seq_length: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> list[list[Hit]]:
    """Top-k hits per query from a persisted index (with the model that built it, `filters` allowed), or from a
    model plus a corpus (encoded through the run's embedding cache when the corpus is a ragtune data folder)."""
    if not queries:
        raise RagtuneError("give a query, or --queries-file")
    if (Path(model_or_index) / INDEX_META).exists():
        return search_index(model_or_index, queries, k, filters or None, show_progress=show_progress)
    if corpus is None:
        raise RagtuneError(f"{model_or_index} is not an index folder: give --corpus to search with a model")
    if filters:
        raise RagtuneError("--filter needs an index folder (built by `ragtune index`), where metadata is kept")
    passages = load_corpus(corpus, text_column, id_column)
    cache = cache_dir or corpus_cache_dir(corpus)
    encoder = Encoder(str(model_or_index), cache, max_seq_length, show_progress=show_progress)
    return search(encoder, passages, queries, k)
