"""Corpus encoding on a Ray cluster: Ray Data over worker processes that keep their model (actors with GPUs).

Inside `with ray_engine(...)`, every `Encoder` sends the texts its cache lacks to the cluster instead of encoding
them in this process: mining, evaluation, indexing and search all encode through `Encoder`, so all of them scale
out, and the vectors land in the same embedding cache. The batches are the ones one process makes (texts sorted
longest first, `batch_size` at a time), each sent whole to one model copy, so each batch is padded as it would be
locally and the vectors agree with the single-process ones (`tests/test_ray.py` measures how closely).

Ray is an optional extra (`pip install "ragtune[ray]"`); without `ray_engine` nothing here is imported.
Large FAISS searches (mining's candidate search, full-corpus evaluation) run as Ray tasks over a copy of the index
(`RayEngine.search`). For corpora too large for this process, `ragtune.shards` streams corpus shards through the
cluster into embedding shards, builds the index from them and mines hard negatives without loading the corpus here.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ragtune.embeddings import ENGINE, Encoder
from ragtune.errors import RagtuneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerModel:
    """The encoder's model as a Ray worker loads it: where it is, what it is (its fingerprint: a model retrained at
    the same path is another model), truncation and backend."""

    location: str
    fingerprint: str
    max_seq_length: int | None
    backend: str

    @classmethod
    def of(cls, encoder: Encoder) -> WorkerModel:
        return cls(encoder.model_location, encoder.fingerprint, encoder.max_seq_length, encoder.backend)

    def load(self):
        """The model, loaded once per worker process: Ray runs a job's later tasks in the same CPU worker processes,
        and loading costs ~6 s of CPU (importing sentence-transformers) plus the weights, which every stage and every
        block would otherwise pay again. The last `_KEEP` models stay (a base and a tuned model alternate)."""
        model = _LOADED.pop(self, None)
        if model is None:
            from ragtune.embeddings import load_model

            model = load_model(self.location, self.max_seq_length, backend=self.backend)
            while len(_LOADED) >= _KEEP:
                _LOADED.pop(next(iter(_LOADED)))
        _LOADED[self] = model  # last used last
        return model


_LOADED: dict[WorkerModel, object] = {}
_KEEP = 2


def map_with_model(
    dataset, fn, model: WorkerModel, engine: RayEngine, size: int, fn_kwargs: dict, tasks: bool = False, **options
):
    """`dataset.map_batches` of `fn(rows, loaded_model, **fn_kwargs)` on up to `size` model copies.

    `tasks` (on CPUs only): as Ray tasks in the job's worker processes, each keeping the model it loaded
    (`WorkerModel.load`), for a dataset of at most `size` blocks: no more loads than a pool of actors in the worst
    case, none when the workers already hold the model (a run encodes queries, validation and test sets many times).
    Otherwise a pool of actors, one model copy each, which also serves long datasets: Ray replaces idle workers
    beyond its limit while reads and writes run beside the encoding, and ends a GPU task's worker after each task
    (to free the GPU), so tasks would load the model again and again."""
    import ray.data

    if tasks and not engine.gpus:
        return dataset.map_batches(
            _on_task,
            fn_kwargs={"fn": fn, "model": model, "fn_kwargs": fn_kwargs},
            compute=ray.data.TaskPoolStrategy(size=size),
            num_cpus=1,
            **options,
        )
    return dataset.map_batches(
        _OnActor,
        fn_constructor_kwargs={"fn": fn, "model": model, "fn_kwargs": fn_kwargs},
        compute=actor_pool(size),
        num_cpus=0 if engine.gpus else 1,
        num_gpus=engine.gpus or None,
        **options,
    )


def _on_task(rows, fn, model: WorkerModel, fn_kwargs: dict):
    return fn(rows, model.load(), **fn_kwargs)


class _OnActor:
    def __init__(self, fn, model: WorkerModel, fn_kwargs: dict):
        self.fn, self.model, self.fn_kwargs = fn, model.load(), fn_kwargs

    def __call__(self, rows):
        return self.fn(rows, self.model, **self.fn_kwargs)


def _encode_batches(rows: dict, model) -> dict:
    """Each row one whole batch of texts, encoded as one batch: padded as one process pads it."""
    out = []
    for texts in rows["texts"]:
        texts = [str(t) for t in texts]
        vectors = model.encode(
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
        size = self.pool_size(len(batches))
        # One block per model copy, each with every `size`-th batch: long and short batches spread evenly.
        dealt = sorted(range(len(batches)), key=lambda n: (n % size, n))
        items = [{"batch": n, "texts": [texts[i] for i in batches[n]]} for n in dealt]
        found = map_with_model(
            ray.data.from_items(items, override_num_blocks=size),
            _encode_batches,
            WorkerModel.of(encoder),
            self,
            size,
            {},
            tasks=True,
            batch_size=1,
            batch_format="numpy",
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
    # Ray Data warns when a read may run two tasks and has one file to read: nothing for a user to change.
    warnings.filterwarnings("ignore", "The maximum number of concurrent tasks", UserWarning)
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        options = {"address": target} if target else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        try:
            ray.init(log_to_driver=False, logging_level=logging.WARNING, **options)
        except ConnectionError as err:
            raise RagtuneError(f"could not reach the Ray cluster at {target}: {err}") from None
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own display; Ray's bars would fight it
    context.print_on_execution_start = False
    engine = RayEngine(address, actors, gpus)
    token = ENGINE.set(engine)
    try:
        yield engine
    finally:
        ENGINE.reset(token)
        if started:
            ray.shutdown()
