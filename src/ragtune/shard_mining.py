"""Mining over an index built from embedding shards: what `mine_from_shards`' actors do, and the classic walk.

`HardMiner`: hard negatives for blocks of encoded rows, each step as `ragtune mine --strategy hard` takes it (the
ranking without positives, copies of them and held-out passages; the rank window, score cap and margin; random
passages for rows left short, from a generator seeded by the row so that no result depends on the actor that mined it).

Least-similar negatives: the classic walk of `ragtune mine --strategy least-similar`, run on the index's vectors. Each
row's negative is the passage least similar to its positive that no earlier row took (a global constraint: one walk,
in this process, over every row in order), so this process holds the rows (query, positive id) and the index's
float32 vectors. That is why it needs an exact index (below `index_from_shards`'s `ivf_pq_from`); an IVF-PQ index keeps
only codes, and the walk's last resort is an exact search over the passages still free. The first search (every row's
least similar candidates) runs as Ray tasks over the index from 8,192 rows on, as in one process; the walk itself is
`ragtune.mining`'s, so the picks are the ones `ragtune mine` makes from the same vectors.

`PassageIds`: an index's passage ids as compact arrays, what the hard-mining actors share (`ragtune.shards`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragtune.config import MiningConfig
from ragtune.data import Row
from ragtune.errors import RagtuneError

log = logging.getLogger(__name__)
COUNTS = ("within_margin", "above_max_score", "random_negatives")  # per-row columns of hard mining's files


class PassageIds:
    """An index folder's passage ids as three numpy arrays: the ids as fixed-width UTF-8 bytes in vector order, the
    same sorted, and the sorted ones' positions. Written by hand because a Python list and dict of 50M ids take
    gigabytes per mining actor; these arrays take a few bytes per passage and, put once in Ray's object store, are
    shared by the actors of a node without copies (numpy arrays are read from it zero-copy)."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    @classmethod
    def read(cls, folder: Path) -> PassageIds:
        """From `docs.jsonl` in two streamed passes (the width, then the ids): no list of strings is ever held."""
        count, width = 0, 1
        with (folder / "docs.jsonl").open(encoding="utf-8") as f:
            for line in f:
                count += 1
                width = max(width, len(json.loads(line)["id"].encode()))
        ids = np.empty(count, dtype=f"S{width}")
        with (folder / "docs.jsonl").open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                ids[i] = json.loads(line)["id"].encode()
        return cls(ids)

    def position(self, passage_id: str) -> int | None:
        key = passage_id.encode()
        i = int(np.searchsorted(self.sorted, key))
        return int(self.order[i]) if i < len(self.sorted) and self.sorted[i] == key else None

    def __getitem__(self, position: int) -> str:
        return self.ids[position].decode()


class _ShardGuards:
    """What `ragtune.mining`'s walk asks of its guards, from an index folder: a query's positives (every row of the
    same query text) and the passages whose text is exactly a positive's (by the sha1 the index keeps)."""

    def __init__(self, ids: list[str], sha1: np.ndarray, rows: list[Row], held_out: np.ndarray | None = None):
        self.held_out = held_out if held_out is not None and held_out.any() else None
        self.position = {pid: i for i, pid in enumerate(ids)}
        _, inverse = np.unique(sha1, return_inverse=True)
        copies: dict[int, list[int]] = {}
        for i in np.flatnonzero(np.bincount(inverse)[inverse] > 1):  # passages whose text another one repeats
            copies.setdefault(int(inverse[i]), []).append(int(i))
        self.positives: dict[str, set[int]] = {}
        for r in rows:
            self.positives.setdefault(r.query_id, set()).add(self.position[r.positive_id])
        self.same_text = {
            q: {j for i in pos for j in copies.get(int(inverse[i]), ())} - pos for q, pos in self.positives.items()
        }

    def forbidden(self, qid: str) -> set[int]:
        return self.positives[qid] | self.same_text[qid]

    def blocked(self, qid: str) -> np.ndarray | None:
        return self.held_out  # every row is a training row: none may take a held-out passage


