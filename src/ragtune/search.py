"""Search: top-k passages for queries, from a saved index or from a model plus a corpus."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ragtune.bm25 import Bm25
from ragtune.data import Document, corpus_cache_dir, load_corpus
from ragtune.embeddings import QUERY, Encoder
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index
from ragtune.hybrid import Fusion
from ragtune.index import INDEX_META, Hit, Index, encode_queries, search_index
from ragtune.rollout import is_store_uri, serving_collection


def search(
    encoder: Encoder,
    corpus: dict[str, str],
    queries: list[str],
    k: int = 10,
    mode: str = "dense",
    fusion: Fusion | None = None,
) -> list[list[Hit]]:
    """Top-k of an in-memory corpus: the same ranking code as a saved index, without writing one."""
    documents = [Document(i, t) for i, t in corpus.items()]
    vectors = None if mode == "bm25" else encoder.encode([d.text for d in documents], desc="encoding corpus")
    meta = {"dim": 0 if vectors is None else int(vectors.shape[1]), "fusion": (fusion or Fusion("rrf", 0.0)).to_dict()}
    dense = flat_index(vectors) if vectors is not None else None
    bm25 = Bm25.build([d.text for d in documents]) if mode != "dense" else None
    index = Index(Path(encoder.model_name), meta, dense, documents, bm25)
    query_vectors = None if mode == "bm25" else encoder.encode(queries, desc="encoding queries", kind=QUERY)
    return index.query(queries, query_vectors, k, mode=mode, fusion=fusion)


class Searcher:
    """An index folder, or a store's serving collection, with its query model loaded once: what an application or
    a retriever (LangChain, LlamaIndex: `examples/retrievers.py`) holds to search many times.

    Args:
        index_or_store: An index folder (`build_index`) or a store URI (`index_to_store`).

    Example:
        >>> searcher = ragtune.Searcher("my-index")
        >>> [h.id for h in searcher.search(["chest pain when climbing stairs"], k=1, mode="hybrid")[0]]
        ['heart']
    """

    def __init__(self, index_or_store: str | Path, show_progress: bool = False):
        if is_store_uri(index_or_store):
            self.target = serving_collection(str(index_or_store))
        else:
            self.target = Index.load(index_or_store)
        self.show_progress = show_progress
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self.target.query_encoder(show_progress=self.show_progress)
        return self._encoder

    def search(
        self,
        queries: list[str],
        k: int = 10,
        filters: dict | None = None,
        mode: str = "dense",
        fusion: Fusion | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits per query, as `ragtune.retrieve` gives them (filters pushed down to a store)."""
        vectors = None if mode == "bm25" else encode_queries(self.encoder, queries)
        return self.target.query(queries, vectors, k, filters or None, mode, fusion)


def hits_to_json(queries: list[str], hits: list[list[Hit]]) -> list[dict]:
    return [{"query": q, "results": [asdict(h) for h in hs]} for q, hs in zip(queries, hits, strict=True)]


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
    mode: str = "dense",
    fusion: Fusion | None = None,
) -> list[list[Hit]]:
    """Top-k hits per query from a saved index (with the model that built it, `filters` allowed), or from a model
    plus a corpus (encoded through the run's embedding cache when the corpus is a ragtune data folder).

    Args:
        model_or_index: An index folder (`build_index`), a vector store URI (`lancedb://folder`, `chroma://folder`,
            `milvus-lite://file.db`: its serving collection), or a model folder / Hub id / "default" with `corpus`.
        queries: The questions.
        k: Hits per query.
        corpus: The passages to search with a model (any format `load_documents` reads).
        filters: {field: value} metadata every hit must match (index folders and stores, where they are pushed
            down to the engine).
        text_column, id_column: The corpus' columns.
        max_seq_length: Truncation for a model (an index uses the one it was built with).
        cache_dir: Embedding cache for a model's corpus vectors.
        show_progress: Tell encoding progress to `ragtune.progress` listeners.
        mode: "dense" (the model), "bm25", or "hybrid" (both fused).
        fusion: How hybrid fuses (`Fusion("convex", 0.3)`, `Fusion("rrf")`); default: the index's own (the weight
            the training run chose on validation), or RRF for a model plus a corpus.

    Returns:
        Per query, its hits best first: id, score (a cosine for dense, BM25's for bm25, the fused score for
        hybrid), text and metadata.

    Example:
        >>> hits = ragtune.retrieve("my-index", ["chest pain when climbing stairs"], k=1)
        >>> hits[0][0].id
        'heart'
        >>> [h.id for h in ragtune.retrieve("default", ["itchy red rash"], k=1, corpus="corpus.jsonl")[0]]
        ['skin']
    """
    if not queries:
        raise RagtuneError("give a query, or --queries-file")
    if is_store_uri(model_or_index):
        return Searcher(model_or_index, show_progress).search(queries, k, filters, mode, fusion)
    if (Path(model_or_index) / INDEX_META).exists():
        return search_index(model_or_index, queries, k, filters or None, show_progress, mode, fusion)
    if corpus is None:
        raise RagtuneError(f"{model_or_index} is not an index folder: give --corpus to search with a model")
    if filters:
        raise RagtuneError("--filter needs an index folder (built by `ragtune index`), where metadata is kept")
    passages = load_corpus(corpus, text_column, id_column)
    cache = cache_dir or corpus_cache_dir(corpus)
    encoder = Encoder(str(model_or_index), cache, max_seq_length, show_progress=show_progress)
    return search(encoder, passages, queries, k, mode, fusion)
