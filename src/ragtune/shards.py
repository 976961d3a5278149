"""Corpora too large for one process: embedding shards written by a Ray cluster, an index built from them, and hard
negatives mined over that index, with this process holding neither the corpus nor all of its vectors.

- `embed_shards`: Ray Data reads JSONL/Parquet corpus files on the cluster, an actor pool (one model copy each)
  encodes them, and the cluster writes Parquet shards of (id, text, sha1 of the text, vector). Nothing passes
  through this process. Texts that earlier shards of the same model hold are joined in by their sha1, not encoded.
- `index_from_shards`: a `ragtune index` folder built from the shards one file at a time: exact (FAISS flat) below
  `ivf_pq_from` passages, else IVF-PQ trained on a seeded sample, with its recall@10 against exact search measured;
  its inverted lists are merged from per-shard parts into a file that readers memory-map, so this process holds the
  sample and one shard's codes, never all of them.
- `mine_from_shards`: hard negatives for (query, positive id) files, as Ray Data over actors that each hold the
  model and a copy of the index: the same picks as `ragtune mine --strategy hard` where the index is exact; or the
  least-similar walk over an exact index's vectors (`ragtune.shard_mining`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ragtune.config import MiningConfig, format_validation_error
from ragtune.embeddings import ENGINE, PASSAGE, QUERY, Encoder, with_prompt
from ragtune.errors import RagtuneError
from ragtune.index import INDEX_META, SHA1_FILE, encoder_for
from ragtune.outputs import claim_folder, replace_folder, write_json
from ragtune.ray_engine import WorkerModel, actor_pool, map_with_model

log = logging.getLogger(__name__)

SHARDS_META = "shards.json"
IVF_DATA = "lists.ivfdata"  # an IVF-PQ index from shards: its inverted lists, memory-mapped by every reader
_ROWS_PER_BLOCK = 4096  # rows one encoding call takes (sorted by length inside, so batches pad little)


@dataclass
class Shards:
    folder: Path
    meta: dict

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.parquet"))

    @classmethod
    def load(cls, folder: str | Path) -> Shards:
        folder = Path(folder)
        if not (folder / SHARDS_META).is_file():
            raise RagtuneError(f"{folder}: not embedding shards (no {SHARDS_META}); write them with embed_shards")
        return cls(folder, json.loads((folder / SHARDS_META).read_text()))


def _engine():
    engine = ENGINE.get()
    if engine is None:
        raise RagtuneError("shards are written by a Ray cluster: call this inside `with ragtune.ray_engine():`")
    return engine


def _read(paths: list[str], columns: list[str]):
    """A Ray dataset of the files' `columns`, read on the cluster (JSONL or Parquet, by extension)."""
    import ray.data

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RagtuneError(f"{missing[0]}: no such file")
    for p in paths:
        _check_columns(p, columns)
    # Reading takes no CPU slot: on a small cluster the actors hold every CPU, and reads waiting for one would stall.
    # Two reads at a time keep the actors fed without a worker process per file.
    if all(p.endswith(".parquet") for p in paths):
        found = ray.data.read_parquet(paths, columns=columns, num_cpus=0, concurrency=2, include_paths=True)
    elif all(p.endswith((".jsonl", ".json")) for p in paths):
        found = ray.data.read_json(paths, lines=True, num_cpus=0, concurrency=2, include_paths=True)
    else:
        raise RagtuneError(f"{paths[0]}: shards are read from .jsonl or .parquet files, all of one kind")
    return found.select_columns([*columns, "path"])


