"""Meet users where they are: the corpus they search, and the way they write, without labels.

A team's labelled pairs (FAQ titles, curated questions) differ from its traffic; `adapt` adds to the labelled data:
- the passages of `data.corpus` (the corpus users search): they join the evaluation corpus and the mining pool;
- `pseudo` pairs: each unlabelled user question (`data.user_queries`) with the passage of `data.corpus` that BM25
  and the base model both rank first. Agreement is the filter: on MedicationQA's dev questions 153 of 343 agreed and
  76.5% of those were right, against 52.8% for the base model's first passage alone (benchmarks/pseudo_labels.py);
- `judged` pairs: each labelled user question (the queries of `data.user_queries`' qrels/<split>.tsv) with its
  relevant passages, for teams that have labelled some of their traffic;
- synthetic pairs made from `data.corpus` by the offline `ragtune.synth` methods (`ict`, `crop`, `title`), each
  query paired with its whole passage;
- the pairs of `adapt.pairs` files, e.g. made by an LLM shown the users' questions (`ragtune synth --method llm
  --style-queries`), counted by their `method` column.
Every added pair is train-only (unverified pairs never judge a model) and tagged with its method, so a report can
count the training pairs by source.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.config import AdaptConfig
from ragtune.data import Document, PairData, detect_format, text_id
from ragtune.embeddings import Encoder
from ragtune.errors import BadRowError, RagtuneError

log = logging.getLogger(__name__)
LABELLED = "labelled"


@dataclass
class AdaptStats:
    corpus_passages: int = 0
    corpus_passages_new: int = 0
    user_queries: int = 0
    pairs_by_method: dict[str, int] = field(default_factory=dict)
    pseudo: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus_passages": self.corpus_passages,
            "corpus_passages_new": self.corpus_passages_new,
            "user_queries": self.user_queries,
            "pairs_by_method": self.pairs_by_method,
            "pseudo": self.pseudo,
        }


def load_user_queries(path: str | Path, split: str | None = None, column: str = "text") -> list[str]:
    """Unlabelled questions as users write them: a BEIR folder's queries (only those of `qrels/<split>.tsv` when a
    split is named: the ids are read, never the judgements), or a JSONL/CSV/Parquet file's `column`."""
    from ragtune.data import read_frame, read_jsonl

    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"user queries not found: {path}")
    fmt = detect_format(path)
    keep: set[str] | None = None
    if fmt == "beir":
        if split:
            qrels = path / "qrels" / f"{split}.tsv"
            if not qrels.is_file():
                raise RagtuneError(f"{path}: no qrels/{split}.tsv to take the {split!r} queries from")
            lines = qrels.read_text(encoding="utf-8").splitlines()
            keep = {line.split("\t")[0] for line in lines[1:] if line.strip()}
        records, column, id_column = read_jsonl(path / "queries.jsonl"), "text", "_id"
    elif fmt == "jsonl":
        records, id_column = read_jsonl(path), None
    elif fmt in ("csv", "parquet"):
        records, id_column = read_frame(path, fmt), None
    else:
        raise RagtuneError(f"{path}: user queries must be a BEIR folder or a JSONL/CSV/Parquet file")
    queries = []
    for where, record in records:
        if keep is not None and str(record.get(id_column)) not in keep:
            continue
        text = record.get(column)
        if not isinstance(text, str) or not text.strip():
            raise RagtuneError(f"{where}: field '{column}' is missing or empty")
        queries.append(text.strip())
    if not queries:
        raise RagtuneError(f"{path}: no user queries" + (f" in split {split!r}" if split else ""))
    return list(dict.fromkeys(queries))


def load_judged(path: str | Path, split: str | None) -> list[tuple[str, dict[str, float]]]:
    """Labelled user questions: each query of a BEIR folder's `qrels/<split>.tsv`, with the texts of its relevant
    passages and their grades (`load_beir` keeps only grades above 0)."""
    from ragtune.data import load_beir

    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"user queries not found: {path}")
    if detect_format(path) != "beir" or not split:
        raise RagtuneError(f"{path}: adapt.methods: judged needs a BEIR folder and data.user_queries_split")
    data = load_beir(path, skip_bad_rows=False)
    if split not in data.splits:
        raise RagtuneError(f"{path}: no qrels/{split}.tsv to take the judged {split!r} queries from")
    judged: dict[str, dict[str, float]] = {}  # by question text: users ask the same thing more than once
    for qid in data.splits[split]:
        judged.setdefault(data.queries[qid], {}).update((data.corpus[p], g) for p, g in data.qrels[qid].items())
    if not judged:
        raise RagtuneError(f"{path}: qrels/{split}.tsv judges no passage relevant")
    return list(judged.items())