def list_positions(index) -> np.ndarray | None:
    """For an IVF index, each passage's (inverted list, offset in it) as int32 pairs in position order: what scoring a
    positive from its stored code needs, 8 bytes a passage, built once and shared by the mining actors (FAISS's own
    direct map would be built by every actor, 8+ bytes a passage each). None for a flat index."""
    import faiss

    if not hasattr(index, "nprobe"):
        return None
    ivf = faiss.extract_index_ivf(index)
    where = np.zeros((ivf.ntotal, 2), dtype=np.int32)
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        if size:
            pointer = ivf.invlists.get_ids(number)
            ids = faiss.rev_swig_ptr(pointer, size).copy()
            ivf.invlists.release_ids(number, pointer)
            where[ids, 0], where[ids, 1] = number, np.arange(size)
    return where


def stored_vectors(index, positions: list[int], where: np.ndarray | None) -> np.ndarray:
    """The vectors `index` scores for these positions: the exact ones of a flat index, the decoded codes of an
    IVF-PQ one. A positive scored this way is on the same scale as the candidates the search returns, which is what
    mining's margin compares (an exact score against PQ-approximate ones would shift the cut)."""
    import faiss

    if where is None:
        return index.reconstruct_batch(np.asarray(positions, dtype=np.int64))
    ivf = faiss.extract_index_ivf(index)
    out = np.empty((len(positions), ivf.d), dtype=np.float32)
    for row, p in zip(out, positions, strict=True):
        ivf.reconstruct_from_offset(int(where[p, 0]), int(where[p, 1]), faiss.swig_ptr(row))
    return out


