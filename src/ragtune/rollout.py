"""Collections in a vector store, and switching the served one without downtime.

Every model gets its own collection (a fine-tune changes every vector), written whole beside the one that serves.
Which collection serves is one small JSON file beside the store (`ragtune.json`: the serving collection, the ones
served before, and what built each), replaced atomically: a reader sees the old pointer or the new one, never a
half-built collection. Promotion can be checked first on a labelled set (NDCG@10 and recall@10, new vs serving,
searched in the store itself), and a regression is refused unless forced; rollback returns to the previous one.

`LiveCollection` is what a server holds: it re-reads the pointer in a background thread, loads the new model, and
then swaps (encoder, collection) in one assignment, so each request is answered by exactly one model.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ragtune.bm25 import Bm25
from ragtune.data import Document, load_documents
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.hybrid import Fusion
from ragtune.index import CANDIDATES, Hit, Index, check_mode, encode_queries, encoder_for, fuse_hits, run_fusion
from ragtune.metrics import aggregate, per_query
from ragtune.outputs import replace_folder, write_json, write_jsonl
from ragtune.stores import Store, open_store

log = logging.getLogger(__name__)

CHECK_METRICS = ["ndcg@10", "recall@10"]


def is_store_uri(value: str | Path) -> bool:
    return "://" in str(value)


@dataclass
class StoreState:
    """The pointer file: which collection serves, which served before (latest last), and what built each."""

    serving: str | None = None
    history: list[str] = field(default_factory=list)
    collections: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, store: Store) -> StoreState:
        if not store.state_path.exists():
            return cls()
        return cls(**json.loads(store.state_path.read_text()))

    def write(self, store: Store) -> None:
        write_json(store.state_path, asdict(self))  # atomic: written beside, then renamed over


@dataclass
class Check:
    """New vs serving collection on a labelled set's queries, searched in the store."""

    new: dict[str, float]
    serving: dict[str, float]
    queries: int

    @property
    def regressed(self) -> bool:
        return self.new["ndcg@10"] < self.serving["ndcg@10"]

    def describe(self, new: str, serving: str) -> str:
        def scores(m: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.4f}" for k, v in m.items())

        return f"on {self.queries} queries: {new} {scores(self.new)}; serving {serving} {scores(self.serving)}"


@dataclass
class StoreResult:
    """What an operation on a store did."""

    uri: str
    collection: str
    serving: str | None
    added: int = 0
    check: Check | None = None
    message: str = ""


class StoreCollection:
    """One collection, searched with the model that built it (the same `query` signature as a saved `Index`).

    Dense search runs in the store, filters pushed down. The BM25 side of hybrid search is a bm25s index kept beside
    the store (`lexical/<collection>/`): no engine here scores BM25 the way ragtune evaluates it (Snowball stemming,
    the same tokenizer as the run's report), and the fusion weight was chosen with that scorer.
    """

    def __init__(self, store: Store, name: str, meta: dict):
        self.store, self.name, self.meta = store, name, meta
        self._lexical: Index | None = None

    @property
    def lexical(self) -> Index | None:
        """The BM25 side, as an index of documents without vectors (None for a collection written without one)."""
        if self._lexical is None:
            self._lexical = _load_lexical(self.store, self.name)
        return self._lexical

    @property
    def bm25(self) -> Bm25 | None:
        return self.lexical.bm25 if self.lexical is not None else None

    def query_encoder(self, show_progress: bool = False) -> Encoder:
        meta = self.meta
        encoder = encoder_for(meta, show_progress)
        if encoder.fingerprint != meta["model_fingerprint"]:
            raise RagtuneError(
                f"{self.store.uri} collection {self.name} was built with {meta['model']} as it was then; that "
                "folder now holds a different model, so its query vectors would not match"
            )
        return encoder

    def query(
        self,
        queries: list[str],
        query_vectors: np.ndarray | None,
        k: int = 10,
        filters: dict | None = None,
        mode: str = "dense",
        fusion: Fusion | None = None,
    ) -> list[list[Hit]]:
        """Top-k per query by the store's vectors, BM25, or both fused (default: the collection's fusion)."""
        check_mode(mode)
        if mode == "dense":
            return self.store.search(self.name, query_vectors, k, filters or None)
        if self.lexical is None:
            raise RagtuneError(f"{self.store.uri} collection {self.name} has no BM25 side: {mode} search needs one")
        if mode == "bm25":
            return self.lexical.query(queries, None, k, filters, "bm25")
        dense = self.store.search(self.name, query_vectors, max(k, CANDIDATES), filters or None)
        sparse = self.lexical.query(queries, None, CANDIDATES, filters, "bm25")
        return fuse_hits(dense, sparse, fusion or Fusion(**self.meta["fusion"]), k)