def load_pairs_files(paths: list[str]) -> list[tuple[str, str, str]]:
    """(query, passage, method) of every pair of pairs files (read like `data.path`: query, passage and optionally
    `method`, which names the pair's source; else the file's name does)."""
    from ragtune.data import load_pairs

    pairs = []
    for path in map(Path, paths):
        if not path.is_file():
            raise RagtuneError(f"adapt.pairs: file not found: {path}")
        try:
            data = load_pairs(path)
        except BadRowError as err:  # data.skip_bad_rows is data.path's setting: these rows must be fixed
            raise BadRowError(f"adapt.pairs: {err.row}", "fix the row") from None
        for qid, relevant in data.qrels.items():
            method = data.methods.get(qid) or path.stem
            if method == LABELLED:  # the report's "labelled" counts data.path's pairs only
                method = path.stem
            pairs += [(data.queries[qid], data.corpus[pid], method) for pid in relevant]
    return pairs


def pseudo_label(queries: list[str], corpus: dict[str, str], encoder: Encoder) -> tuple[list[tuple[str, str]], dict]:
    """(query, passage id) where BM25's and the base model's first passage agree; the rest are left out."""
    from ragtune.data import LoadStats
    from ragtune.evaluate import bm25_run, dense_run

    qids = [text_id("u", q) for q in queries]
    probe = PairData(corpus, dict(zip(qids, queries, strict=True)), {q: {} for q in qids}, LoadStats("users", "-"))
    dense, lexical = dense_run(encoder, probe, k=2), bm25_run(probe, k=1)
    pairs, margins = [], []
    for qid, text in zip(qids, queries, strict=True):
        ranked = sorted(dense[qid].items(), key=lambda x: -x[1])
        if ranked and lexical[qid] and ranked[0][0] == next(iter(lexical[qid])):
            pairs.append((text, ranked[0][0]))
            margins.append(ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0))
    stats = {
        "queries": len(queries),
        "agreed": len(pairs),
        "median_dense_margin": float(np.median(margins)) if margins else None,
    }
    return pairs, stats


def adapt(
    data: PairData,
    documents: list[Document],
    user_queries: list[str] | None,
    encoder: Encoder | None,
    config: AdaptConfig,
    judged: list[tuple[str, dict[str, float]]] | None = None,
    extra_pairs: list[tuple[str, str, str]] | None = None,
) -> tuple[PairData, AdaptStats]:
    """`data` plus the users' corpus (`documents`) and train-only pairs made from it (see the module docstring)."""
    from ragtune.synth import synthesize

    stats = AdaptStats(user_queries=len(user_queries or []))
    merged = dict(data.corpus)
    known = {text: pid for pid, text in merged.items()}
    target: dict[str, str] = {}  # the users' corpus, by ids of the merged corpus (one id per distinct text)
    for text in (d.text for d in documents):
        pid = known.get(text)
        if pid is None:
            pid = known[text] = text_id("p", text)
            merged[pid] = text
            stats.corpus_passages_new += 1
        target[pid] = text
    stats.corpus_passages = len(target)
    queries, qrels = dict(data.queries), {q: dict(r) for q, r in data.qrels.items()}
    methods = {q: data.methods.get(q, LABELLED) for q in data.qrels}
    train_only = set(data.train_only)
    made: Counter = Counter()
    asked = {q.strip().lower() for q in data.queries.values()}

    def passage_id(text: str) -> str:
        if text not in known:  # a passage outside data.corpus is still one users get
            known[text] = text_id("p", text)
            merged[known[text]] = text
            stats.corpus_passages_new += 1
        return known[text]

    def add(query: str, relevant: dict[str, float], method: str) -> None:
        qid = text_id("q", f"{method}\0{query}")
        if qid in qrels or query.strip().lower() in asked:
            return  # a text already asked as a labelled question keeps its own label
        queries[qid], qrels[qid], methods[qid] = query, relevant, method
        train_only.add(qid)
        made[method] += 1

    if "judged" in config.methods and judged:
        for query, passages in judged:
            add(query, {passage_id(text): grade for text, grade in passages.items()}, "judged")
        asked.update(query.strip().lower() for query, _ in judged)  # a judged question is not pseudo-labelled too
    if "pseudo" in config.methods and user_queries:
        if encoder is None or not target:
            raise RagtuneError("adapt: pseudo-labels need data.corpus (the passages users search) and a model")
        pairs, stats.pseudo = pseudo_label(user_queries, target, encoder)
        for query, pid in pairs:
            add(query, {pid: 1.0}, "pseudo")
    synthetic = [m for m in config.methods if m not in ("pseudo", "judged")]
    if synthetic and target:
        text_of = {d.id: d.text for d in documents}
        for pair in synthesize(documents, synthetic, config.seed)[0]:
            # The positive is the whole passage users search, not the method's fragment of it: fragments in the
            # corpus would be near-copies of real passages, distracting every evaluation.
            add(pair.query, {known[text_of[pair.doc_id]]: 1.0}, pair.method)
    for query, passage, method in extra_pairs or []:
        add(query, {passage_id(passage): 1.0}, method)
    stats.pairs_by_method = {LABELLED: len(data.qrels), **dict(made)}
    log.info("adapt: %s", stats.to_dict())
    adapted = PairData(merged, queries, qrels, data.stats, data.splits, dict(data.groups), methods)
    adapted.train_only = sorted(train_only)
    return adapted, stats