def _check_columns(path: str, columns: list[str]) -> None:
    """The first row (JSONL) or the schema (Parquet) names every column: a one-line error here, not a Ray
    traceback from a worker later."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
    else:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            names = set(json.loads(first)) if first.strip() else set()
        except (json.JSONDecodeError, TypeError):
            raise RagtuneError(f"{path}: line 1 is not a JSON object") from None
    absent = [c for c in columns if c not in names]
    if absent:
        raise RagtuneError(f"{path}: no column {absent[0]!r} (columns: {', '.join(sorted(names)) or 'none'})")


def _complete(rows: dict, columns: tuple) -> None:
    """Every row has each column: a missing id or text is an error naming the file, never a passage "None"."""
    for column in columns:
        for value, path in zip(rows[column], rows["path"], strict=True):
            if value is None or value != value:  # Ray's numpy batches hold a JSON null as NaN
                raise RagtuneError(f"{path}: a row has no {column!r}")


@contextmanager
def _cluster_errors():
    """A RagtuneError raised in a Ray worker reaches the caller as itself (one line), not wrapped in Ray's."""
    try:
        yield
    except Exception as err:
        cause = getattr(err, "cause", None) or err.__cause__
        while cause is not None and not isinstance(cause, RagtuneError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise RagtuneError(str(cause)) from None
        # Ray Data wraps a failing UDF's error in a UserCodeException that keeps the original only as traceback text.
        found = re.findall(r"ragtune\.errors\.RagtuneError: (.+)", str(err))
        if not found:
            raise
        raise RagtuneError(found[-1].strip()) from None


def _hash_rows(rows, columns: tuple):
    """(id, text, sha1 of the text) as strings from a block of the corpus files; a row without an id or a text is an
    error naming its file."""
    import pyarrow as pa

    found = {c: rows.column(c).to_pylist() for c in (*columns, "path")}
    _complete(found, columns)
    texts = [str(t) for t in found[columns[1]]]
    return pa.table(
        {
            "id": [str(i) for i in found[columns[0]]],
            "text": texts,
            "sha1": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
        }
    )


def _encode_rows(rows, model, prompts: dict, batch_size: int, columns: tuple):
    """A block of corpus rows (or rows already hashed and joined with earlier shards' vectors): the rows without a
    vector sorted by length and encoded `batch_size` at a time."""
    import pyarrow as pa

    if "sha1" not in rows.column_names:
        rows = _hash_rows(rows, columns)
    texts = rows.column("text").to_pylist()
    dim = model.get_embedding_dimension()
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    reused = np.zeros(len(texts), dtype=bool)
    if "vector" in rows.column_names:
        reused = ~np.asarray(rows.column("vector").is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if reused.any():
            vectors[reused] = _vectors(rows.filter(pa.array(reused)))
    todo = np.flatnonzero(~reused)
    if len(todo):
        passages = with_prompt([texts[i] for i in todo], prompts, PASSAGE)
        vectors[todo] = _encode_sorted(model, passages, batch_size)
    # A plain fixed-size list column (not Ray's tensor type), so any Parquet reader gets the vectors.
    return pa.table(
        {
            "id": rows.column("id"),
            "text": rows.column("text"),
            "sha1": rows.column("sha1"),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "reused": pa.array(reused),
        }
    )


def _known_vectors(shards: Shards):
    """A Ray dataset of (sha1, vector) from earlier shards, one row per distinct text."""
    import ray.data

    found = ray.data.read_parquet([str(f.resolve()) for f in shards.files], columns=["sha1", "vector"], num_cpus=0)
    return found.groupby("sha1").map_groups(lambda group: group.slice(0, 1), batch_format="pyarrow")


def _encode_sorted(model, texts: list[str], batch_size: int) -> np.ndarray:
    order = np.argsort([-len(t) for t in texts], kind="stable")
    vectors = model.encode(
        [texts[i] for i in order],
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32)
    out = np.empty_like(vectors)
    out[order] = vectors
    return out


def embed_shards(
    encoder: Encoder,
    corpus: list[str | Path],
    out: str | Path,
    text_column: str = "text",
    id_column: str = "id",
    rows_per_file: int = 100_000,
    reuse: str | Path | None = None,
) -> Shards:
    """Encode corpus files into Parquet embedding shards in `out`, on the active Ray engine's cluster.

    Texts already encoded by the same model (fingerprint, truncation, backend) in earlier shards are not encoded
    again: their vectors are joined in by the sha1 of the text (a Ray Data join, on the cluster), so a rerun over a
    grown or edited corpus encodes only the new texts. Earlier shards are `reuse`, or else the shards already in `out`.

    Args:
        encoder: The model, truncation, backend and batch size (as `ragtune index` would encode with).
        corpus: JSONL or Parquet files with an id and a text column; they are read by the cluster's workers.
        out: A new folder (or one ragtune made) for `*.parquet` shards and `shards.json`.
        text_column, id_column: Where the text and the id are.
        rows_per_file: At most this many passages per shard file.
        reuse: Shards whose vectors may be reused (default: `out`'s, when it holds shards of the same model).

    Returns:
        The shards: their folder and `meta` (model, fingerprint, truncation, backend, dimension, count, how many
        vectors were reused, inputs).
    """
    engine = _engine()
    out = Path(out)
    paths = [str(Path(p).resolve()) for p in corpus]
    claim_folder(out, "shards", paths)
    earlier = _earlier_shards(Path(reuse) if reuse is not None else out, encoder, explicit=reuse is not None)
    actors = engine.pool_size()
    with replace_folder(out, "shards") as new:
        columns = (id_column, text_column)
        rows = _read(paths, list(columns))
        if earlier is not None:
            # Hashed and joined before the encoders exist: the join's shuffle tasks need a CPU each, which encoding
            # actors would hold while waiting for its output. The result stays on the cluster (object store,
            # spilled to disk when large), never in this process.
            hashed = rows.map_batches(_hash_rows, fn_kwargs={"columns": columns}, batch_format="pyarrow")
            joined = hashed.join(_known_vectors(earlier), "left_outer", num_partitions=2 * actors, on=("sha1",))
            with _cluster_errors():
                rows = joined.materialize()
        found = map_with_model(
            rows,
            _encode_rows,
            WorkerModel.of(encoder),
            engine,
            actors,
            {"prompts": encoder.prompts, "batch_size": encoder.batch_size, "columns": columns},
            batch_size=_ROWS_PER_BLOCK,
            batch_format="pyarrow",
        )
        with _cluster_errors():
            # Row groups of one block: a reader (the index build, each mining actor) holds one group at a time, and
            # Ray's default (a group per file) would make that a whole file's vectors.
            found.write_parquet(
                str(new.resolve()),  # the workers' working directory is not this process'
                max_rows_per_file=rows_per_file,
                row_group_size=min(_ROWS_PER_BLOCK, rows_per_file),
                ray_remote_args={"num_cpus": 0},
            )
        files = sorted(new.glob("*.parquet"))
        count, dim = _count_and_dim(files)
        reused = _count_reused(files)
        meta = {**encoder.identity(), "dim": dim, "count": count, "reused": reused, "corpus": paths}
        write_json(new / SHARDS_META, meta)
    log.info("%d passages in %s: %d encoded, %d vectors reused", count, out, count - reused, reused)
    return Shards(out, meta)


def _earlier_shards(folder: Path, encoder: Encoder, explicit: bool) -> Shards | None:
    """Shards in `folder` whose vectors `encoder` would give again; None when there are none (or another model's,
    unless the caller named them: then that is an error)."""
    if not (folder / SHARDS_META).is_file():
        if explicit:
            raise RagtuneError(f"{folder}: no embedding shards to reuse (no {SHARDS_META})")
        return None
    shards = Shards.load(folder)
    identity = encoder.identity()
    same = all(shards.meta.get(k) == v for k, v in identity.items() if k != "model")
    if not same and explicit:
        raise RagtuneError(
            f"{folder}: shards of model {shards.meta.get('model')} with other weights, truncation or backend: their "
            "vectors are not this model's to reuse"
        )
    return shards if same and shards.files else None


def _count_reused(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(int(pq.read_table(f, columns=["reused"]).column("reused").to_numpy().sum()) for f in files)


def corpus_files(path: str | Path) -> list[Path]:
    """A corpus file, or a folder's `.jsonl`/`.parquet` files (one kind), sorted."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(f for f in path.iterdir() if f.suffix in (".jsonl", ".parquet"))
    if not files:
        raise RagtuneError(f"{path}: no .jsonl or .parquet files to read")
    return files


def index_through_shards(
    encoder: Encoder,
    corpus: str | Path,
    shards: str | Path,
    out: str | Path,
    text_column: str = "text",
    id_column: str = "id",
) -> Shards:
    """`ragtune index --shards`: encode `corpus` (a file or a folder of them) into shards on the Ray cluster (texts
    the shards already hold keep their vectors), then build the index in `out` from them. Returns the shards."""
    written = embed_shards(encoder, corpus_files(corpus), shards, text_column, id_column)
    index_from_shards(written.folder, out)
    return written


def _count_and_dim(files: list[Path]) -> tuple[int, int]:
    import pyarrow.parquet as pq

    count, dim = 0, 0
    for f in files:
        file = pq.ParquetFile(f)
        count += file.metadata.num_rows
        dim = file.schema_arrow.field("vector").type.list_size
    if not count:
        raise RagtuneError("the corpus files hold no rows")
    return count, dim


def _batches(shards: Shards, columns: list[str]):
    for f in shards.files:
        yield from _file_batches(f, columns)


def _file_batches(file: Path, columns: list[str]):
    """Record batches of one shard file; Arrow's memory pool hands what they used back to the system after the file
    (it keeps freed blocks for reuse otherwise: at 384 dimensions, some 250 MB held for nothing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=4096, columns=columns)
    pa.default_memory_pool().release_unused()


def _vectors(batch) -> np.ndarray:
    """A record batch's or a table's `vector` column as a float32 matrix."""
    column = batch.column("vector")
    if hasattr(column, "combine_chunks"):  # a table's column is chunked
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1).astype(np.float32, copy=False)


def index_from_shards(
    shards: str | Path, out: str | Path, ivf_pq_from: int = 1_000_000, code_bytes: int | None = None, seed: int = 0
) -> Path:
    """A `ragtune index` folder from embedding shards, read one batch at a time.

    Below `ivf_pq_from` passages the index is exact (FAISS flat: this process holds the float32 vectors, as
    `ragtune index` does). From there it is IVF-PQ: about 4*sqrt(N) cells, `code_bytes` per passage (default one
    per 2 dimensions: 8x smaller than float32), trained on a
    seeded sample (at least 40 points per cell and 10,000 for the codebooks), so this process holds the sample
    and the codes. The index has no BM25 side (its statistics need every text at once): dense search only.

    Args:
        shards: A folder from `embed_shards`.
        out: The index folder (new, or one ragtune made); searched like any `ragtune index` folder.
        ivf_pq_from: From this many passages, IVF-PQ instead of exact.
        code_bytes: IVF-PQ bytes per passage (must divide the dimension).
        seed: For the training sample and k-means.

    Returns:
        The index folder.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    from ragtune.faiss_search import faiss_stdout_silenced

    source = Shards.load(shards)
    n, dim = source.meta["count"], source.meta["dim"]
    out = claim_folder(out, "index", [source.folder])
    if n < ivf_pq_from:
        index, kind = faiss.IndexFlatIP(dim), "flat"
    else:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 40))  # as mining's IVF index: at least 40 points per cell
        m = code_bytes or (dim // 2 if dim % 2 == 0 else dim)
        if dim % m:
            raise RagtuneError(f"code_bytes must divide the dimension {dim}, got {m}")
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        queries = _train_ivf_pq(index, source, nlist, seed)
        index.nprobe = min(32, nlist)
        kind = f"ivf{nlist},pq{m}"
    with replace_folder(out, "index") as new:
        # Documents and text hashes (20 bytes each, what mining's same-text guard reads) go straight to disk.
        with (new / "docs.jsonl").open("w", encoding="utf-8") as docs, (new / SHA1_FILE).open("wb") as hashes:
            parts = _add_shards(index, source, new / "parts", docs, hashes, on_disk=kind != "flat")
        if kind != "flat":
            # The shards' lists merged into one memory-mapped file: this process never holds every code at once,
            # nor does a searcher (readers open it with IO_FLAG_ONDISK_SAME_DIR, so the folder may move).
            with faiss_stdout_silenced():
                merge_ondisk(index, [str(p) for p in parts], str(new / IVF_DATA))
            shutil.rmtree(new / "parts")
        faiss.write_index(index, str(new / "index.faiss"))
        meta = {k: source.meta[k] for k in ("model", "model_fingerprint", "max_seq_length", "backend", "dim")}
        meta.update(count=n, similarity="cosine", faiss=kind, source=str(shards))
        if kind != "flat":
            meta["lists"] = IVF_DATA
            meta["recall@10_vs_exact"] = round(_recall(index, source, queries), 4)
        write_json(new / INDEX_META, meta)
    return out


def _add_shards(index, source: Shards, parts_folder: Path, docs, hashes, on_disk: bool) -> list[Path]:
    """Add every shard's vectors to `index`, or (on_disk) each shard's to its own copy of the trained, empty index,
    written to `parts_folder` and dropped before the next: the parts merge_ondisk then joins. Returns the parts."""
    import faiss

    parts, start = [], 0
    if on_disk:
        parts_folder.mkdir()
    for number, file in enumerate(source.files):
        part = faiss.clone_index(index) if on_disk else index
        for batch in _file_batches(file, ["id", "text", "sha1", "vector"]):
            vectors = _vectors(batch)
            if on_disk:  # global positions, so the merged lists keep the shards' order
                part.add_with_ids(vectors, np.arange(start, start + len(vectors), dtype=np.int64))
            else:
                part.add(vectors)
            start += len(vectors)
            for i, t in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), strict=True):
                docs.write(json.dumps({"id": i, "text": t, "metadata": {}}, ensure_ascii=False) + "\n")
            hashes.write(b"".join(bytes.fromhex(h) for h in batch.column("sha1").to_pylist()))
        if on_disk:
            parts.append(parts_folder / f"{number:05d}.faiss")
            faiss.write_index(part, str(parts[-1]))
            del part
    return parts


_RECALL_QUERIES = 200  # sampled passages used as queries to measure a compressed index against exact search
_PQ_TRAINING = 256 * 256  # what FAISS's product-quantizer training subsamples to (256 points per centroid)


def _train_ivf_pq(index, source: Shards, nlist: int, seed: int) -> np.ndarray:
    """Train `index` in two steps, so this process never holds more than the sample: the coarse cells by k-means on
    a seeded sample (40 points a cell), exactly as `index.train` would; then the product quantizer on the residuals
    of 65,536 of those points only (`index.train` would first compute residuals for the whole sample, doubling it,
    and subsample after). Returns 200 sampled vectors to measure recall with."""
    import faiss

    sample = _sample(source, max(40 * nlist, 10_000), seed)
    faiss.Clustering(index.d, nlist, index.cp).train(sample, index.quantizer)
    queries = sample[:_RECALL_QUERIES].copy()
    subset = sample[:_PQ_TRAINING].copy()
    del sample
    index.train(subset)  # the quantizer holds its nlist centroids: FAISS trains the product quantizer only
    return queries


def _recall(index, shards: Shards, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that `index` returns, the exact top-k found by streaming over the shards."""
    from ragtune.faiss_search import search_chunked

    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    start = 0
    for batch in _batches(shards, ["vector"]):
        scores = np.concatenate([best_scores, queries @ _vectors(batch).T], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, start + batch.num_rows), scores[:, k:].shape)], 1
        )
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
        start += batch.num_rows
    found = search_chunked(index, queries, k)[1]
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(best_ids.tolist(), found.tolist(), strict=True)]))


