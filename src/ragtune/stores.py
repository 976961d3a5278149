"""The vector stores an index can live in: LanceDB, Chroma and Milvus Lite, each through its own client.

One small interface over the three (`Store`: create, add, ids, search with filters pushed down, drop), so that
indexing, the model switch and serving are written once. Each collection holds ids, texts, metadata and vectors
(normalised: every engine scores inner products, turned into cosines here). What built each collection, and which
one serves, is kept by `rollout.py`, not here.

URIs: `lancedb://path` (a folder), `chroma://path` (a folder, Chroma's persistent client), `milvus-lite://file.db`.
Remote servers (a Milvus or Qdrant URL) would share this code through their clients, but none runs on the machines
ragtune is tested on, so they are refused rather than shipped untested.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.data import Document
from ragtune.errors import RagtuneError
from ragtune.index import Hit

log = logging.getLogger(__name__)

ENGINES = ("lancedb", "chroma", "milvus-lite")
RESERVED = ("id", "text", "vector")
CHROMA_HNSW = {"hnsw": {"space": "cosine", "ef_search": 200, "ef_construction": 200, "max_neighbors": 32}}
MILVUS_TEXT_BYTES = 65535  # the longest VARCHAR Milvus takes
BATCH = 5000  # rows per write: bounds the memory of one insert, and Chroma's own batch limit


class Store:
    """A store at a local path; `state_path` is where rollout keeps which collection serves."""

    engine = ""

    def __init__(self, path: Path):
        self.path = path

    @property
    def uri(self) -> str:
        return f"{self.engine}://{self.path}"

    @property
    def state_path(self) -> Path:
        return self.path / "ragtune.json"

    @property
    def lexical_path(self) -> Path:
        """Where the BM25 side of each collection is kept (beside the store's own files)."""
        return self.state_path.with_name(self.state_path.name.removesuffix(".json") + "-bm25")

    def validate(self, documents: list[Document]) -> None:
        """Refuse, before anything is encoded, what this store cannot keep (one line naming the document)."""
        for d in documents:
            clash = set(d.metadata) & set(RESERVED)
            if clash:
                raise RagtuneError(
                    f"document {d.id}: metadata field {sorted(clash)[0]!r} clashes with the store's own column; "
                    "rename it in the corpus"
                )

    def names(self) -> list[str]:
        raise NotImplementedError

    def create(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def add(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def ids(self, name: str) -> set[str]:
        raise NotImplementedError

    def search(self, name: str, vectors: np.ndarray, k: int, filters: dict | None = None) -> list[list[Hit]]:
        raise NotImplementedError

    def drop(self, name: str) -> None:
        raise NotImplementedError


def _batches(documents: list[Document], vectors: np.ndarray):
    for start in range(0, len(documents), BATCH):
        yield documents[start : start + BATCH], vectors[start : start + BATCH]


def _literal(value: Any, sql: bool = True) -> str:
    """A filter value as LanceDB's SQL (`sql`) or a Milvus expression writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'" if sql else json.dumps(value)
    raise RagtuneError(f"filter value {value!r}: only strings, numbers and booleans can be filtered on")


class LanceStore(Store):
    engine = "lancedb"

    def __init__(self, path: Path):
        # Lance's own log says "No existing dataset ... will be created" for every new table: keep its errors only.
        os.environ.setdefault("LANCE_LOG", "error")
        from datetime import timedelta

        import lancedb

        super().__init__(path)
        # Open tables are kept (opening one per query costs more than the search at small sizes); reads check for
        # other processes' writes (`ragtune index --add` beside a server) at most once a second.
        self.db = lancedb.connect(str(path), read_consistency_interval=timedelta(seconds=1))
        self._tables: dict = {}

    def _table(self, name: str):
        if name not in self._tables:
            self._tables[name] = self.db.open_table(name)
        return self._tables[name]

    def names(self) -> list[str]:
        listed = self.db.list_tables()
        return list(getattr(listed, "tables", listed))

    @staticmethod
    def _rows(documents: list[Document], vectors: np.ndarray) -> list[dict]:
        return [
            {"id": d.id, "text": d.text, "vector": v.tolist(), **d.metadata}
            for d, v in zip(documents, vectors, strict=True)
        ]

    def create(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        table = None
        for docs, vecs in _batches(documents, vectors):
            if table is None:
                table = self.db.create_table(name, data=self._rows(docs, vecs), mode="overwrite")
            else:
                table.add(self._rows(docs, vecs))

    def add(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        table = self._table(name)
        for docs, vecs in _batches(documents, vectors):
            table.add(self._rows(docs, vecs))

    def ids(self, name: str) -> set[str]:
        return set(self._table(name).to_arrow().column("id").to_pylist())

    def search(self, name: str, vectors: np.ndarray, k: int, filters: dict | None = None) -> list[list[Hit]]:
        table = self._table(name)
        columns = set(table.schema.names)
        where = None
        if filters:
            missing = sorted(set(filters) - columns)
            if missing:
                return [[] for _ in vectors]  # no document has that field, so none matches
            where = " AND ".join(f"`{f}` = {_literal(v)}" for f, v in filters.items())
        results = []
        for vector in np.asarray(vectors, dtype=np.float32):
            query = table.search(vector).metric("dot").limit(k)
            if where:
                query = query.where(where, prefilter=True)
            rows = query.to_list()
            # LanceDB's "dot" distance is 1 - inner product: the cosine of normalised vectors is 1 - distance.
            results.append([_hit(r["id"], 1.0 - r["_distance"], r["text"], _meta(r, columns)) for r in rows])
        return results

    def drop(self, name: str) -> None:
        self._tables.pop(name, None)
        self.db.drop_table(name)


def _meta(row: dict, columns) -> dict:
    return {c: row[c] for c in columns if c not in RESERVED and not c.startswith("_") and row.get(c) is not None}


def _hit(doc_id: str, score: float, text: str, metadata: dict) -> Hit:
    return Hit(str(doc_id), float(score), text, metadata)


class ChromaStore(Store):
    engine = "chroma"

    def __init__(self, path: Path):
        import chromadb
        from chromadb.config import Settings

        super().__init__(path)
        # No telemetry: ragtune runs offline, and a store must not phone home.
        self.client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))

    def names(self) -> list[str]:
        return [getattr(c, "name", c) for c in self.client.list_collections()]

    def _collection(self, name: str, create: bool = False):
        if create:
            # Chroma searches an HNSW graph (approximate). Its defaults (ef 100, 16 neighbours) found 36% of the
            # exact top 10 at 100k passages in benchmarks/stores.py; these settings buy recall with build time.
            return self.client.create_collection(name, configuration=CHROMA_HNSW, embedding_function=None)
        return self.client.get_collection(name, embedding_function=None)

    @staticmethod
    def _metadata(d: Document) -> dict | None:
        # Chroma keeps scalars only: anything else is kept as its JSON text.
        kept = {
            k: v if isinstance(v, str | int | float | bool) else json.dumps(v)
            for k, v in d.metadata.items()
            if v is not None
        }
        return kept or None

    def _write(self, collection, documents: list[Document], vectors: np.ndarray) -> None:
        for docs, vecs in _batches(documents, vectors):
            collection.add(
                ids=[d.id for d in docs],
                embeddings=np.asarray(vecs, dtype=np.float32),
                documents=[d.text for d in docs],
                metadatas=[self._metadata(d) for d in docs],
            )

    def create(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        self._write(self._collection(name, create=True), documents, vectors)

    def add(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        self._write(self._collection(name), documents, vectors)

    def ids(self, name: str) -> set[str]:
        return set(self._collection(name).get(include=[])["ids"])

    def search(self, name: str, vectors: np.ndarray, k: int, filters: dict | None = None) -> list[list[Hit]]:
        collection = self._collection(name)
        where = None
        if filters:
            clauses = [{f: v} for f, v in filters.items()]
            where = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        found = collection.query(
            query_embeddings=np.asarray(vectors, dtype=np.float32),
            n_results=min(k, collection.count()) or 1,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        results = []
        for ids, texts, metas, distances in zip(
            found["ids"], found["documents"], found["metadatas"], found["distances"], strict=True
        ):
            # Chroma's cosine space gives 1 - cosine.
            results.append(
                [_hit(i, 1.0 - dist, t, m or {}) for i, t, m, dist in zip(ids, texts, metas, distances, strict=True)]
            )
        return results

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)


class MilvusLiteStore(Store):
    engine = "milvus-lite"

    def __init__(self, path: Path):
        from pymilvus import MilvusClient

        super().__init__(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.client = MilvusClient(str(path))

    @property
    def state_path(self) -> Path:
        return self.path.with_name(self.path.name + ".ragtune.json")

    def names(self) -> list[str]:
        return list(self.client.list_collections())

    @staticmethod
    def _rows(documents: list[Document], vectors: np.ndarray) -> list[dict]:
        # Metadata goes into Milvus' dynamic field: filterable by name without a schema per corpus.
        return [
            {**d.metadata, "id": d.id, "text": d.text, "vector": v.tolist()}
            for d, v in zip(documents, vectors, strict=True)
        ]

    def create(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("text", DataType.VARCHAR, max_length=MILVUS_TEXT_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        # FLAT, exhaustive: Milvus Lite's default index (AUTOINDEX) missed up to 4% of the exact top 10 under a
        # metadata filter in benchmarks/stores.py; ragtune's numbers assume the exact top k, as FAISS gives it.
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(name, schema=schema, index_params=index)
        self.add(name, documents, vectors)

    def validate(self, documents: list[Document]) -> None:
        super().validate(documents)
        for d in documents:
            if len(d.text.encode("utf-8")) > MILVUS_TEXT_BYTES:
                raise RagtuneError(
                    f"document {d.id}: {len(d.text.encode('utf-8'))} bytes of text; Milvus keeps at most "
                    f"{MILVUS_TEXT_BYTES}: chunk the corpus first (`ragtune chunk`)"
                )

    def add(self, name: str, documents: list[Document], vectors: np.ndarray) -> None:
        for docs, vecs in _batches(documents, vectors):
            self.client.insert(name, self._rows(docs, vecs))
        self.client.flush(name)

    def ids(self, name: str) -> set[str]:
        found: set[str] = set()
        iterator = self.client.query_iterator(name, batch_size=BATCH, filter="", output_fields=["id"])
        while batch := iterator.next():
            found.update(r["id"] for r in batch)
        iterator.close()
        return found

    def search(self, name: str, vectors: np.ndarray, k: int, filters: dict | None = None) -> list[list[Hit]]:
        expression = " and ".join(f"{f} == {_literal(v, sql=False)}" for f, v in (filters or {}).items())
        found = self.client.search(
            name,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=k,
            filter=expression,
            output_fields=["*"],
        )
        return [
            [_hit(h["id"], h["distance"], h["entity"]["text"], _meta(h["entity"], h["entity"])) for h in hits]
            for hits in found
        ]

    def drop(self, name: str) -> None:
        self.client.drop_collection(name)


def open_store(uri: str) -> Store:
    """The store a URI names: `lancedb://folder`, `chroma://folder` or `milvus-lite://file.db`."""
    engine, sep, rest = str(uri).partition("://")
    if not sep or engine not in ENGINES or not rest:
        raise RagtuneError(
            f"store {uri!r}: expected lancedb://FOLDER, chroma://FOLDER or milvus-lite://FILE.db "
            "(remote servers are not supported: none could be tested here)"
        )
    path = Path(rest)
    try:
        if engine == "lancedb":
            return LanceStore(path)
        if engine == "chroma":
            return ChromaStore(path)
        if not path.name.endswith(".db"):
            raise RagtuneError(f"store {uri!r}: Milvus Lite keeps a collection file, name it like file.db")
        return MilvusLiteStore(path)
    except ImportError as err:
        raise RagtuneError(f'{engine} is not installed: pip install "ragtune[stores]" ({err})') from err