def row_rng(query: str, positive_id: str, seed: int) -> np.random.Generator:
    """A row's own random generator: its random picks do not depend on which actor or block mines it."""
    digest = hashlib.sha1(f"{query}\t{positive_id}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def random_fill(rng: np.random.Generator, count: int, n: int, refused: Callable[[int], bool], where: str) -> list[int]:
    """`count` distinct random positions below `n` that `refused` lets through: a row's negatives when its window
    holds too few (as `ragtune mine` does). Rejection sampling: on a corpus of millions nearly every draw is free."""
    picks: list[int] = []
    for _ in range(1000 + 100 * count):
        c = int(rng.integers(n))
        if c not in picks and not refused(c):
            picks.append(c)
            if len(picks) == count:
                return picks
    raise RagtuneError(
        f"{where}: too few passages are neither a positive of its query, a copy of one nor held out to give it "
        f"{count} random negatives; the corpus is too small"
    )


class HardMiner:
    """Hard negatives for blocks of encoded (query, positive id) rows, from an index and what the guards need:
    `mine_from_shards`' actors each hold one (and the model that encodes the queries). The same steps as
    `ragtune mine --strategy hard`, per row: the query's ranking minus every positive of the query, passages with a
    positive's exact text and held-out passages, up to `range_max`; then `ragtune.mining.screen_window` (the rank
    window, the score cap, the margin); the top (or, `sampling: random`, a random choice) of what is left, topped up
    with random passages when too few are.

    Args:
        index: The FAISS index (flat or IVF-PQ), searched with `settings["nprobe"]`.
        ids: The index's passage ids.
        sha1: 20-byte text hashes in index order (passages with a positive's text are never its negatives).
        siblings: Query text -> positions of all its positives, for the queries with more than one.
        excluded: Boolean mask of held-out passages, or None.
        where: `list_positions(index)` for an IVF-PQ index when a margin needs the positives' scores, else None.
        settings: num_negatives, range_min, range_max, margin, max_score, sampling, seed, nprobe and `extra`
            (how far past range_max to search, for the positives and their copies the ranking drops).
    """

    def __init__(self, index, ids: PassageIds, sha1, siblings: dict, excluded, where, settings: dict):
        self.index, self.ids, self.sha1, self.siblings = index, ids, sha1, siblings
        self.excluded, self.where, self.settings = excluded, where, settings
        if hasattr(index, "nprobe"):
            index.nprobe = settings["nprobe"]
        names = ("num_negatives", "range_min", "range_max", "margin", "max_score")
        self.config = MiningConfig(**{k: settings[k] for k in names})

    def negatives(self, queries: list[str], positives: list[str], vectors: np.ndarray, paths: list[str]):
        """A pyarrow table: query, positive_id, negative_ids, and per row the candidates the margin and the score
        cap removed and the number of random negatives. `paths` name each row's file in errors."""
        import pyarrow as pa

        from ragtune.faiss_search import search_chunked
        from ragtune.mining import screen_window

        s, n = self.settings, self.settings["num_negatives"]
        own = [self.ids.position(p) for p in positives]
        scores, found = search_chunked(self.index, vectors, s["range_max"] + s["extra"], self.excluded)
        positive_scores = [None] * len(own)
        if s["margin"] is not None:
            positive_scores = np.einsum("ij,ij->i", vectors, stored_vectors(self.index, own, self.where)).tolist()
        negatives, counts = [], {name: [] for name in COUNTS}
        for i, (query, positive, mine) in enumerate(zip(queries, positives, own, strict=True)):
            answers = set(self.siblings.get(query, (mine,)))
            texts = {self.sha1[a] for a in answers}
            pool = [
                (score, c)
                for score, c in zip(scores[i].tolist(), found[i].tolist(), strict=True)
                if c >= 0 and c not in answers and self.sha1[c] not in texts
            ][: s["range_max"]]
            removed: Counter = Counter()
            window = screen_window(pool, positive_scores[i], None, None, self.config, removed)
            rng = row_rng(query, positive, s["seed"])
            if s["sampling"] == "random":
                rng.shuffle(window)
            picks = window[:n]
            short = n - len(picks)
            if short:
                taken = set(picks)

                def refused(c: int, answers=answers, texts=texts, taken=taken) -> bool:
                    held = self.excluded is not None and self.excluded[c]
                    return c in answers or c in taken or self.sha1[c] in texts or bool(held)

                where = f"{paths[i]}: the row of positive {positive!r}"
                picks += random_fill(rng, short, len(self.sha1), refused, where)
            negatives.append([self.ids[c] for c in picks])
            counts["within_margin"].append(removed["within_margin_of_positive"])
            counts["above_max_score"].append(removed["above_max_score"])
            counts["random_negatives"].append(short)
        return pa.table(
            {
                "query": queries,
                "positive_id": positives,
                "negative_ids": pa.array(negatives, type=pa.list_(pa.string())),
                **{name: pa.array(v, type=pa.int16()) for name, v in counts.items()},
            }
        )


def pair_rows(paths: list[str], query_column: str, positive_column: str) -> list[tuple[str, str, str]]:
    """(query, positive id, where) per row of JSONL or Parquet files, in file and row order (the walk's order)."""
    import pyarrow.parquet as pq

    from ragtune.data import read_jsonl

    rows = []
    for path in paths:
        if not Path(path).is_file():
            raise RagtuneError(f"{path}: no such file")
        if path.endswith(".parquet"):
            names = pq.read_schema(path).names
            missing = [c for c in (query_column, positive_column) if c not in names]
            if missing:
                raise RagtuneError(f"{path}: no column {missing[0]!r} (columns: {', '.join(sorted(names))})")
            table = pq.read_table(path, columns=[query_column, positive_column]).to_pylist()
            records = ((f"{path}: row {n}", r) for n, r in enumerate(table, start=1))
        else:
            records = read_jsonl(Path(path))
        for where, record in records:
            query, positive = record.get(query_column), record.get(positive_column)
            if query is None or positive is None:
                column = query_column if query is None else positive_column
                raise RagtuneError(f"{where}: field {column!r} is missing")
            rows.append((str(query), str(positive), where))
    return rows


def held_out_mask(index: Path, paths: list[str], query_column: str, positive_column: str) -> np.ndarray | None:
    """The passages of an index that are positives of the rows of `paths` (e.g. the test pairs), as a boolean mask
    in index order; None without files. `docs.jsonl` is streamed: only the held-out ids are kept."""
    from ragtune.index import doc_ids

    if not paths:
        return None
    rows = pair_rows(paths, query_column, positive_column)
    wanted = {p for _, p, _ in rows}
    found = doc_ids(index, wanted=wanted)
    missing = wanted - set(found.values())
    if missing:
        where = next(w for _, p, w in rows if p in missing)
        raise RagtuneError(f"{where}: held-out positive id {sorted(missing)[0]!r} is not in the index")
    count = json.loads((index / "index.json").read_text())["count"]
    mask = np.zeros(count, dtype=bool)
    mask[list(found)] = True
    return mask


def least_similar_from_shards(
    index: Path, rows: list[tuple[str, str, str]], num_negatives: int, held_out: np.ndarray | None = None
) -> tuple[list[list[str]], dict]:
    """For (query, positive id, where) rows, in order: `num_negatives` least-similar negative ids each, never a
    passage `held_out` marks, and the walk's statistics. `where` names the row's file for errors."""
    import faiss

    from ragtune.faiss_search import read_index
    from ragtune.index import SHA1_FILE
    from ragtune.mining import least_similar_negatives

    meta = json.loads((index / "index.json").read_text())
    if meta.get("faiss", "flat") != "flat":
        raise RagtuneError(
            f"{index} is a compressed index ({meta['faiss']}): least-similar mining walks the exact vectors; build "
            "an exact one (index_from_shards with ivf_pq_from above the corpus size) or use the hard strategy"
        )
    with (index / "docs.jsonl").open(encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line in f]
    known = set(ids)
    for _, positive, where in rows:
        if positive not in known:
            raise RagtuneError(f"{where}: positive id {positive!r} is not in the index")
    flat = read_index(index / "index.faiss")
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d).copy()
    walk_rows = [Row(query, positive, 1.0) for query, positive, _ in rows]
    guards = _ShardGuards(ids, np.fromfile(index / SHA1_FILE, dtype="S20"), walk_rows, held_out)
    stats: dict = {"strategy": "least-similar", "rows": len(rows), "corpus": len(ids)}
    least_similar_negatives(walk_rows, guards, vectors, MiningConfig(num_negatives=num_negatives), stats)
    return [r.negative_ids for r in walk_rows], stats