def _sample(shards: Shards, size: int, seed: int) -> np.ndarray:
    """`size` vectors at seeded random positions, gathered in one pass over the shards into one preallocated array
    (gathering pieces and concatenating them would hold the sample twice)."""
    n = shards.meta["count"]
    wanted = np.sort(np.random.default_rng(seed).choice(n, min(size, n), replace=False))
    sample = np.empty((len(wanted), shards.meta["dim"]), dtype=np.float32)
    start, filled = 0, 0
    for batch in _batches(shards, ["vector"]):
        stop = start + batch.num_rows
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            sample[filled : filled + hi - lo] = _vectors(batch)[wanted[lo:hi] - start]
            filled += hi - lo
        start = stop
    return sample


class _MineRows:
    """Actor: the model and a `HardMiner` over a copy of the index; each block of (query, positive id) rows is
    encoded here and gets its hard negatives from the miner."""

    def __init__(self, model: WorkerModel, blob, ids, sha1, siblings, settings: dict, columns: tuple, excluded, where):
        import faiss
        import ray

        from ragtune.embeddings import model_prompts
        from ragtune.shard_mining import HardMiner

        self.model = model.load()
        self.prompts = model_prompts(model.location)
        index = faiss.deserialize_index(ray.get(blob))  # one copy in the object store, read by every actor
        # The id arrays, hashes, sibling positives and held-out mask are in the object store once per node, and
        # numpy arrays are read from it zero-copy; `where` is None unless an IVF-PQ index scores positives.
        self.miner = HardMiner(
            index, ray.get(ids), ray.get(sha1), ray.get(siblings), ray.get(excluded), ray.get(where), settings
        )
        self.settings, self.columns = settings, columns

    def __call__(self, rows: dict):
        _complete(rows, self.columns)
        queries = [str(q) for q in rows[self.columns[0]]]
        positives = [str(p) for p in rows[self.columns[1]]]
        unknown = [
            (p, path) for p, path in zip(positives, rows["path"], strict=True) if self.miner.ids.position(p) is None
        ]
        if unknown:
            raise RagtuneError(f"{unknown[0][1]}: positive id {unknown[0][0]!r} is not in the index")
        vectors = _encode_sorted(self.model, with_prompt(queries, self.prompts, QUERY), self.settings["batch_size"])
        return self.miner.negatives(queries, positives, vectors, [str(p) for p in rows["path"]])