def _lexical_dir(store: Store, name: str) -> Path:
    return store.lexical_path / name


def _write_lexical(store: Store, name: str, documents: list[Document]) -> None:
    with replace_folder(_lexical_dir(store, name), "bm25 side of a store collection") as new:
        write_jsonl(new / "docs.jsonl", (asdict(d) for d in documents))
        Bm25.build([d.text for d in documents]).save(new / "bm25")


def _load_lexical(store: Store, name: str) -> Index | None:
    folder = _lexical_dir(store, name)
    if not (folder / "bm25").is_dir():
        return None
    with (folder / "docs.jsonl").open(encoding="utf-8") as f:
        documents = [Document(**json.loads(line)) for line in f]
    return Index(folder, {"dim": 0}, None, documents, Bm25.load(folder / "bm25"))


def _meta(encoder: Encoder, dim: int, count: int, fusion: Fusion | None) -> dict:
    return {
        **encoder.identity(),
        "dim": dim,
        "count": count,
        "fusion": (fusion or run_fusion(encoder.model_name) or Fusion("rrf", 0.0)).to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _new_name(state: StoreState, encoder: Encoder) -> str:
    # Letters, digits and underscores: the one naming rule all three engines accept.
    n = 1 + max((int(name.rsplit("_", 1)[1]) for name in state.collections), default=0)
    return f"ragtune_{encoder.fingerprint[:8]}_{n}"


def serving_collection(uri: str) -> StoreCollection:
    store = open_store(uri)
    state = StoreState.read(store)
    if state.serving is None:
        raise RagtuneError(f"{uri}: no collection serves yet; build one with `ragtune index MODEL CORPUS --store`")
    return StoreCollection(store, state.serving, state.collections[state.serving])


def check_collections(store: Store, new: str, old: str, data: str | Path, split: str | None) -> Check:
    """NDCG@10 and recall@10 of two collections on a labelled set whose passage ids are the store's ids."""
    from ragtune import data as data_mod

    labelled = data_mod.load_pairs(data, "auto")
    if split:
        if not labelled.splits or split not in labelled.splits:
            raise RagtuneError(f"{data}: no split {split!r}; splits: {', '.join(labelled.splits or {}) or 'none'}")
        labelled = labelled.subset(labelled.splits[split])
    state = StoreState.read(store)
    qids = list(labelled.queries)
    texts = [labelled.queries[q] for q in qids]
    scores = {}
    for name in (new, old):
        collection = StoreCollection(store, name, state.collections[name])
        hits = collection.query(texts, encode_queries(collection.query_encoder(), texts), 10)
        run = {q: {h.id: h.score for h in found} for q, found in zip(qids, hits, strict=True)}
        scores[name] = aggregate(per_query(run, labelled.qrels, CHECK_METRICS))
    return Check(scores[new], scores[old], len(qids))


def _promote(store: Store, state: StoreState, name: str, check: Check | None, force: bool) -> StoreResult:
    old = state.serving
    if check is not None and check.regressed and not force:
        message = f"{name} not promoted: it does worse than the serving {old} ({check.describe(name, old)}); "
        raise PromotionRefused(StoreResult(store.uri, name, old, check=check, message=message + "--force promotes"))
    if old is not None and old != name:
        state.history.append(old)
    state.serving = name
    state.write(store)
    said = f" ({check.describe(name, old)})" if check else ""
    return StoreResult(store.uri, name, name, check=check, message=f"{name} now serves{said}")


class PromotionRefused(RagtuneError):
    """The new collection regressed on the check set; `result` says by how much."""

    exit_code = 3  # as a run's regression guard: the work is done and kept, the switch is what was refused

    def __init__(self, result: StoreResult):
        super().__init__(result.message)
        self.result = result


def index_to_store(
    encoder: Encoder,
    corpus: str | Path,
    uri: str,
    text_column: str = "text",
    id_column: str = "id",
    fusion: Fusion | None = None,
    promote: bool = True,
    check_data: str | Path | None = None,
    check_split: str | None = None,
    force: bool = False,
) -> StoreResult:
    """Write `corpus` encoded by `encoder` as a new collection in the store at `uri`, then (with `promote`) make it
    the serving one: at once when nothing serves, else after `check_data` shows no regression (or `force`).

    Args:
        encoder: The model that encodes the passages; searches of this collection use the same model.
        corpus: JSONL/CSV/Parquet file, BEIR folder, saved dataset or ragtune data folder; columns other than the
            id and the text become metadata the store can filter on.
        uri: `lancedb://FOLDER`, `chroma://FOLDER` or `milvus-lite://FILE.db`.
        text_column, id_column: Where the text and the id are.
        fusion: How hybrid search fuses BM25 and the model (default: the training run's choice, else RRF).
        promote: Serve the new collection once written (and checked); False writes it beside the serving one.
        check_data, check_split: A labelled set (its passage ids = the corpus' ids): the new collection is
            promoted only if its NDCG@10 there is not below the serving collection's.
        force: Promote even when the check shows a regression.

    Returns:
        A `StoreResult`: the new collection, the one serving now, the check's scores, a one-line message.

    Raises:
        PromotionRefused: the check showed a regression (the collection is kept, unserved; exit status 3 in the CLI).

    Example (`corpus.jsonl` holds three passages with ids `heart`, `kidney`, `skin`):
        >>> result = ragtune.index_to_store(ragtune.Encoder("default"), "corpus.jsonl", "lancedb://my-store")
        >>> result.serving == result.collection
        True
        >>> [h.id for h in ragtune.retrieve("lancedb://my-store", ["itchy red rash"], k=1)[0]]
        ['skin']
    """
    store = open_store(uri)
    documents = load_documents(corpus, text_column, id_column)
    store.validate(documents)
    state = StoreState.read(store)
    name = _new_name(state, encoder)
    vectors = encoder.encode([d.text for d in documents], desc="encoding documents")
    store.create(name, documents, vectors)
    _write_lexical(store, name, documents)
    state.collections[name] = _meta(encoder, int(vectors.shape[1]), len(documents), fusion)
    state.write(store)  # recorded (not serving) before any check: a refused collection can still be promoted
    if state.serving is None:
        return _promote(store, state, name, None, force)
    if not promote:
        return StoreResult(uri, name, state.serving, message=f"{name} written; {state.serving} still serves")
    return promote_collection(uri, name, check_data, check_split, force)


def promote_collection(
    uri: str,
    name: str | None = None,
    check_data: str | Path | None = None,
    check_split: str | None = None,
    force: bool = False,
) -> StoreResult:
    """Make `name` (default: the newest collection) the serving one, after the check when `check_data` is given."""
    store = open_store(uri)
    state = StoreState.read(store)
    if not state.collections:
        raise RagtuneError(f"{uri}: holds no ragtune collection")
    name = name or list(state.collections)[-1]
    if name not in state.collections:
        raise RagtuneError(f"{uri}: no collection {name!r}; collections: {', '.join(state.collections)}")
    if name == state.serving:
        return StoreResult(uri, name, name, message=f"{name} already serves")
    check = None
    if check_data is not None and state.serving is not None:
        check = check_collections(store, name, state.serving, check_data, check_split)
    return _promote(store, state, name, check, force)


def rollback(uri: str) -> StoreResult:
    """Serve the collection that served before the current one."""
    store = open_store(uri)
    state = StoreState.read(store)
    if not state.history:
        raise RagtuneError(f"{uri}: nothing to roll back to (no collection served before {state.serving})")
    old, state.serving = state.serving, state.history.pop()
    state.write(store)
    return StoreResult(uri, state.serving, state.serving, message=f"{state.serving} serves again (was {old})")


def add_to_store(
    encoder: Encoder, corpus: str | Path, uri: str, text_column: str = "text", id_column: str = "id"
) -> StoreResult:
    """Append the corpus' new ids to the serving collection, encoded by the model that built it."""
    collection = serving_collection(uri)
    if encoder.fingerprint != collection.meta["model_fingerprint"]:
        raise RagtuneError(
            f"{uri}: the serving collection {collection.name} was built with {collection.meta['model']}; "
            f"{encoder.model_name} is a different model: index it as a new collection (without --add) and promote it"
        )
    documents = load_documents(corpus, text_column, id_column)
    have = collection.store.ids(collection.name)
    new = [d for d in documents if d.id not in have]
    collection.store.validate(new)
    if new:
        collection.store.add(collection.name, new, encoder.encode([d.text for d in new], desc="encoding new documents"))
        if collection.lexical is not None:
            # BM25's statistics change with every document: its side is rebuilt whole (as an index folder's is).
            _write_lexical(collection.store, collection.name, collection.lexical.documents + new)
        state = StoreState.read(collection.store)
        state.collections[collection.name]["count"] += len(new)
        state.write(collection.store)
    return StoreResult(
        uri, collection.name, collection.name, len(new), message=f"added {len(new)} to {collection.name}"
    )


class LiveCollection:
    """The serving collection and its query model, followed as promotions and rollbacks happen.

    `current` is one (model object, collection) pair, replaced whole: a request that took it is answered by that
    model on that collection even if the pointer moves meanwhile. The new model is loaded before the swap, so no
    request waits for a load.
    """

    def __init__(self, uri: str, wrap=lambda encoder: encoder, interval_s: float = 0.5):
        self.uri, self.wrap, self.interval = uri, wrap, interval_s
        self.current = self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self):
        collection = serving_collection(self.uri)
        encoder = collection.query_encoder()
        _ = encoder.model, collection.lexical  # loaded before the swap: no request waits for either
        return self.wrap(encoder), collection

    def refresh(self) -> bool:
        """Swap to the collection the pointer names if it moved, or reload it if documents were added; True when
        it did."""
        store, serving = self.current[1].store, self.current[1]
        state = StoreState.read(store)
        if state.serving == serving.name and state.collections[serving.name]["count"] == serving.meta["count"]:
            return False
        self.current = self._load()
        log.info("now serving %s", self.current[1].name)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as err:  # a half-written state file or a failed load: keep serving what works
                log.warning("could not follow %s: %s", self.uri, err)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, daemon=True, name="ragtune-store-watch")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)


