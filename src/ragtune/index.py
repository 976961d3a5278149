"""The saved index `ragtune index` writes: FAISS vectors, the documents in vector order, and what built them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ragtune.data import Document, load_documents
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index, search_chunked
from ragtune.outputs import check_no_overlap, claim_folder, recover_folder, replace_folder, write_json, write_jsonl


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


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
    vectors = encoder.model.encode(
        queries, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)
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

    Args:
        encoder: The model that encodes the passages (`Encoder("runs/x/model")`); queries must later use the same.
        corpus: JSONL/CSV/Parquet file, BEIR folder, saved dataset or ragtune data folder; columns other than the
            id and the text become filterable metadata.
        out: The index folder (FAISS vectors, the documents, the model's fingerprint).
        add: Append the corpus' new ids to the index in `out` instead of building one.
        text_column, id_column: Where the text and the id are.

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