def mine_from_shards(
    index: str | Path,
    pairs: list[str | Path],
    out: str | Path,
    query_column: str = "query",
    positive_column: str = "positive_id",
    num_negatives: int = 1,
    range_min: int = 0,
    range_max: int = 30,
    nprobe: int = 32,
    strategy: str = "hard",
    held_out: list[str | Path] = (),
    training_data: str | Path | None = None,
    margin: float | None = None,
    max_score: float | None = None,
    sampling: str = "top",
    seed: int = 42,
) -> Path:
    """Hard negatives for every (query, positive id) row of `pairs` (JSONL/Parquet), searched in `index` (from
    `index_from_shards`) by actors on the active Ray cluster; Parquet files of (query, positive_id, negative_ids)
    in `out`, with per-row counts of candidates the margin and score cap removed and of random negatives. As
    `ragtune mine --strategy hard`: a row's candidates are its query's ranking without every positive of the query
    (in any of the files), passages with a positive's exact text and held-out passages, up to `range_max`; past
    `range_min` those above `max_score` or within `margin` of the positive's score are dropped, and the first
    `num_negatives` of the rest are its negatives (`sampling="random"`: a random choice of them), topped up with
    random passages when too few are left. Not done here: groups and the near-duplicate test (they need the
    prepared dataset or every vector in one place, as `ragtune mine` has them).

    `strategy="least-similar"`: the classic walk instead (`ragtune.shard_mining`): each row, in file order, gets
    the passages least similar to its positive that no earlier row took and that are neither a positive of its query
    nor a copy of one; this process holds the rows and the vectors of an exact index (a compressed one is refused).

    Args:
        index: A folder from `index_from_shards` (it keeps the text hashes the same-text guard reads).
        pairs: JSONL or Parquet files of `query_column` and `positive_column` (an id in the index).
        out: A new folder (or one ragtune made) for the Parquet results.
        num_negatives, range_min, range_max, margin, max_score, sampling: As `ragtune mine --strategy hard`; the
            positive's score is from the index's stored vector (an IVF-PQ index: its decoded code, as the
            candidates' scores are).
        nprobe: Cells searched per query in an IVF-PQ index.
        strategy: "hard", or "least-similar" (an exact index; only num_negatives and held_out apply).
        held_out: Files of (query, positive id) rows held out for evaluation (the same columns as `pairs`): their
            positives are never anyone's negatives, so training never pushes a test answer away.
        training_data: Also write the rows, with their passages' texts, as a `ragtune train --data` folder here
            (`ragtune.shard_mining.training_data_from_shards`).
        seed: Of the random choices; each row draws from its own generator (seeded by it and `seed`), so results
            do not depend on how the rows are spread over actors.

    Returns:
        The output folder.
    """
    from ragtune.shard_mining import held_out_mask, training_data_from_shards

    settings = {"num_negatives": num_negatives, "range_min": range_min, "range_max": range_max}
    settings.update(margin=margin, max_score=max_score, sampling=sampling)
    check_mining(index, [*pairs, *held_out], strategy, **settings)
    engine = _engine()
    index, out = Path(index), Path(out)
    paths = [str(Path(p).resolve()) for p in pairs]
    held = [str(Path(p).resolve()) for p in held_out]
    claim_folder(out, "mined shards", paths + held + [str(index)])
    excluded = held_out_mask(index, held, query_column, positive_column)
    if strategy == "least-similar":
        _least_similar_to_parquet(index, paths, out, (query_column, positive_column), num_negatives, excluded)
    else:
        # `extra`: room past range_max for the positives and copies of them the ranking drops (more where a query
        # has more positives)
        settings.update(seed=seed, extra=8, nprobe=nprobe, batch_size=64)
        _hard_to_parquet(index, paths, out, (query_column, positive_column), settings, excluded, engine)
    if training_data is not None:
        training_data_from_shards(out, index, training_data)
    return out