def mined_counts(mined: Path) -> dict[str, int]:
    """What `mine_from_shards` did, summed from its Parquet files' count columns alone (never the rows): rows, the
    candidates the margin and the score cap removed, and the rows topped up with random passages."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    totals = dict.fromkeys(("rows", *COUNTS, "rows_with_random_fallback"), 0)
    for f in sorted(mined.glob("*.parquet")):
        names = pq.read_schema(f).names
        table = pq.read_table(f, columns=[c for c in COUNTS if c in names])
        totals["rows"] += pq.read_metadata(f).num_rows
        for column in table.column_names:
            totals[column] += int(pc.sum(table.column(column)).as_py() or 0)
        if "random_negatives" in names:
            totals["rows_with_random_fallback"] += int(
                pc.sum(pc.greater(table.column("random_negatives"), 0)).as_py() or 0
            )
    return totals


@dataclass
class ValidationPool:
    """What training validates on when the corpus is out of reach: some held-out queries, their positives, and the
    passages the base model ranks highest for them (the ones a tuned model must learn to rank below the positives).
    Bounded by queries x depth, so each evaluation during training encodes thousands of passages, not millions."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    passages: list[str]  # ids: the positives and the candidates


def validation_pool(
    index: str | Path, pairs: str | Path, queries: int, depth: int, seed: int, positive_column: str = "positive_id"
) -> ValidationPool | None:
    """A seeded sample of `queries` queries of the (query, positive id) file `pairs`, and for each its positives and
    the top `depth` passages of `index` (searched with the model it was built with). None when there are none."""
    from ragtune.data import text_id

    qrels: dict[str, dict[str, float]] = {}
    texts: dict[str, str] = {}
    for query, positive, _ in pair_rows([str(pairs)], "query", positive_column):
        qid = text_id("q", query)
        texts[qid] = query
        qrels.setdefault(qid, {})[positive] = 1.0
    return query_pool(index, texts, qrels, queries, depth, seed)


