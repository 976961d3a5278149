"""BM25 (bm25s: Lucene's variant, English stopwords, Snowball stemming), the one lexical scorer of evaluation,
the saved index and hybrid search."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _tokenize(texts: list[str], ids: bool):
    import bm25s
    import Stemmer

    return bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=ids, show_progress=False
    )


class Bm25:
    """A BM25 index over passages in a fixed order; hits come back as (position, score)."""

    def __init__(self, retriever, count: int):
        self.retriever, self.count = retriever, count

    @classmethod
    def build(cls, texts: list[str]) -> Bm25:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts, ids=True), show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)
        (folder / "count.txt").write_text(str(self.count))

    @classmethod
    def load(cls, folder: Path) -> Bm25:
        import bm25s

        retriever = bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
        return cls(retriever, int((folder / "count.txt").read_text()))

    def search(self, queries: list[str], k: int, allowed: np.ndarray | None = None) -> list[list[tuple[int, float]]]:
        """Top-k per query; `allowed` (positions) restricts the candidates exactly, inside bm25s' scoring."""
        k = min(k, self.count)
        if not queries or k == 0:
            return [[] for _ in queries]
        mask = None
        if allowed is not None:
            mask = np.zeros(self.count, dtype=np.float32)
            mask[allowed] = 1.0
        docs, scores = self.retriever.retrieve(
            _tokenize(queries, ids=False), k=k, show_progress=False, weight_mask=mask
        )
        # bm25s pads with score 0 when fewer passages share a term with the query; those are not retrieved.
        return [
            [(int(d), float(s)) for d, s in zip(docs[n], scores[n], strict=True) if s > 0] for n in range(len(queries))
        ]