def manage_store(
    uri: str,
    encoder: Encoder | None = None,
    corpus: str | Path | None = None,
    *,
    add: bool = False,
    stage: bool = False,
    promote: bool = False,
    rollback_: bool = False,
    collection: str | None = None,
    check_data: str | Path | None = None,
    check_split: str | None = None,
    force: bool = False,
    text_column: str = "text",
    id_column: str = "id",
    fusion: Fusion | None = None,
) -> StoreResult:
    """What `ragtune index --store` does: index (then promote unless `stage`), add, promote, or roll back."""
    indexing = encoder is not None and corpus is not None
    if rollback_:
        if indexing or promote or add:
            raise RagtuneError("--rollback stands alone: give no model, corpus, --promote or --add with it")
        return rollback(uri)
    if indexing and add:
        return add_to_store(encoder, corpus, uri, text_column, id_column)
    if indexing:
        if collection:
            raise RagtuneError("--collection names a collection to promote; a new one is named by ragtune")
        return index_to_store(
            encoder, corpus, uri, text_column, id_column, fusion, not stage, check_data, check_split, force
        )
    if promote:
        return promote_collection(uri, collection, check_data, check_split, force)
    raise RagtuneError("give MODEL and CORPUS to index into the store, or --promote, or --rollback")


def describe(uri: str) -> dict:
    """The store's collections, which serves, and what built each."""
    store = open_store(uri)
    return asdict(StoreState.read(store))
