"""LangChain and LlamaIndex retrievers over a ragtune index folder or vector store: dense, BM25 or hybrid.

    python examples/retrievers.py runs/pubmedqa/index "Does age influence growth hormone response to exercise?"
    python examples/retrievers.py lancedb://runs/pubmedqa/vectors "growth hormone and exercise" --mode hybrid

Both retrievers hold one `ragtune.Searcher` (the index or the store's serving collection, with the model that built
it, loaded once) and hand back each framework's own document type with ragtune's id and score in the metadata.
Needs `langchain-core` and/or `llama-index-core`; prints what each retriever returned, as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import ragtune


def langchain_retriever(searcher: ragtune.Searcher, k: int = 4, mode: str = "hybrid", filters: dict | None = None):
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    class RagtuneRetriever(BaseRetriever):
        searcher: Any
        k: int = 4
        mode: str = "hybrid"
        filters: dict | None = None

        def _get_relevant_documents(self, query: str, *, run_manager=None) -> list[Document]:
            hits = self.searcher.search([query], self.k, self.filters, self.mode)[0]
            return [Document(page_content=h.text, metadata={**h.metadata, "id": h.id, "score": h.score}) for h in hits]

    return RagtuneRetriever(searcher=searcher, k=k, mode=mode, filters=filters)


def llamaindex_retriever(searcher: ragtune.Searcher, k: int = 4, mode: str = "hybrid", filters: dict | None = None):
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class RagtuneRetriever(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            hits = searcher.search([query_bundle.query_str], k, filters, mode)[0]
            return [
                NodeWithScore(node=TextNode(id_=h.id, text=h.text, metadata=h.metadata), score=h.score) for h in hits
            ]

    return RagtuneRetriever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", help="An index folder or a store URI (lancedb://, chroma://, milvus-lite://).")
    parser.add_argument("question")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="hybrid")
    args = parser.parse_args()
    searcher = ragtune.Searcher(args.index)
    langchain = langchain_retriever(searcher, args.k, args.mode).invoke(args.question)
    llamaindex = llamaindex_retriever(searcher, args.k, args.mode).retrieve(args.question)
    print(
        json.dumps(
            {
                "langchain": [{"id": d.metadata["id"], "score": round(d.metadata["score"], 4)} for d in langchain],
                "llamaindex": [{"id": n.node.id_, "score": round(n.score, 4)} for n in llamaindex],
            }
        )
    )


if __name__ == "__main__":
    main()