def check_mining(index: str | Path, files: list[str | Path], strategy: str, **settings) -> None:
    """What `mine_from_shards` would refuse, said before a cluster starts: the index folder, the pairs files, the
    strategy and the mining settings (as a run config's `mining:` section checks them), each as one line."""
    if strategy not in ("hard", "least-similar"):
        raise RagtuneError(f"unknown strategy {strategy!r} for shards: hard or least-similar")
    try:
        MiningConfig(**settings)
    except ValidationError as err:
        raise RagtuneError(f"mining settings: {format_validation_error(err)}") from None
    if not (Path(index) / INDEX_META).is_file():
        raise RagtuneError(f"{index}: not a ragtune index (no {INDEX_META}); build one with `ragtune index --shards`")
    for f in files:
        if not Path(f).is_file():
            raise RagtuneError(f"{f}: no such file")


def _hard_to_parquet(
    index: Path, paths: list[str], out: Path, columns: tuple, settings: dict, excluded, engine
) -> None:
    import faiss
    import ray

    from ragtune.faiss_search import read_index
    from ragtune.shard_mining import PassageIds, list_positions

    # An on-disk index serializes as a reference to its lists file: actors map that file (on storage every node
    # sees), they do not get copies of it.
    searcher = read_index(index / "index.faiss")
    blob = ray.put(faiss.serialize_index(searcher))
    where = ray.put(list_positions(searcher) if settings["margin"] is not None else None)
    del searcher
    actors = engine.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    table = PassageIds.read(index)
    siblings = _query_positives(paths, columns, table, partitions=2 * actors)
    settings = {**settings, "extra": settings["extra"] + max(map(len, siblings.values()), default=0)}
    ids, siblings = ray.put(table), ray.put(siblings)
    del table  # the object store holds it now
    encoder = encoder_for(json.loads((index / INDEX_META).read_text()))  # the model the index was built with
    model = WorkerModel.of(encoder)
    sha1 = ray.put(np.fromfile(index / SHA1_FILE, dtype="S20"))
    with replace_folder(out, "mined shards") as new, _cluster_errors():
        _read(paths, list(columns)).map_batches(
            _MineRows,
            fn_constructor_args=(model, blob, ids, sha1, siblings, settings, columns, ray.put(excluded), where),
            batch_size=_ROWS_PER_BLOCK,
            batch_format="numpy",
            compute=actor_pool(actors),
            num_cpus=1,
        ).write_parquet(str(new.resolve()), ray_remote_args={"num_cpus": 0})