def query_pool(
    index: str | Path, texts: dict[str, str], qrels: dict[str, dict[str, float]], queries: int, depth: int, seed: int
) -> ValidationPool | None:
    """A seeded sample of `queries` of the judged queries (`qrels`, graded), each with its relevant passages and the
    top `depth` passages of `index` (searched with the model it was built with). None when there are none."""
    from ragtune.embeddings import QUERY
    from ragtune.faiss_search import read_index, search_chunked
    from ragtune.index import INDEX_META, doc_ids, encoder_for

    index = Path(index)
    if not queries or not qrels:
        return None
    rng = np.random.default_rng(seed)
    qids = sorted(qrels)
    qids = [qids[i] for i in sorted(rng.choice(len(qids), min(queries, len(qids)), replace=False))]
    encoder = encoder_for(json.loads((index / INDEX_META).read_text()))
    vectors = encoder.encode([texts[q] for q in qids], desc="encoding validation queries", kind=QUERY)
    _, found = search_chunked(read_index(index / "index.faiss"), vectors, depth)
    names = doc_ids(index, positions={int(p) for p in np.unique(found) if p >= 0})
    passages = {p for q in qids for p in qrels[q]} | set(names.values())
    return ValidationPool({q: texts[q] for q in qids}, {q: qrels[q] for q in qids}, sorted(passages))


def training_data_from_shards(
    mined: str | Path, index: str | Path, out: str | Path, validation: ValidationPool | None = None
) -> Path:
    """A `ragtune train --data` folder from the rows `mine_from_shards` wrote to `mined` (query, positive id,
    negative ids): every row in the train split, with the texts of its positive and negatives read from `index`'s
    `docs.jsonl` (streamed, keeping only those passages). With a `validation` pool, its queries are the validation
    split and training keeps the checkpoint that ranks them best among the pool's passages (`validation_passages` in
    the folder's metadata: validation searches those, not the training passages); without, it keeps its last one.
    Either way the judge is `evaluate_from_shards` over the whole corpus, after indexing the tuned model.

    Returns:
        The folder.
    """
    import pyarrow.parquet as pq

    from ragtune.data import LoadStats, PairData, text_id
    from ragtune.index import documents_where
    from ragtune.outputs import claim_folder, replace_folder
    from ragtune.splits import save_splits

    mined, index, out = Path(mined), Path(index), Path(out)
    files = sorted(mined.glob("*.parquet"))
    if not files:
        raise RagtuneError(f"{mined}: no mined rows (.parquet files from mine_from_shards)")
    claim_folder(out, "data", [mined, index])
    records = [r for f in files for r in pq.read_table(f, columns=["query", "positive_id", "negative_ids"]).to_pylist()]
    wanted = {r["positive_id"] for r in records} | {n for r in records for n in r["negative_ids"]}
    wanted |= set(validation.passages) if validation else set()
    texts = {doc["id"]: doc["text"] for doc in documents_where(index, wanted=wanted).values()}
    missing = wanted - set(texts)
    if missing:
        raise RagtuneError(f"{mined}: passage {sorted(missing)[0]!r} is not in {index} (mined over another index?)")
    queries, qrels, rows = {}, {}, []
    for r in records:
        qid = text_id("q", r["query"])
        queries[qid] = r["query"]
        qrels.setdefault(qid, {})[r["positive_id"]] = 1.0
        rows.append(Row(qid, r["positive_id"], 1.0, list(r["negative_ids"])))
    splits, meta = {"train": list(queries)}, {"mined": str(mined), "index": str(index)}
    if validation:
        held = [q for q in validation.queries if q not in queries]  # a query also trained on is not held out
        for qid in held:
            queries[qid] = validation.queries[qid]
            qrels[qid] = validation.qrels[qid]
            rows += [Row(qid, p, grade) for p, grade in validation.qrels[qid].items()]
        splits["validation"] = held
        meta["validation_passages"] = validation.passages
    data = PairData(texts, queries, qrels, LoadStats(source=str(mined), format="mined shards"))
    with replace_folder(out, "data") as new:
        save_splits(data, rows, splits, new, meta)
    log.info("training folder %s: %d rows, %d passages", out, len(rows), len(texts))
    return out
