"""The saved index `ragtune index` writes: FAISS vectors, a BM25 index, the documents in vector order, and what
built them; searched dense, BM25 or hybrid (the two fused as the run that trained the model chose on validation)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ragtune.bm25 import Bm25
from ragtune.data import Document, load_documents
from ragtune.embeddings import QUERY, Encoder, with_prompt
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index, read_index, search_chunked
from ragtune.hybrid import Fusion, fuse_one
from ragtune.outputs import check_no_overlap, claim_folder, recover_folder, replace_folder, write_json, write_jsonl


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


INDEX_META = "index.json"
SHA1_FILE = "sha1.bin"  # an index from shards: the sha1 of each passage's text, 20 bytes each, in vector order
MODES = ("dense", "bm25", "hybrid")
CANDIDATES = 100  # each side's depth before fusion: what the fusion was chosen with in evaluation


class Index:
    """A persisted corpus index: FAISS vectors + a document store (ids, texts, metadata) + what built them.

    Folder layout: `index.faiss` (exact inner product over normalised vectors), `bm25/` (bm25s), `docs.jsonl` (one
    document per line, in vector order), `index.json` (model, its fingerprint, max_seq_length, dimension, count,
    and the fusion hybrid search uses). A query model whose fingerprint or truncation differs from the one that
    built the index is refused: its vectors would live in another space and every score would be meaningless.
    """

    def __init__(self, folder: Path, meta: dict, vectors, documents: list[Document], bm25: Bm25 | None = None):
        self.folder, self.meta, self.vectors, self.documents, self.bm25 = folder, meta, vectors, documents, bm25
        self.position = {d.id: i for i, d in enumerate(documents)}
        self._allowed_cache: dict[tuple, np.ndarray] = {}

    @classmethod
    def build(
        cls, encoder: Encoder, documents: list[Document], folder: str | Path, fusion: Fusion | None = None
    ) -> Index:
        folder = claim_folder(folder, "index")  # before the encoding: a user's own folder fails at once
        vectors = encoder.encode([d.text for d in documents], desc="encoding documents")
        meta = {
            **encoder.identity(),
            "dim": int(vectors.shape[1]),
            "count": len(documents),
            "similarity": "cosine",
            "fusion": (fusion or run_fusion(encoder.model_name) or Fusion("rrf", 0.0)).to_dict(),
        }
        index = cls(folder, meta, flat_index(vectors), documents, Bm25.build([d.text for d in documents]))
        index._write()
        return index

    @classmethod
    def load(cls, folder: str | Path) -> Index:
        folder = Path(folder)
        recover_folder(folder)
        if not (folder / INDEX_META).exists():
            raise RagtuneError(f"{folder}: not a ragtune index (no {INDEX_META}); build one with `ragtune index`")
        meta = json.loads((folder / INDEX_META).read_text())
        with (folder / "docs.jsonl").open(encoding="utf-8") as f:
            documents = [Document(**json.loads(line)) for line in f]
        vectors = read_index(folder / "index.faiss")
        if vectors.ntotal != len(documents):
            raise RagtuneError(f"{folder}: {vectors.ntotal} vectors but {len(documents)} documents; rebuild the index")
        bm25 = Bm25.load(folder / "bm25") if (folder / "bm25").is_dir() else None
        return cls(folder, meta, vectors, documents, bm25)

    def check_model(self, encoder: Encoder) -> None:
        check_query_model(self.folder, self.meta, encoder)

    def query_encoder(self, show_progress: bool = True) -> Encoder:
        """The encoder queries must use: the model, truncation and backend that built the index."""
        encoder = encoder_for(self.meta, show_progress)
        self.check_model(encoder)
        return encoder

    def add(self, encoder: Encoder, documents: list[Document]) -> int:
        """Append documents whose ids are new; old vectors are never re-encoded. Returns how many were added."""
        if "lists" in self.meta:
            raise RagtuneError(
                f"{self.folder} was built from embedding shards (its lists are a file beside it): add the new "
                "passages to the corpus files and rebuild it with `ragtune index --shards`"
            )
        self.check_model(encoder)
        new = [d for d in documents if d.id not in self.position]
        if new:
            vectors = encoder.encode([d.text for d in new], desc="encoding new documents")
            self.vectors.add(vectors)
            for d in new:
                self.position[d.id] = len(self.documents)
                self.documents.append(d)
            self.meta["count"] = len(self.documents)
            # BM25's statistics (document frequencies, average length) change with every document: rebuilt whole.
            self.bm25 = Bm25.build([d.text for d in self.documents])
            self._write()
        return len(new)

    def _write(self) -> None:
        """Write the whole index as a new folder beside the old one and swap: a reader or a crash sees the old
        version or the new one, never documents without their vectors."""
        import faiss

        with replace_folder(self.folder, "index") as new:
            write_jsonl(new / "docs.jsonl", (asdict(d) for d in self.documents))
            faiss.write_index(self.vectors, str(new / "index.faiss"))
            if self.bm25 is not None:
                self.bm25.save(new / "bm25")
            write_json(new / INDEX_META, self.meta)

    def query(
        self,
        queries: list[str],
        query_vectors: np.ndarray | None,
        k: int = 10,
        filters: dict | None = None,
        mode: str = "dense",
        fusion: Fusion | None = None,
    ) -> list[list[Hit]]:
        """Top-k per query by the dense vectors, BM25, or both fused (`fusion`, default: the index's own).

        Hybrid scores are fused scores (comparable within one query's list only); dense scores are cosines, BM25
        scores BM25's. `query_vectors` may be None for BM25.
        """
        check_mode(mode)
        if mode == "dense":
            return self.search(query_vectors, k, filters)
        if self.bm25 is None:
            raise RagtuneError(f"{self.folder} has no BM25 index (built by an older ragtune): rebuild it for {mode}")
        allowed = self._allowed(filters) if filters else None
        found = self.bm25.search(queries, CANDIDATES if mode == "hybrid" else k, allowed)
        sparse = [[self._hit(p, s) for p, s in hits] for hits in found]
        if mode == "bm25":
            return sparse
        fusion = fusion or Fusion(**self.meta.get("fusion", Fusion("rrf", 0.0).to_dict()))
        return fuse_hits(self.search(query_vectors, max(k, CANDIDATES), filters), sparse, fusion, k)

    def _allowed(self, filters: dict) -> np.ndarray:
        # A server sees the same few filters again and again: the scan over every document's metadata (most of a
        # filtered query's time at 100k passages) is done once per filter, until documents are added.
        key = (len(self.documents), repr(sorted(filters.items())))
        allowed = self._allowed_cache.get(key)
        if allowed is None:
            if len(self._allowed_cache) >= 256:
                self._allowed_cache.clear()
            allowed = np.flatnonzero([all(d.metadata.get(f) == v for f, v in filters.items()) for d in self.documents])
            self._allowed_cache[key] = allowed
        return allowed

    def search(self, query_vectors: np.ndarray, k: int = 10, filters: dict | None = None) -> list[list[Hit]]:
        """Dense top-k per query; `filters` keeps documents whose metadata equals every given value."""
        allowed = self._allowed(filters) if filters else None
        ivf = hasattr(self.vectors, "nprobe")  # IVF-PQ (from shards): no vectors to hand back, its own filtered search
        if allowed is None or ivf:
            exclude = None
            if allowed is not None:
                exclude = np.ones(len(self.documents), dtype=bool)
                exclude[allowed] = False
            scores, found = search_chunked(self.vectors, query_vectors, k, exclude)
            return [
                [self._hit(j, s) for s, j in zip(sc, fo, strict=True) if j >= 0]
                for sc, fo in zip(scores, found, strict=True)
            ]
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


def check_query_model(folder: Path, meta: dict, encoder: Encoder) -> None:
    """Refuse a query model other than the one that built the index in `folder` (its `meta`)."""
    same = (encoder.fingerprint, encoder.max_seq_length, encoder.backend) == (
        meta["model_fingerprint"],
        meta["max_seq_length"],
        meta.get("backend", "torch"),
    )
    if not same:
        raise RagtuneError(
            f"{folder} was built with model {meta['model']} (max_seq_length {meta['max_seq_length']}, backend "
            f"{meta.get('backend', 'torch')}); the query model {encoder.model_name} (max_seq_length "
            f"{encoder.max_seq_length}, backend {encoder.backend}) is a different one, so its scores would be "
            "meaningless"
        )


def encoder_for(meta: dict, show_progress: bool = False) -> Encoder:
    """The model, truncation and backend an index or a store collection records as what built it."""
    return Encoder(
        meta["model"],
        max_seq_length=meta["max_seq_length"],
        show_progress=show_progress,
        backend=meta.get("backend", "torch"),
    )


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RagtuneError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")


def fuse_hits(dense: list[list[Hit]], sparse: list[list[Hit]], fusion: Fusion, k: int) -> list[list[Hit]]:
    """Each query's dense and BM25 hits fused into one top-k; a hit keeps its text and metadata."""
    results = []
    for dense_hits, sparse_hits in zip(dense, sparse, strict=True):
        known = {h.id: h for h in (*sparse_hits, *dense_hits)}
        fused = fuse_one({h.id: h.score for h in dense_hits}, {h.id: h.score for h in sparse_hits}, fusion, k)
        results.append([Hit(i, s, known[i].text, known[i].metadata) for i, s in fused.items()])
    return results


def run_fusion(model: str) -> Fusion | None:
    """The fusion with BM25 that the run which trained `model` (a run's `model/` folder) chose on validation."""
    results = Path(model).parent / "results.json"
    if Path(model).name != "model" or not results.is_file():
        return None
    choice = json.loads(results.read_text()).get("fusion", {}).get("tuned")
    return Fusion(choice["method"], choice["weight"]) if choice else None


def search_index(
    folder: str | Path,
    queries: list[str],
    k: int = 10,
    filters: dict | None = None,
    show_progress: bool = True,
    mode: str = "dense",
    fusion: Fusion | None = None,
) -> list[list[Hit]]:
    """Search a persisted index with the model that built it."""
    index = Index.load(folder)
    vectors = None if mode == "bm25" else encode_queries(index.query_encoder(show_progress), queries)
    return index.query(queries, vectors, k, filters, mode, fusion)


def encode_queries(encoder: Encoder, queries: list[str]) -> np.ndarray:
    """Query vectors, normalised, never through the embedding cache (queries are one-off)."""
    return encoder.model.encode(
        with_prompt(queries, encoder.prompts, QUERY),
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)


def index_corpus(
    encoder: Encoder,
    corpus: str | Path,
    out: str | Path,
    add: bool = False,
    text_column: str = "text",
    id_column: str = "id",
    fusion: Fusion | None = None,
) -> tuple[Index, int, int]:
    """Build an index of `corpus` in `out`, or with `add` append its new documents to the index there.

    Args:
        encoder: The model that encodes the passages (`Encoder("runs/x/model")`); queries must later use the same.
        corpus: JSONL/CSV/Parquet file, BEIR folder, saved dataset or ragtune data folder; columns other than the
            id and the text become filterable metadata.
        out: The index folder (FAISS vectors, the documents, the model's fingerprint).
        add: Append the corpus' new ids to the index in `out` instead of building one.
        text_column, id_column: Where the text and the id are.
        fusion: How hybrid search fuses BM25 and the model by default (default: what the run that trained the
            model chose on validation, else RRF). With `add`, replaces the index's.

    Returns:
        The index, how many documents were added, and how many the corpus holds.

    Example (`corpus.jsonl` holds three passages with ids `heart`, `kidney`, `skin`):
        >>> index, added, total = ragtune.build_index(ragtune.Encoder("default"), "corpus.jsonl", "my-index")
        >>> added, total
        (3, 3)
    """
    out = Path(out)
    check_no_overlap(out, [corpus])
    documents = load_documents(corpus, text_column, id_column)
    if add:
        index = Index.load(out)
        if fusion is not None:
            index.meta["fusion"] = fusion.to_dict()
        return index, index.add(encoder, documents), len(documents)
    if (out / INDEX_META).exists():
        raise RagtuneError(f"{out} already holds an index; pass --add to append, or choose another --out")
    return Index.build(encoder, documents, out, fusion), len(documents), len(documents)


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


def doc_ids(folder: Path, positions: set[int] | None = None, wanted: set[str] | None = None) -> dict[int, str]:
    """Position -> passage id of an index folder, for the given positions, or for the passages whose ids are
    `wanted`: one pass over `docs.jsonl`, keeping only those (the id list of a 50M-passage index is gigabytes)."""
    return {position: doc["id"] for position, doc in documents_where(folder, positions, wanted).items()}


def documents_where(folder: Path, positions: set[int] | None = None, wanted: set[str] | None = None) -> dict[int, dict]:
    """Position -> document record (id, text, metadata) of an index folder, as `doc_ids` selects them."""
    found = {}
    with (folder / "docs.jsonl").open(encoding="utf-8") as f:
        for position, line in enumerate(f):
            if positions is not None and position not in positions:
                continue
            doc = json.loads(line)
            if wanted is None or doc["id"] in wanted:
                found[position] = doc
    return found