def _query_positives(paths: list[str], columns: tuple, ids, partitions: int) -> dict[str, tuple[int, ...]]:
    """Query -> the index positions of its positives, for the queries that have more than one (rows of the same
    query text, in any file): grouped on the cluster, so this process holds only those queries."""
    # Partitions as the cluster has CPUs: Ray's default (200) took 90 s for 3,300 rows on 2 CPUs, 2 took 5 s.
    grouped = _read(paths, list(columns)).groupby(columns[0], num_partitions=partitions)
    with _cluster_errors():
        found = grouped.map_groups(
            _several_positives, fn_kwargs={"columns": columns}, batch_format="pyarrow"
        ).take_all()
    siblings = {}
    for row in found:
        positions = tuple(p for p in (ids.position(i) for i in row["positive_ids"]) if p is not None)
        siblings[row["query"]] = positions  # unknown ids are reported by the mining actor that meets their row
    return siblings


def _several_positives(group, columns: tuple):
    import pyarrow as pa

    query_column, positive_column = columns
    positives = sorted({str(p) for p in group.column(positive_column).to_pylist() if p is not None})
    several = len(positives) > 1
    return pa.table(
        {
            "query": pa.array([str(group.column(query_column)[0].as_py())] if several else [], type=pa.string()),
            "positive_ids": pa.array([positives] if several else [], type=pa.list_(pa.string())),
        }
    )


def _least_similar_to_parquet(index: Path, paths: list[str], out: Path, columns: tuple, n: int, excluded) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ragtune.shard_mining import least_similar_from_shards, pair_rows

    rows = pair_rows(paths, *columns)
    negatives, stats = least_similar_from_shards(index, rows, n, excluded)
    log.info("least-similar walk over %d rows: %s", len(rows), stats.get("index"))
    table = {
        "query": [q for q, _, _ in rows],
        "positive_id": [p for _, p, _ in rows],
        "negative_ids": pa.array(negatives, type=pa.list_(pa.string())),
    }
    with replace_folder(out, "mined shards") as new:
        pq.write_table(pa.table(table), new / "part-00000.parquet")
