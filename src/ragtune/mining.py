"""Pick negatives for every (query, positive) row, without ever building an N x N similarity matrix.

Strategies (`MiningConfig.strategy`):
- `least-similar`: the classic recipe. Each row gets the passage least similar to its positive, unique across rows,
  assigned greedily in row order. Candidates come from a FAISS search with the negated vector (the k *least* similar),
  so memory is O(N*k); rows whose k candidates are all taken get, together, lists of the least similar items
  still free. On CPUs with AMX tiles the exact search is a bfloat16 screen of each block of rows against the free
  items, with float32 rescoring wherever bfloat16 could misorder them (ragtune.screen): the same picks, faster.
- `hard`: passages the base model (or a cross-encoder, when given) ranks high for the query, from a rank window,
  minus anything that is a positive of that query or has the same normalised text as one, optionally minus
  candidates above a score margin or too close to a positive.
- `random`: uniformly sampled passages that are not positives.
- `none`: pairs only (MultipleNegativesRankingLoss still has in-batch negatives).

With `negatives_from: train` (the default) a training row never gets a validation/test query's positive as its
negative, so held-out passages never shape training. Above `ivf_threshold` passages the candidate search is an
approximate IVF index, and its recall against exact search is measured on a sample and reported in the stats.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune import screen
from ragtune.config import MiningConfig
from ragtune.data import PairData, Row, load_prepared, normalise
from ragtune.embeddings import QUERY, Encoder
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index, ivf_index, recall_against_exact, search_chunked
from ragtune.outputs import write_json, write_jsonl
from ragtune.progress import track

Search = Callable[..., tuple[np.ndarray, np.ndarray]]  # (queries, k, exclude mask or None)


@dataclass
class MiningResult:
    rows: list[Row]
    stats: dict[str, Any]


# How many stuck rows are searched together: IVF re-searches hold rows x k results; exact refills scan rows x free
# items, so fewer rows go ahead of the walk while many items are free (their lists would go stale before use).
_BLOCK_BYTES = 64 << 20


def least_similar_assignment(
    row_vectors: np.ndarray,
    corpus_vectors: np.ndarray,
    forbidden: list[set[int]],
    k: int = 64,
    blocked: list[np.ndarray | None] | None = None,
    search: Search | None = None,
    approximate: bool = False,
    candidates: np.ndarray | screen.Screener | None = None,
) -> tuple[list[int], int]:
    """For each row, the least similar corpus item not used by an earlier row and not forbidden for it.

    `blocked[i]`, when given, is a boolean mask of corpus items row i may never take (held-out passages).
    Returns (chosen corpus index per row, number of rows that had to reuse an item because none was left).
    Same result as the classic greedy walk over argsort(similarity_row) when `search` is exact (the default),
    without the N x N matrix: each row first tries its k least similar items (one search for all rows). A row
    that finds them all taken gets the `_FREE_K` least similar items among those still free, from one exact search
    over the free items together with every later row in (nearly) the same state, within a fixed memory budget: the
    used set only grows, so the first free item of such a list is still the least similar free item when the walk
    reaches the row. With an `approximate` search, stuck rows are first searched again in the index for free items
    only (cheaper than an exact search when the index scans only part of the corpus); a row whose probed cells hold
    too few free items it may take gets the exact list. `candidates`, when given, are the first search's result (each
    row's k least similar corpus items, ascending), so several rounds search once, or a `Screener`: then each block
    of rows is screened against the items still free just before the walk reaches it (see ragtune.screen).
    """
    if search is None and (candidates is None or approximate):
        index = flat_index(corpus_vectors)

        def search(q: np.ndarray, kk: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
            return search_chunked(index, q, kk, exclude)

    if candidates is None:
        candidates = search(-row_vectors, min(k, len(corpus_vectors)))[1]
    walk = _Walk(row_vectors, corpus_vectors, forbidden, blocked or [None] * len(row_vectors), k, search, approximate)
    walk.start_from(candidates)
    for i in track(range(len(row_vectors)), "least-similar walk", len(row_vectors), every=1024):
        walk.assign(i)
    return walk.chosen, walk.reused


class _Walk:
    """The state of one least-similar walk (see `least_similar_assignment`): rows are assigned in order, each taking
    its first free allowed item from its current list, which is refilled when every item on it was taken."""

    def __init__(self, row_vectors, corpus_vectors, forbidden, blocked, k: int, search, approximate: bool):
        self.row_vectors, self.corpus_vectors = row_vectors, corpus_vectors
        self.forbidden, self.blocked = forbidden, blocked
        self.k, self.search, self.approximate = k, search, approximate
        self.first: np.ndarray | None = None  # each row's first candidates (one search for all rows)
        self.screener: screen.Screener | None = None  # or: blocks of rows screened as the walk reaches them
        self.screened, self.at = None, 0  # the block of rows screened last, from row `at`, and its tentative picks
        self.tentative = np.empty(0, dtype=np.int64)
        self.more: dict[int, np.ndarray] = {}  # rows whose first candidates ran out: a list of items free when made
        self.complete: set[int] = set()  # rows whose exact list holds every free item they may take
        self.used = np.zeros(len(corpus_vectors), dtype=bool)
        self.chosen: list[int] = []
        self.reused = 0  # rows that had to take an item already used: more rows than distinct passages

    def start_from(self, candidates: np.ndarray | screen.Screener) -> None:
        """Each row's first candidates (one search for all rows), or a screener for blocks of rows."""
        if isinstance(candidates, screen.Screener):
            self.screener = candidates
        else:
            self.first = candidates

    def assign(self, i: int) -> None:
        if self.screener is not None and i >= self.at + len(self.tentative):
            self._screen_block(i)
        # A tentative pick stands unless an earlier row took that item since; then the row is asked again below.
        pick = int(self.tentative[i - self.at]) if self.screener is not None and i not in self.more else -1
        if pick < 0 or self.used[pick]:
            while (pick := self._pick(i)) is None:
                if i in self.complete:  # every item it may take is used
                    self.reused += 1
                    pick = _least_similar_allowed(
                        self.row_vectors[i], self.corpus_vectors, self.forbidden[i], self.blocked[i], i
                    )
                    break
                self._refill(i)
            self.more.pop(i, None)
        self.used[pick] = True
        self.chosen.append(pick)

    def _screen_block(self, i: int) -> None:
        self.at, stop = i, min(len(self.row_vectors), i + _SCREENED_ROWS)
        self.screened = self.screener.lists(self.row_vectors[i:stop], self.used)
        self.tentative = self.screened.tentative_picks(
            self.used, self.forbidden[i:stop], self.blocked[i:stop], self.row_vectors[i:stop], self.corpus_vectors
        )

    def _pick(self, i: int) -> int | None:
        if i in self.more:
            return _first_free(self.more[i], self.used, self.forbidden[i], self.blocked[i])
        if self.screener is not None:
            return self.screened.pick(
                i - self.at, self.used, self.forbidden[i], self.blocked[i], self.row_vectors[i], self.corpus_vectors
            )
        return _first_free(self.first[i], self.used, self.forbidden[i], self.blocked[i])

    def _refill(self, i: int) -> None:
        """New lists for row i and the later rows stuck (or nearly) like it: from the approximate index while it
        still finds free items, else exact lists over the free items."""
        if self.approximate and (i not in self.more or _all_used(self.more[i], self.used, self.k)):
            rows = self._stuck_rows(i, _BLOCK_BYTES // (12 * self.k))
            self.more.update(zip(rows, self.search(-self.row_vectors[rows], self.k, self.used)[1], strict=True))
            self.complete.difference_update(rows)
            return
        free = max(1, len(self.used) - int(self.used.sum()))
        rows = self._stuck_rows(i, _BLOCK_BYTES // (4 * free))
        lists = _free_least_similar(
            self.row_vectors[rows], self.corpus_vectors, self.used, self.forbidden, self.blocked, rows
        )
        self.more.update(zip(rows, lists, strict=True))
        self.complete.update(r for r, ids in zip(rows, lists, strict=True) if ids[-1] < 0)

    def _taken(self, i: int, limit: int) -> np.ndarray:
        """Per row from i on (at most 4 x limit rows, within the screened block): the share of its list used."""
        if self.screener is not None:
            return self.screened.taken_share(i - self.at, min(len(self.screened), i - self.at + 4 * limit), self.used)
        return self.used[np.maximum(self.first[i : i + 4 * limit], 0)].mean(axis=1)

    def _stuck_rows(self, i: int, limit: int) -> list[int]:
        """Row i plus later rows whose candidates are all, or nearly all, used already: they would each need the same
        help, and one matrix product for all of them costs about what one row's does (a single row is a memory-bound
        matrix-vector product; at 20,000 rows, stuck rows handled one by one took longer than the first search).

        Only rows within 4 x limit of i, so the lists held for rows ahead of the walk stay within the memory budget."""
        limit = max(1, limit)
        share = self._taken(i, limit)
        for j, ids in self.more.items():
            if i <= j < i + len(share):
                valid = ids[ids >= 0]
                share[j - i] = self.used[valid].mean() if len(valid) else 1.0
        # "Nearly": at most an eighth still free. Such a row gets the same pick from either list (its first free
        # candidate is the least similar free item either way), so including it early costs only its share of the
        # product.
        order = np.argsort(-share, kind="stable")[: np.count_nonzero(share >= 7 / 8)]
        return [i] + [i + int(o) for o in order if o != 0][: limit - 1]


def _all_used(ids: np.ndarray, used: np.ndarray, k: int) -> bool:
    """A full list whose items were all taken by other rows (rather than unusable for this row): search again."""
    valid = ids[ids >= 0]
    return len(valid) == k and bool(used[valid].all())


_FREE_K = 64  # items kept per stuck row (see least_similar_assignment)
# Rows screened, and their picks made, at once (Screener.lists, Screened.tentative_picks): larger blocks cost fewer
# calls, but their later rows find more of their items taken by the block's earlier rows; 512 was fastest at 20,000.
_SCREENED_ROWS = 512


def _free_least_similar(vectors, corpus_vectors, used, forbidden, blocked, rows) -> list[np.ndarray]:
    """For each of `rows`, its least similar corpus items that are free and not blocked for it, ascending: at least
    `_FREE_K` besides its forbidden items (kept in the list; the walk skips them). A list that holds every such item
    ends in -1. Only free items are searched: late in the walk, when most stuck rows occur, few are. FAISS's flat search
    keeps a heap per row: at 20,000 rows it took half the time of a matrix product followed by torch.topk."""
    lists: list[np.ndarray] = [np.empty(0)] * len(rows)
    groups: dict[int, list[int]] = {}  # rows with one blocked mask (none, or the held-out passages) share a search
    for position, r in enumerate(rows):
        groups.setdefault(id(blocked[r]), []).append(position)
    for positions in groups.values():
        mask = blocked[rows[positions[0]]]
        free = np.flatnonzero(~used if mask is None else ~(used | mask))
        # Room for the row's forbidden items (the walk skips them) so every list still offers _FREE_K others.
        k = min(len(free), _FREE_K + max(len(forbidden[rows[p]]) for p in positions))
        ids = search_chunked(flat_index(corpus_vectors[free]), -vectors[positions], k)[1] if k else None
        for at, p in enumerate(positions):
            items = free[ids[at]] if k else free
            lists[p] = np.append(items, -1) if k == len(free) else items  # -1: no free item is left beyond these
    return lists


def _least_similar_allowed(vector, corpus_vectors, forbidden: set[int], blocked, row: int) -> int:
    sims = corpus_vectors @ vector
    sims[list(forbidden)] = np.inf
    if blocked is not None:
        sims[blocked] = np.inf
    pick = int(np.argmin(sims))
    if np.isinf(sims[pick]):
        raise ValueError(f"row {row}: every passage is a positive of its query or held out")
    return pick


def _first_free(candidates: np.ndarray, used: np.ndarray, forbidden: set[int], blocked: np.ndarray | None):
    valid = candidates[candidates >= 0]
    free = valid[~used[valid]]
    if blocked is not None:
        free = free[~blocked[free]]
    for c in free.tolist():
        if c not in forbidden:
            return c
    return None


def uses_exact_search(config: MiningConfig, n: int) -> bool:
    """Whether `candidate_search` is exact for a corpus of n passages (else IVF)."""
    return config.index == "exact" or (config.index == "auto" and n < config.ivf_threshold)


def least_similar_k(config: MiningConfig, n: int) -> int:
    """First-search candidates per row. Exact: 128, since a longer list costs little in FAISS's per-row heap and
    spares most rows the refill search over all free items (at 20,000 rows the walk took ~0.3 s instead of ~0.5 s).
    IVF: 64, since the scan width grows with k."""
    return 128 if uses_exact_search(config, n) else 64


def least_similar_candidates(
    row_vectors: np.ndarray, corpus_vectors: np.ndarray, config: MiningConfig, stats: dict
) -> tuple[Search | None, np.ndarray | screen.Screener, int]:
    """What a least-similar walk starts from: (the search for refills, each row's candidates, k).

    With exact search, a `Screener` when `config.screen` says so (auto: on CPUs with AMX tiles, from `_SCREEN_MIN`
    passages): the walk then screens each block of rows in bfloat16 as it reaches it, and no FAISS index is built
    (refills build their own over the free items). Else FAISS's k least similar items per row."""
    n = len(corpus_vectors)
    k = least_similar_k(config, n)
    if uses_exact_search(config, n) and (
        config.screen == "on" or (config.screen == "auto" and n >= _SCREEN_MIN and screen.available())
    ):
        stats["index"] = {"type": "exact", "screen": "bfloat16"}
        return None, screen.Screener(corpus_vectors, _SCREEN_K), k
    search = candidate_search(corpus_vectors, config, -row_vectors, k, stats)
    return search, search(-row_vectors, k)[1], k


# Below this many passages FAISS's float32 search is as fast as the screen (`benchmarks/mining.py --rows 2000
# --screen on|off`: 0.06 s vs 0.05 s; at 5,000 rows 0.12 s vs 0.15 s).
_SCREEN_MIN = 4096
# Items per row a screened block lists. Lists hold free items only and serve only the rows of their block, so they
# can be short; at 20,000 rows 32 was fastest (16: refills; 64+: longer lists to select and sort).
_SCREEN_K = 32


def candidate_search(corpus_vectors: np.ndarray, config: MiningConfig, probe: np.ndarray, k: int, stats) -> Search:
    """Exact FAISS search, or an IVF index above the size threshold; its recall on `probe` queries goes in stats."""
    n = len(corpus_vectors)
    if uses_exact_search(config, n):
        stats["index"] = {"type": "exact"}
        index = flat_index(corpus_vectors)

        def exact(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            return search_chunked(index, q, kk)

        return exact
    index = ivf_index(corpus_vectors, config.nprobe, config.seed)
    stats["index"] = {
        "type": "ivf",
        "nlist": index.nlist,
        "nprobe": index.nprobe,
        f"recall@{k}_vs_exact": round(recall_against_exact(index, corpus_vectors, probe, k), 4),
    }

    def approximate(q: np.ndarray, kk: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        # A wider search (or one that skips most items) must scan more cells, or it finds too few.
        share = 1.0 if exclude is None else max(1.0 - exclude.mean(), 1 / n)
        nprobe = min(index.nlist, max(config.nprobe, math.ceil(2 * kk * index.nlist / (n * share))))
        index.nprobe = nprobe
        scores, ids = search_chunked(index, q, kk, exclude)
        # The cells nearest a query can run out of free items long before the corpus does (the rows of one cluster
        # all probe the same few cells): search those rows again over 4x the cells until their lists are full.
        short = np.flatnonzero(ids[:, -1] < 0)
        while len(short) and nprobe < index.nlist:
            nprobe = index.nprobe = min(index.nlist, 4 * nprobe)
            scores[short], ids[short] = search_chunked(index, q[short], kk, exclude)
            short = short[ids[short, -1] < 0]
            stats["index"]["widened_searches"] = stats["index"].get("widened_searches", 0) + 1
        return scores, ids

    return approximate


class _Guards:
    """What may never be a negative for a query: its positives, anything textually equal to one, and (for a training
    query, with `negatives_from: train`) any positive of a validation or test query."""

    def __init__(self, data: PairData, corpus_ids: list[str], held_out: set[str] | None = None):
        self.corpus_ids = corpus_ids
        self.position = {pid: i for i, pid in enumerate(corpus_ids)}
        text_hash = [hashlib.sha1(normalise(data.corpus[p]).encode()).digest() for p in corpus_ids]
        by_text: dict[bytes, list[int]] = {}
        for i, h in enumerate(text_hash):
            by_text.setdefault(h, []).append(i)
        self.positives: dict[str, set[int]] = {}
        self.same_text: dict[str, set[int]] = {}
        for qid, rel in data.qrels.items():
            pos = {self.position[p] for p in rel}
            self.positives[qid] = pos
            self.same_text[qid] = {j for i in pos for j in by_text[text_hash[i]]} - pos
        # Pairs made from one document (ragtune synth, data.group_column) share a group: another pair's passage
        # from the same document is a rewording of this positive, never a negative.
        by_group: dict[str, set[int]] = {}
        for qid, values in data.groups.items():
            for g in values:
                by_group.setdefault(g, set()).update(self.positives.get(qid, ()))
        self.same_group = {
            qid: set().union(*(by_group[g] for g in values)) - self.positives[qid] - self.same_text[qid]
            for qid, values in data.groups.items()
            if qid in self.positives
        }
        self.held_out_queries = held_out or set()
        self.held_out = np.zeros(len(corpus_ids), dtype=bool)
        for qid in self.held_out_queries:
            self.held_out[list(self.positives.get(qid, ()))] = True

    def forbidden(self, qid: str) -> set[int]:
        return self.positives[qid] | self.same_text[qid] | self.same_group.get(qid, set())

    def blocked(self, qid: str) -> np.ndarray | None:
        """The held-out passages a training query's rows may not take (None: no restriction for this query)."""
        if qid in self.held_out_queries or not self.held_out.any():
            return None
        return self.held_out


def mine(
    data: PairData, encoder: Encoder | None, config: MiningConfig, held_out: set[str] | None = None
) -> MiningResult:
    """Negatives for every row of `data`. `held_out`: validation/test query ids, whose positives training rows
    never get as negatives (their own rows may use any passage: they only measure triplet accuracy)."""
    corpus_ids = list(data.corpus)
    rows = [Row(q, p, s) for q, p, s in data.pairs()]
    stats: dict[str, Any] = {"strategy": config.strategy, "rows": len(rows), "corpus": len(corpus_ids)}
    if config.strategy == "none":
        return MiningResult(rows, stats)
    guards = _Guards(data, corpus_ids, held_out)
    stats["held_out_passages_excluded_for_training_rows"] = int(guards.held_out.sum())
    if config.strategy == "random":
        _random_negatives(rows, guards, len(corpus_ids), config)
        return MiningResult(rows, stats)
    if encoder is None:
        raise ValueError(f"strategy {config.strategy!r} needs an encoder")
    corpus_vectors = encoder.encode([data.corpus[p] for p in corpus_ids], desc="encoding corpus")
    qids = list(dict.fromkeys(r.query_id for r in rows))
    query_vectors = encoder.encode([data.queries[q] for q in qids], desc="encoding queries", kind=QUERY)
    if config.strategy == "least-similar":
        least_similar_negatives(rows, guards, corpus_vectors, config, stats)
    else:
        _hard(rows, guards, qids, query_vectors, corpus_vectors, config, stats, data)
    _score_summary(rows, guards, corpus_vectors, qids, query_vectors, stats)
    return MiningResult(rows, stats)


def least_similar_negatives(
    rows: list[Row], guards, corpus_vectors: np.ndarray, config: MiningConfig, stats: dict
) -> None:
    """`config.num_negatives` rounds of the walk, each row's picks appended to its `negative_ids`. `guards` says
    what a query may never take (`position`, `forbidden(qid)`, `blocked(qid)`)."""
    items = np.array([guards.position[r.positive_id] for r in rows], dtype=np.int64)
    row_vectors = corpus_vectors[items]
    search, candidates, k = least_similar_candidates(row_vectors, corpus_vectors, config, stats)  # for every round
    approximate = stats["index"]["type"] == "ivf"
    corpus_ids = list(guards.position)
    blocked = [guards.blocked(r.query_id) for r in rows]
    for round_ in range(config.num_negatives):
        # Each round is one classic pass; earlier rounds' picks are forbidden so a row's negatives differ.
        forbidden = [guards.forbidden(r.query_id) | {guards.position[n] for n in r.negative_ids} for r in rows]
        chosen, reused = least_similar_assignment(
            row_vectors, corpus_vectors, forbidden, k, blocked, search, approximate, candidates
        )
        for r, c in zip(rows, chosen, strict=True):
            r.negative_ids.append(corpus_ids[c])
        stats[f"rows_reusing_a_negative_round{round_ + 1}"] = reused


def _hard(rows, guards: _Guards, qids, query_vectors, corpus_vectors, config: MiningConfig, stats, data) -> None:
    """Each row's negatives from its query's ranking: candidates that may never be negatives are dropped, the rest
    (up to `range_max`) optionally re-scored by a cross-encoder, then filtered by rank window, score and nearness to a
    positive; rows left with too few get random passages."""
    removed: Counter = Counter()
    pools = _candidate_pools(rows, guards, qids, query_vectors, corpus_vectors, config, stats, removed)
    if config.cross_encoder:
        pools = _rescore(rows, pools, data, list(guards.position), config, stats)
    rng = random.Random(config.seed)
    fallback = 0
    positive_vectors = {q: corpus_vectors[sorted(guards.positives[q])] for q in qids}
    for r, (positive_score, pool) in zip(rows, pools, strict=True):
        window = screen_window(pool, positive_score, positive_vectors[r.query_id], corpus_vectors, config, removed)
        if config.sampling == "random":
            rng.shuffle(window)
        picks = window[: config.num_negatives]
        if len(picks) < config.num_negatives:
            fallback += 1
            excluded = guards.forbidden(r.query_id) | set(picks)
            picks += _sample_excluding(
                rng, len(guards.position), excluded, config.num_negatives - len(picks), guards.blocked(r.query_id)
            )
        r.negative_ids = [guards.corpus_ids[c] for c in picks]
    stats["candidates_removed"] = dict(removed)
    stats["rows_with_random_fallback"] = fallback


def _candidate_pools(rows, guards: _Guards, qids, query_vectors, corpus_vectors, config, stats, removed) -> list:
    """Per row: (positive score, [(score, candidate)] in rank order, at most `range_max` long), without the query's
    positives, passages with a positive's text or group, and held-out passages (each counted in `removed`)."""
    most_positives = max(len(guards.forbidden(q)) for q in qids)
    depth = config.range_max + most_positives
    held_share = float(guards.held_out.mean())
    if held_share:  # candidates lost to held-out passages are replaced from further down the ranking
        depth = math.ceil(depth / max(0.05, 1 - held_share)) + 10
    search = candidate_search(corpus_vectors, config, query_vectors, config.range_max, stats)
    scores, ids = search(query_vectors, depth)
    at = {q: i for i, q in enumerate(qids)}
    pools = []
    for r in rows:
        i = at[r.query_id]
        blocked = guards.blocked(r.query_id)
        pool = []
        for score, c in zip(scores[i].tolist(), ids[i].tolist(), strict=True):
            if c < 0:
                continue
            if c in guards.positives[r.query_id]:
                removed["positive"] += 1
            elif c in guards.same_text[r.query_id]:
                removed["same_text_as_positive"] += 1
            elif c in guards.same_group.get(r.query_id, ()):
                removed["same_group_as_positive"] += 1
            elif blocked is not None and blocked[c]:
                removed["held_out_passage"] += 1
            else:
                pool.append((score, c))
                if len(pool) == config.range_max:
                    break
        positive_score = float(query_vectors[i] @ corpus_vectors[guards.position[r.positive_id]])
        pools.append((positive_score, pool))
    return pools


def screen_window(
    pool: list[tuple[float, int]],
    positive_score: float | None,
    positive_vectors: np.ndarray | None,
    corpus_vectors: np.ndarray | None,
    config: MiningConfig,
    removed: Counter,
) -> list[int]:
    """The candidates of a pool past `range_min` that pass the score cap, the margin and the near-positive test
    (the vectors are read only for the last; mining from shards has no corpus vectors and no such test)."""
    window = []
    for rank, (score, c) in enumerate(pool, start=1):
        if rank <= config.range_min:
            continue
        if config.max_score is not None and score > config.max_score:
            removed["above_max_score"] += 1
        elif config.margin is not None and score > positive_score * (1 - config.margin):
            removed["within_margin_of_positive"] += 1
        elif config.max_cosine_to_positive is not None and _near_positive(
            c, positive_vectors, corpus_vectors, config.max_cosine_to_positive
        ):
            removed["near_duplicate_of_positive"] += 1
        else:
            window.append(c)
    return window


def _rescore(rows, pools, data: PairData, corpus_ids, config: MiningConfig, stats) -> list:
    """Replace each candidate's (and the positive's) bi-encoder score by a cross-encoder's, and re-rank the pool.

    The cross-encoder reads query and passage together, so it separates paraphrased positives from true
    negatives better than cosine does; the window, margin and max_score then apply to its scores.
    """
    from sentence_transformers import CrossEncoder

    from ragtune.embeddings import resolve_model

    name = resolve_model(config.cross_encoder)
    model = CrossEncoder(name, local_files_only=Path(name).is_dir())
    pairs = []
    for r, (_, pool) in zip(rows, pools, strict=True):
        query = data.queries[r.query_id]
        pairs.append((query, data.corpus[r.positive_id]))
        pairs += [(query, data.corpus[corpus_ids[c]]) for _, c in pool]
    scores = model.predict(pairs, batch_size=config.batch_size, show_progress_bar=False).tolist()
    out, at = [], 0
    for _, pool in pools:
        positive_score, ce = scores[at], scores[at + 1 : at + 1 + len(pool)]
        at += 1 + len(pool)
        out.append((positive_score, sorted(zip(ce, [c for _, c in pool], strict=True), key=lambda t: -t[0])))
    stats["cross_encoder"] = {"model": config.cross_encoder, "pairs_scored": len(pairs)}
    return out


def _near_positive(candidate: int, positives: np.ndarray, corpus_vectors: np.ndarray, threshold: float) -> bool:
    """A paraphrase or near-copy of a positive under another id: almost surely relevant, so not a negative."""
    return bool(np.max(positives @ corpus_vectors[candidate]) >= threshold)


def _random_negatives(rows, guards: _Guards, n: int, config: MiningConfig) -> None:
    rng = random.Random(config.seed)
    corpus_ids = list(guards.position)
    for r in rows:
        picks = _sample_excluding(
            rng, n, guards.forbidden(r.query_id), config.num_negatives, guards.blocked(r.query_id)
        )
        r.negative_ids = [corpus_ids[c] for c in picks]


def _sample_excluding(
    rng: random.Random, n: int, excluded: set[int], count: int, blocked: np.ndarray | None = None
) -> list[int]:
    free = n - len(excluded) - (int(blocked.sum()) if blocked is not None else 0)
    if free <= 0:
        raise ValueError("no passage is left that is not a positive of this query or held out; the corpus is too small")
    picks: list[int] = []
    while len(picks) < count:
        c = rng.randrange(n)
        if c not in excluded and (blocked is None or not blocked[c]) and (c not in picks or free < count):
            picks.append(c)
    return picks


def _score_summary(rows, guards: _Guards, corpus_vectors, qids, query_vectors, stats) -> None:
    """Query-positive vs query-negative cosines (means and histograms): a quick read of how hard the negatives are."""
    at = {q: i for i, q in enumerate(qids)}
    pos = [float(query_vectors[at[r.query_id]] @ corpus_vectors[guards.position[r.positive_id]]) for r in rows]
    neg_per_row = [
        [float(query_vectors[at[r.query_id]] @ corpus_vectors[guards.position[n]]) for n in r.negative_ids]
        for r in rows
    ]
    neg = [s for row in neg_per_row for s in row]
    stats["mean_query_positive_cosine"] = round(float(np.mean(pos)), 4)
    stats["mean_query_negative_cosine"] = round(float(np.mean(neg)), 4) if neg else None
    bins = np.linspace(-1, 1, 21)
    stats["score_histogram"] = {
        "bin_edges": [round(float(b), 2) for b in bins],
        "query_positive": np.histogram(pos, bins)[0].tolist(),
        "query_negative": np.histogram(neg, bins)[0].tolist(),
    }
    stats["rows_negative_scores_above_positive"] = sum(
        1 for p, row in zip(pos, neg_per_row, strict=True) if any(s > p for s in row)
    )


# ---- the mined folder: rows.jsonl (one Row per line) and stats.json (the prepared folder, stats, split) -------


def save_mined(rows: list[Row], meta: dict[str, Any], folder: Path) -> None:
    write_jsonl(folder / "rows.jsonl", (asdict(r) for r in rows))
    write_json(folder / "stats.json", meta)


def read_mined(mined: Path) -> tuple[PairData, list[Row], dict[str, Any]]:
    """The prepared data, the mined rows, and the mining metadata (stats, and the split mining was done for)."""
    if not (mined / "stats.json").exists():
        raise RagtuneError(f"{mined}: not a mined folder (no stats.json); run `ragtune mine` first")
    meta = json.loads((mined / "stats.json").read_text())
    data = load_prepared(meta["prepared"])
    with (mined / "rows.jsonl").open() as f:
        rows = [Row(**json.loads(line)) for line in f]
    return data, rows, meta
