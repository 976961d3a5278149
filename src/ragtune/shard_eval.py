"""Full-corpus evaluation of indexes too large to load: a BEIR folder's queries searched in `ragtune index` folders
(those built from embedding shards included), with this process never holding the corpus or its vectors.

The queries and their judgements are small and are read here; the passages are not: `docs.jsonl` is streamed twice
(once to find the judged passages, once to name the passages the search returned), and the index is read as FAISS
reads it (an IVF-PQ index from shards maps its lists file). Inside `ray_engine`, the queries are encoded by the
cluster's actors and a large search (8,192 queries and more) runs as Ray tasks over the shared index, each task
whole chunks of queries, so the results are the ones one process gets. Metrics, intervals and paired tests are
the same code as `ragtune evaluate` and `ragtune compare`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ragtune.comparison import ComparisonResult, comparison
from ragtune.data import read_jsonl, read_qrels
from ragtune.embeddings import QUERY
from ragtune.errors import RagtuneError
from ragtune.evaluate import DEPTH, EvalResult, score_run
from ragtune.faiss_search import read_index, search_chunked
from ragtune.index import INDEX_META, check_query_model, doc_ids, encoder_for

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, float]]


def read_beir_queries(folder: str | Path, split: str) -> tuple[dict[str, str], Qrels]:
    """A BEIR folder's `queries.jsonl` and `qrels/<split>.tsv`, without its corpus: the judged queries (those with
    at least one relevant passage) and their judgements."""
    folder = Path(folder)
    queries_file, qrels_file = folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"
    if not queries_file.is_file():
        raise RagtuneError(f"{folder}: not a BEIR folder, queries.jsonl is missing")
    if not qrels_file.is_file():
        have = ", ".join(sorted(f.stem for f in (folder / "qrels").glob("*.tsv"))) or "none"
        raise RagtuneError(f"{folder}: no split {split!r} (qrels/{split}.tsv); splits: {have}")
    texts: dict[str, str] = {}
    for where, record in read_jsonl(queries_file):
        text = record.get("text")
        if "_id" not in record:
            raise RagtuneError(f"{where}: field '_id' is missing")
        if not isinstance(text, str) or not text.strip():
            raise RagtuneError(f"{where}: field 'text' is missing or empty")
        texts[str(record["_id"])] = text.strip()
    qrels: Qrels = {}
    for where, qid, pid, grade in read_qrels(qrels_file):
        if qid not in texts:
            raise RagtuneError(f"{where}: field 'query-id' {qid!r} is not in {queries_file.name}")
        if grade > 0:
            qrels.setdefault(qid, {})[pid] = grade
    if not qrels:
        raise RagtuneError(f"{qrels_file}: no relevant judgements (score > 0)")
    return {q: texts[q] for q in qrels}, qrels


def evaluate_from_shards(
    indexes: dict[str, str | Path], queries: str | Path, split: str, nprobe: int | None = None, batch_size: int = 32
) -> EvalResult:
    """Retrieval metrics of each index on a BEIR folder's `split`, each query searched over the whole index.

    Args:
        indexes: {system name: a `ragtune index` folder}, e.g. {"base": ..., "tuned": ...}, each built from the
            same passages (its own model's vectors of them).
        queries: A BEIR folder: `queries.jsonl` and `qrels/<split>.tsv` are read, `corpus.jsonl` never is (the
            judged passage ids must be in the indexes).
        split: The qrels file to evaluate, e.g. "test".
        nprobe: An IVF index's cells searched per query (default: as built).
        batch_size: Queries per encoding batch.

    Returns:
        Metrics, per-query values and the top 10 per system, as `ragtune.evaluate_models` gives them.
    """
    texts, qrels = read_beir_queries(queries, split)
    qids = list(qrels)
    wanted = {p for rel in qrels.values() for p in rel}
    result = EvalResult(queries=len(qids))
    for name, folder in indexes.items():
        folder = Path(folder)
        meta = _meta(folder)
        if result.corpus and meta["count"] != result.corpus:
            raise RagtuneError(
                f"{folder}: {meta['count']} passages, but the indexes before it hold {result.corpus}: the systems "
                "must search the same corpus to be compared"
            )
        result.corpus = meta["count"]
        missing = wanted - set(doc_ids(folder, wanted=wanted).values())
        if missing:
            raise RagtuneError(
                f"{queries}: qrels/{split}.tsv judges {len(missing)} passage(s) not in {folder}, e.g. "
                f"{sorted(missing)[0]!r}"
            )
        encoder = encoder_for(meta, show_progress=True)
        encoder.batch_size = batch_size
        check_query_model(folder, meta, encoder)
        vectors = encoder.encode([texts[q] for q in qids], desc="encoding queries", kind=QUERY)
        index = read_index(folder / "index.faiss")
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = nprobe
        scores, positions = search_chunked(index, vectors, DEPTH)
        names = doc_ids(folder, positions={int(p) for p in np.unique(positions) if p >= 0})
        run = {
            q: {names[int(p)]: float(s) for s, p in zip(scores[n], positions[n], strict=True) if p >= 0}
            for n, q in enumerate(qids)
        }
        score_run(result, name, run, qrels)
        log.info("%s: ndcg@10 %.4f over %d passages", name, result.metrics[name]["ndcg@10"], result.corpus)
    return result


def _meta(folder: Path) -> dict:
    if not (folder / INDEX_META).is_file():
        raise RagtuneError(f"{folder}: not a ragtune index (no {INDEX_META}); build one with `ragtune index`")
    return json.loads((folder / INDEX_META).read_text())


def compare_from_shards(
    indexes: dict[str, str | Path], queries: str | Path, split: str, nprobe: int | None = None, batch_size: int = 32
) -> ComparisonResult:
    """`evaluate_from_shards`, each index compared with the first (95% intervals, paired tests, Holm-adjusted),
    as `ragtune compare` reports models: a `ComparisonResult`."""
    return comparison(evaluate_from_shards(indexes, queries, split, nprobe, batch_size), list(indexes))
