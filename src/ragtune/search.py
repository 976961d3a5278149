"""Search: top-k passages for queries, from a saved index or from a model plus a corpus."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ragtune.data import corpus_cache_dir, load_corpus
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index, search_chunked
from ragtune.index import INDEX_META, Hit, search_index


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
    """Top-k hits per query from a saved index (with the model that built it, `filters` allowed), or from a model
    plus a corpus (encoded through the run's embedding cache when the corpus is a ragtune data folder).

    Args:
        model_or_index: An index folder (`build_index`), or a model folder / Hub id / "default" with `corpus`.
        queries: The questions.
        k: Hits per query.
        corpus: The passages to search with a model (any format `load_documents` reads).
        filters: {field: value} metadata every hit must match (index folders only).
        text_column, id_column: The corpus' columns.
        max_seq_length: Truncation for a model (an index uses the one it was built with).
        cache_dir: Embedding cache for a model's corpus vectors.
        show_progress: Tell encoding progress to `ragtune.progress` listeners.

    Returns:
        Per query, its hits best first: id, cosine score, text and metadata.

    Example:
        >>> hits = ragtune.retrieve("my-index", ["chest pain when climbing stairs"], k=1)
        >>> hits[0][0].id
        'heart'
        >>> [h.id for h in ragtune.retrieve("default", ["itchy red rash"], k=1, corpus="corpus.jsonl")[0]]
        ['skin']
    """
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
