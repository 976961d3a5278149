"""Corpus encoding on a Ray cluster: Ray Data over a pool of actors, one model copy each.

Inside `with ray_engine(...)`, every `Encoder` sends the texts its cache lacks to the cluster instead of encoding
them in this process: mining, evaluation, indexing and search all encode through `Encoder`, so all of them scale
out, and the vectors land in the same embedding cache. The batches are the ones one process makes (texts sorted
longest first, `batch_size` at a time), each sent whole to one actor, so each batch is padded as it would be locally
and the vectors agree with the single-process ones (`tests/test_ray.py` measures how closely).

Ray is an optional extra (`pip install "ragtune[ray]"`); without `ray_engine` nothing here is imported.
Large FAISS searches (mining's candidate search, full-corpus evaluation) run as Ray tasks over a copy of the index
(`RayEngine.search`). For corpora too large for this process, `ragtune.shards` streams corpus shards through the
cluster into embedding shards, builds the index from them and mines hard negatives without loading the corpus here.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ragtune.embeddings import ENGINE, Encoder
from ragtune.errors import RagtuneError

log = logging.getLogger(__name__)


class _EncodeBatches:
    """A Ray Data actor: the model loaded once, each row one whole batch of texts."""

    def __init__(self, model: str, max_seq_length: int | None, backend: str):
        from ragtune.embeddings import load_model

        self.model = load_model(model, max_seq_length, backend=backend)

    def __call__(self, rows: dict) -> dict:
        out = []
        for texts in rows["texts"]:
            texts = [str(t) for t in texts]
            vectors = self.model.encode(
                texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
            out.append(vectors.tobytes())  # bytes: batches differ in length, which tensor columns would refuse
        return {"batch": rows["batch"], "vectors": np.array(out, dtype=object)}


@dataclass
class RayEngine:
    """Where and how wide: `address` of a running cluster (else RAY_ADDRESS, else a local one), `actors` model
    copies (default: one per CPU of the cluster), `gpus` per actor."""

    address: str | None = None
    actors: int | None = None
    gpus: float = 0.0
    batches: int = 0  # batches the cluster has encoded, for logs and tests
    search_tasks: int = 0  # FAISS searches run as Ray tasks
    pools: list[int] = field(default_factory=list)  # the size of each encoding actor pool started, for tests

    def pool_size(self, work: int | None = None) -> int:
        """Model copies to start: `actors` when given, else one per `gpus` share of the cluster's GPUs (a pool
        sized by CPUs would wait forever for GPUs that are not there), else one per CPU; never more than `work`."""
        import ray

        resources = ray.cluster_resources()
        size = self.actors
        if not size and self.gpus:
            size = int(resources.get("GPU", 0) / self.gpus)
            if size < 1:
                raise RagtuneError(
                    f"the Ray cluster has {resources.get('GPU', 0):g} GPUs; an actor asks for {self.gpus:g}"
                )
        size = max(1, size or int(resources.get("CPU", 1)))
        size = min(size, work) if work else size
        self.pools.append(size)
        return size

    def encode(self, encoder: Encoder, texts: list[str]) -> np.ndarray:
        import ray

        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[s : s + encoder.batch_size] for s in range(0, len(texts), encoder.batch_size)]
        items = [{"batch": n, "texts": [texts[i] for i in rows]} for n, rows in enumerate(batches)]
        found = ray.data.from_items(items).map_batches(
            _EncodeBatches,
            fn_constructor_kwargs={
                "model": encoder.model_location,
                "max_seq_length": encoder.max_seq_length,
                "backend": encoder.backend,
            },
            batch_size=1,
            batch_format="numpy",
            compute=actor_pool(self.pool_size(len(items))),
            num_cpus=0 if self.gpus else 1,
            num_gpus=self.gpus or None,
        )
        vectors: np.ndarray | None = None
        for row in found.iter_rows():
            rows = batches[int(row["batch"])]
            batch = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(rows), -1)
            if vectors is None:
                vectors = np.empty((len(texts), batch.shape[1]), dtype=np.float32)
            vectors[rows] = batch
            self.batches += 1
        if vectors is None:
            raise RagtuneError("the Ray cluster returned no vectors")
        return vectors

    def search(
        self, index, queries: np.ndarray, k: int, exclude: np.ndarray | None, chunk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`faiss_search.search_chunked` over Ray tasks: the index is serialised into the object store once per
        call, each task searches whole chunks of queries (the same chunks one process would), results in order."""
        import faiss
        import ray

        task = _remote_search()
        blob = ray.put(faiss.serialize_index(index))
        mask = ray.put(exclude) if exclude is not None else None
        nprobe = getattr(index, "nprobe", None)
        # At least one task per CPU, each a whole number of chunks: a task's ties and cut-offs match one process's.
        per_task = chunk * max(1, -(-len(queries) // (chunk * max(1, int(ray.cluster_resources().get("CPU", 1))))))
        refs = [
            task.remote(blob, np.ascontiguousarray(queries[s : s + per_task]), k, mask, nprobe)
            for s in range(0, len(queries), per_task)
        ]
        parts = ray.get(refs)
        self.search_tasks += len(refs)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def actor_pool(size: int):
    """A pool of up to `size` model copies that starts with one and grows while blocks wait: each actor is a new
    process that imports sentence-transformers and loads the model (~6 s of CPU for MiniLM), which a small dataset
    (one block) would pay `size` times for one actor's work."""
    import ray.data

    return ray.data.ActorPoolStrategy(min_size=1, max_size=size)


@functools.cache
def _remote_search():
    import ray

    return ray.remote(num_cpus=1)(_search_part)


def _search_part(blob: np.ndarray, queries: np.ndarray, k: int, exclude, nprobe) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    from ragtune.faiss_search import search_chunked

    index = faiss.deserialize_index(blob)
    if nprobe is not None:
        index.nprobe = nprobe
    return search_chunked(index, queries, k, exclude)  # no engine is set in a Ray worker: searched here


@contextmanager
def engine_for(config) -> Iterator[RayEngine | None]:
    """The engine an `EngineConfig` names: nothing to set for 'local', a Ray cluster for 'ray'."""
    if config.kind != "ray":
        yield None
        return
    with ray_engine(config.address, config.actors, config.gpus) as engine:
        yield engine


@contextmanager
def ray_engine(address: str | None = None, actors: int | None = None, gpus: float = 0.0) -> Iterator[RayEngine]:
    """Encode on Ray inside the block: a running cluster at `address` (or RAY_ADDRESS), else a local one on this
    machine, started here and stopped after (loopback only, no dashboard)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RagtuneError('the Ray engine needs Ray: pip install "ragtune[ray]"') from None
    started = False
    # Ray's own C++ and Data logs would write over the CLI's display: errors only.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        options = {"address": target} if target else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        try:
            ray.init(log_to_driver=False, logging_level=logging.WARNING, **options)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the CLI draws its own display; Ray's bars would fight it
            context.print_on_execution_start = False
        except ConnectionError as err:
            raise RagtuneError(f"could not reach the Ray cluster at {target}: {err}") from None
        started = True
    engine = RayEngine(address, actors, gpus)
    token = ENGINE.set(engine)
    try:
        yield engine
    finally:
        ENGINE.reset(token)
        if started:
            ray.shutdown()
