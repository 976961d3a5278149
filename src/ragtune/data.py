"""Load (query, passage) pairs from the formats teams keep them in, into one shape: corpus, queries, qrels.

Every distinct passage text is one corpus entry (ids are content hashes unless the source has ids), every distinct
query text is one query, and a query may have several relevant passages with graded scores (BEIR). Nothing is dropped
silently: duplicates and skipped rows are counted in `LoadStats`, bad rows are errors naming file, row and field.

Deliberately not here: negatives (mining.py) and train/test splits (splits.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import BadRowError, RagtuneError

DATA_MARKER = "ragtune_data.json"
PUBMEDQA_URL = "https://raw.githubusercontent.com/pubmedqa/pubmedqa/master/data/ori_pqal.json"


@dataclass
class LoadStats:
    source: str
    format: str
    rows_read: int = 0
    bad_rows_skipped: int = 0
    duplicate_pairs_dropped: int = 0
    non_relevant_judgements: int = 0
    pairs_sampled_out: int = 0
    pairs: int = 0
    queries: int = 0
    passages: int = 0
    passages_under_several_queries: int = 0
    rows_without_group: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairData:
    """A retrieval dataset: `qrels[query_id][passage_id] = relevance` over `corpus` and `queries`."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    stats: LoadStats
    splits: dict[str, list[str]] | None = None  # the source's own split: name -> query ids
    groups: dict[str, list[str]] = field(default_factory=dict)  # query id -> values of the group column
    methods: dict[str, str] = field(default_factory=dict)  # query id -> how a synthetic pair was made (`method`)
    train_only: list[str] = field(default_factory=list)  # query ids only ever trained on (unverified pairs)

    def pairs(self, query_ids: Iterable[str] | None = None) -> list[tuple[str, str, float]]:
        qids = self.qrels.keys() if query_ids is None else query_ids
        return [(q, p, s) for q in qids for p, s in self.qrels.get(q, {}).items()]

    def subset(self, query_ids: Iterable[str]) -> PairData:
        """The same corpus, only these queries (evaluation always searches the full corpus)."""
        qids = [q for q in query_ids if q in self.qrels]
        kept = set(qids)
        return PairData(
            corpus=self.corpus,
            queries={q: self.queries[q] for q in qids},
            qrels={q: self.qrels[q] for q in qids},
            stats=self.stats,
            groups={q: self.groups[q] for q in qids if q in self.groups},
            methods={q: self.methods[q] for q in qids if q in self.methods},
            train_only=[q for q in self.train_only if q in kept],
        )


@dataclass
class Row:
    """One training row: a (query, positive) pair and the negatives mined for it (ids into `PairData.corpus`)."""

    query_id: str
    positive_id: str
    score: float
    negative_ids: list[str] = field(default_factory=list)


def text_id(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def normalise(text: str) -> str:
    """The form used to decide that two passages are the same text (case and whitespace ignored)."""
    return " ".join(text.lower().split())


class _Builder:
    """Accumulates pairs, deduplicating queries, passages and pairs and validating every text."""

    def __init__(self, source: str, fmt: str, skip_bad_rows: bool, group_column: str | None = None):
        self.stats = LoadStats(source=source, format=fmt)
        self.skip_bad_rows = skip_bad_rows
        self.group_column = group_column
        self.groups: dict[str, set[str]] = {}
        self.corpus: dict[str, str] = {}
        self.queries: dict[str, str] = {}
        self.qrels: dict[str, dict[str, float]] = {}
        self.methods: dict[str, str] = {}

    def text(self, value: Any, where: str, column: str) -> str | None:
        problem = None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            problem = "is missing (null/NaN)"
        elif not isinstance(value, str):
            problem = f"is not text (got {type(value).__name__}: {str(value)[:40]!r})"
        elif not value.strip():
            problem = "is empty or whitespace"
        if problem is None:
            return value.strip()
        self.bad(f"{where}: field '{column}' {problem}")
        return None

    def bad(self, message: str) -> None:
        if not self.skip_bad_rows:
            raise BadRowError(
                message,
                "fix the row, or set data.skip_bad_rows / `ragtune prepare --skip-bad-rows` to skip and count "
                "such rows",
            )
        self.stats.bad_rows_skipped += 1
        if len(self.stats.skipped_examples) < 20:
            self.stats.skipped_examples.append(message)

    def add_passage(self, text: str, pid: str | None = None) -> str:
        pid = pid or text_id("p", text)
        self.corpus.setdefault(pid, text)
        return pid

    def add_query(self, text: str, qid: str | None = None) -> str:
        qid = qid or text_id("q", text)
        self.queries.setdefault(qid, text)
        return qid

    def add_pair(self, qid: str, pid: str, score: float = 1.0) -> None:
        if score <= 0:
            self.stats.non_relevant_judgements += 1
            return
        rel = self.qrels.setdefault(qid, {})
        if pid in rel:
            self.stats.duplicate_pairs_dropped += 1
            return
        rel[pid] = float(score)

    def row(self, record: dict[str, Any], where: str, query_column: str, passage_column: str) -> None:
        self.stats.rows_read += 1
        query = self.text(record.get(query_column), where, query_column)
        if query is None:
            return
        passage = self.text(record.get(passage_column), where, passage_column)
        if passage is None:
            return
        qid = self.add_query(query)
        self.add_pair(qid, self.add_passage(passage))
        method = record.get("method")  # written by `ragtune synth`; kept so reports can break results down by it
        if isinstance(method, str) and method.strip():
            self.methods.setdefault(qid, method.strip())
        if self.group_column:
            group = record.get(self.group_column)
            if group is None or (isinstance(group, float) and math.isnan(group)) or not str(group).strip():
                self.stats.rows_without_group += 1  # such a row's query is a group of its own
            else:
                self.groups.setdefault(qid, set()).add(str(group))

    def finish(self, splits: dict[str, list[str]] | None = None) -> PairData:
        queries = {q: t for q, t in self.queries.items() if q in self.qrels}
        groups = {q: sorted(g) for q, g in self.groups.items() if q in self.qrels}
        methods = {q: m for q, m in self.methods.items() if q in self.qrels}
        data = PairData(self.corpus, queries, self.qrels, self.stats, splits, groups, methods)
        _count(data)
        return data


def _count(data: PairData) -> None:
    s = data.stats
    s.pairs = sum(len(r) for r in data.qrels.values())
    s.queries = len(data.qrels)
    s.passages = len(data.corpus)
    seen: dict[str, int] = {}
    for rel in data.qrels.values():
        for pid in rel:
            seen[pid] = seen.get(pid, 0) + 1
    s.passages_under_several_queries = sum(1 for n in seen.values() if n > 1)


def _check_columns(path: Path, columns: Iterable[str], wanted: list[str]) -> None:
    columns = list(columns)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise RagtuneError(
            f"{path}: no column {', '.join(repr(m) for m in missing)}; columns are {columns}. "
            "Set query_column / passage_column (--query-column / --passage-column)."
        )


def read_jsonl(path: Path, on_bad: Callable[[str], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) per line. A line that is not UTF-8 or not a JSON object goes to `on_bad` (which skips and
    counts it, or raises) or, without one, is an error naming the line."""

    def bad(message: str) -> None:
        if on_bad is None:
            raise RagtuneError(message)
        on_bad(message)

    # Bytes, decoded line by line: one bad byte is that line's problem, not a crash of the whole read.
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad(f"{path}: line {n}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                bad(f"{path}: line {n}: not valid JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                bad(f"{path}: line {n}: expected a JSON object, got {type(record).__name__}")
                continue
            yield f"{path}: line {n}", record


def read_frame(path: Path, fmt: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pandas as pd

    try:
        if fmt == "csv":
            # Only a truly empty cell is missing: "NaN", "NA" or "None" are texts someone wrote. TSV by its name.
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(path, dtype=str, sep=sep, keep_default_na=False, na_values=[""], encoding="utf-8")
        else:
            frame = pd.read_parquet(path)
    except Exception as err:  # pandas raises many types; the user needs the file and the reason
        raise RagtuneError(f"{path}: could not read as {fmt}: {err}") from err
    # CSV rows are numbered as a spreadsheet shows them: the header is line 1.
    offset = 2 if fmt == "csv" else 1
    for i, record in enumerate(frame.to_dict(orient="records")):
        yield f"{path}: row {i + offset}", record


def _first_columns(path: Path, rows: Iterator[tuple[str, dict[str, Any]]]):
    first = next(rows, None)
    if first is None:
        raise RagtuneError(f"{path}: no rows")
    return first


def load_table(
    path: Path, fmt: str, query_column: str, passage_column: str, skip_bad_rows: bool, group_column: str | None = None
) -> PairData:
    builder = _Builder(str(path), fmt, skip_bad_rows, group_column)
    rows = read_jsonl(path, builder.bad) if fmt == "jsonl" else read_frame(path, fmt)
    where, record = _first_columns(path, rows)
    _check_columns(path, record.keys(), [query_column, passage_column] + ([group_column] if group_column else []))
    builder.row(record, where, query_column, passage_column)
    for where, record in rows:
        builder.row(record, where, query_column, passage_column)
    return builder.finish()


def load_pubmedqa(path: Path, skip_bad_rows: bool) -> PairData:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RagtuneError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(raw, dict):
        raise RagtuneError(f"{path}: expected PubMedQA's object keyed by PubMed id")
    builder = _Builder(str(path), "pubmedqa", skip_bad_rows)
    for pmid, entry in raw.items():
        where = f"{path}: entry {pmid}"
        contexts = entry.get("CONTEXTS") if isinstance(entry, dict) else None
        if isinstance(contexts, list) and all(isinstance(c, str) for c in contexts):
            passage = " ".join(c.strip() for c in contexts)
        else:
            passage = contexts  # let the text check name the problem
        builder.row(
            {"QUESTION": entry.get("QUESTION") if isinstance(entry, dict) else None, "CONTEXTS": passage},
            where,
            "QUESTION",
            "CONTEXTS",
        )
    return builder.finish()


def load_beir(folder: Path, skip_bad_rows: bool) -> PairData:
    corpus_file, queries_file, qrels_dir = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels"
    for needed in (corpus_file, queries_file, qrels_dir):
        if not needed.exists():
            raise RagtuneError(f"{folder}: not a BEIR folder, {needed.name} is missing")
    builder = _Builder(str(folder), "beir", skip_bad_rows)
    for where, rec in read_jsonl(corpus_file, builder.bad):
        if "_id" not in rec:
            raise RagtuneError(f"{where}: field '_id' is missing")
        text = builder.text(rec.get("text"), where, "text")
        if text is None:
            continue
        builder.add_passage(beir_text(rec.get("title"), text), str(rec["_id"]))
    for where, rec in read_jsonl(queries_file, builder.bad):
        if "_id" not in rec:
            raise RagtuneError(f"{where}: field '_id' is missing")
        text = builder.text(rec.get("text"), where, "text")
        if text is not None:
            builder.add_query(text, str(rec["_id"]))
    splits: dict[str, list[str]] = {}
    qrel_files = sorted(qrels_dir.glob("*.tsv"))
    if not qrel_files:
        raise RagtuneError(f"{qrels_dir}: no <split>.tsv files")
    for qrel_file in qrel_files:
        qids: dict[str, None] = {}
        for where, qid, pid, grade in read_qrels(qrel_file):
            builder.stats.rows_read += 1
            if qid not in builder.queries:
                builder.bad(f"{where}: field 'query-id' {qid!r} is not in {queries_file.name}")
                continue
            if pid not in builder.corpus:
                builder.bad(f"{where}: field 'corpus-id' {pid!r} is not in {corpus_file.name}")
                continue
            builder.add_pair(qid, pid, grade)
            if grade > 0:
                qids[qid] = None
        splits[qrel_file.stem] = list(qids)
    return builder.finish(splits)


def read_qrels(path: Path) -> Iterator[tuple[str, str, str, float]]:
    """(where, query id, corpus id, grade) per line of a BEIR qrels file (query-id, corpus-id, score; a header
    line is skipped); a malformed line is an error naming it."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if (n == 1 and not _is_number(parts[-1])) or not line.strip():
                continue  # the header, or a blank line
            where = f"{path}: line {n}"
            if len(parts) != 3:
                raise RagtuneError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            qid, pid, score = parts
            try:
                grade = float(score)
            except ValueError as err:
                raise RagtuneError(f"{where}: field 'score' is not a number: {score!r}") from err
            yield where, qid, pid, grade


def beir_text(title: Any, text: str) -> str:
    """A BEIR passage as dense retrievers read it: the title, when there is one, before the text."""
    return f"{title.strip()} {text}" if isinstance(title, str) and title.strip() else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_hf(
    folder: Path, query_column: str, passage_column: str, skip_bad_rows: bool, group_column: str | None = None
) -> PairData:
    import datasets

    marker = folder / DATA_MARKER
    if marker.exists():
        return load_ragtune_data(folder)
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as err:
        raise RagtuneError(f"{folder}: not a dataset saved with save_to_disk: {err}") from err
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    builder = _Builder(str(folder), "hf", skip_bad_rows, group_column)
    columns = [query_column, passage_column] + ([group_column] if group_column else [])
    splits: dict[str, list[str]] = {}
    for name, ds in parts.items():
        _check_columns(folder / name, ds.column_names, columns)
        before = set(builder.qrels)
        for i, record in enumerate(ds.select_columns(columns)):
            builder.row(record, f"{folder}: split {name}: row {i + 1}", query_column, passage_column)
        splits[name] = [q for q in builder.qrels if q not in before]
    return builder.finish(splits if isinstance(loaded, datasets.DatasetDict) else None)


def load_ragtune_data(folder: Path) -> PairData:
    """Read back what `splits.save_splits` wrote: the splits' rows (their own split) plus the full corpus."""
    import datasets

    meta = json.loads((folder / DATA_MARKER).read_text())
    corpus_ds = datasets.load_from_disk(str(folder / "corpus"))
    builder = _Builder(str(folder), "ragtune", skip_bad_rows=False)
    for pid, text in zip(corpus_ds["id"], corpus_ds["text"], strict=True):
        builder.add_passage(text, pid)
    dd = datasets.load_from_disk(str(folder))
    splits: dict[str, list[str]] = {}
    for name, ds in dd.items():
        qids: dict[str, None] = {}
        cols = ds.select_columns(["query_id", "query", "positive_id", "score"])
        methods = ds["method"] if "method" in ds.column_names else [""] * len(ds)
        for qid, query, pid, score, method in zip(
            cols["query_id"], cols["query"], cols["positive_id"], cols["score"], methods, strict=True
        ):
            builder.add_query(query, qid)
            builder.add_pair(qid, pid, score)
            if method:
                builder.methods.setdefault(qid, method)
            qids[qid] = None
        splits[name] = list(qids)
    data = builder.finish(splits)
    data.stats = LoadStats(**meta["load_stats"]) if "load_stats" in meta else data.stats
    return data


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "corpus.jsonl").exists():
            return "beir"
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json":
        return "pubmedqa"
    raise RagtuneError(
        f"{path}: cannot tell the format from the name; set format (jsonl, csv, parquet, hf, beir, pubmedqa)"
    )


def resolve_pubmedqa(path: str | None) -> Path:
    """Find PubMedQA's ori_pqal.json: env var, configured path, ../shared/data, a cache, else download it."""
    candidates = [os.environ.get("RAGTUNE_PUBMEDQA"), path, "../shared/data/pubmedqa/ori_pqal.json"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    cache = Path(os.environ.get("RAGTUNE_CACHE_DIR", Path.home() / ".cache" / "ragtune")) / "pubmedqa"
    target = cache / "ori_pqal.json"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(PUBMEDQA_URL, timeout=30) as response:
            payload = response.read()
    except OSError as err:
        raise RagtuneError(
            "PubMedQA's ori_pqal.json was not found (looked at $RAGTUNE_PUBMEDQA, "
            f"{path or 'no configured path'}, ../shared/data/pubmedqa/ori_pqal.json) and downloading "
            f"{PUBMEDQA_URL} failed: {err}"
        ) from err
    target.write_bytes(payload)
    return target


def load_pairs(
    path: str | Path | None,
    format: str = "auto",
    query_column: str = "query",
    passage_column: str = "passage",
    skip_bad_rows: bool = False,
    max_pairs: int | None = None,
    sample_seed: int = 42,
    group_column: str | None = None,
) -> PairData:
    """Load (query, passage) pairs from any supported source.

    Args:
        path: A JSONL/CSV/TSV/Parquet pairs file, a BEIR folder, a saved dataset, a ragtune data folder, or the
            PubMedQA JSON (`format='pubmedqa'` with no path finds, or downloads, it).
        format: "auto" (by extension and folder contents), or one of the formats by name.
        query_column, passage_column: The columns of a pairs file.
        skip_bad_rows: Count and skip empty or malformed rows instead of stopping at the first.
        max_pairs: Keep a seeded random sample of this many pairs.
        sample_seed: The sample's seed.
        group_column: Rows sharing this column's value stay in one split.

    Returns:
        Queries, passages (deduplicated), graded relevance, and the file's own splits when it has them.

    Example:
        >>> data = ragtune.load_pairs("pairs.jsonl")
        >>> len(data.queries), len(data.corpus)
        (40, 40)
    """
    if format == "pubmedqa" and (path is None or not Path(path).exists()):
        path = resolve_pubmedqa(str(path) if path else None)
    if path is None:
        raise RagtuneError("no data path given (data.path in the config, or --data)")
    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"data not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt in ("jsonl", "csv", "parquet"):
        data = load_table(path, fmt, query_column, passage_column, skip_bad_rows, group_column)
    elif fmt == "pubmedqa":
        data = load_pubmedqa(path, skip_bad_rows)
    elif fmt == "beir":
        data = load_beir(path, skip_bad_rows)
    elif fmt == "hf":
        data = load_hf(path, query_column, passage_column, skip_bad_rows, group_column)
    else:
        raise RagtuneError(f"unknown data format {fmt!r}")
    if not data.qrels:
        raise RagtuneError(f"{path}: no usable (query, passage) pairs")
    if max_pairs is not None:
        data = sample_pairs(data, max_pairs, sample_seed)
    return data


def sample_pairs(data: PairData, max_pairs: int, seed: int) -> PairData:
    """A seeded subset of whole queries holding about `max_pairs` pairs.

    The corpus keeps only the kept pairs' passages, unless the source has a corpus of its own (BEIR), whose
    distractors stay: the sample is then a smaller query set over the same corpus.
    """
    qids = sorted(data.qrels)
    random.Random(seed).shuffle(qids)
    kept: list[str] = []
    n = 0
    for q in qids:
        if n >= max_pairs:
            break
        kept.append(q)
        n += len(data.qrels[q])
    keep = set(kept)
    qrels = {q: data.qrels[q] for q in sorted(keep)}
    if data.stats.format == "beir":
        corpus = data.corpus
    else:
        used = {p for rel in qrels.values() for p in rel}
        corpus = {p: t for p, t in data.corpus.items() if p in used}
    splits = {name: [q for q in ids if q in keep] for name, ids in data.splits.items()} if data.splits else None
    stats = LoadStats(**{**data.stats.to_dict(), "skipped_examples": list(data.stats.skipped_examples)})
    stats.pairs_sampled_out = data.stats.pairs - n
    groups = {q: g for q, g in data.groups.items() if q in keep}
    methods = {q: m for q, m in data.methods.items() if q in keep}
    sampled = PairData(corpus, {q: data.queries[q] for q in qrels}, qrels, stats, splits, groups, methods)
    _count(sampled)
    return sampled


def save_beir(data: PairData, folder: str | Path) -> Path:
    """Write `data` as a BEIR folder (plus stats.json), which `load_pairs` reads back unchanged."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for pid, text in data.corpus.items():
            f.write(json.dumps({"_id": pid, "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as f:
        for qid, text in data.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    for old in (folder / "qrels").glob("*.tsv"):
        old.unlink()
    for name, qids in (data.splits or {"all": list(data.qrels)}).items():
        with (folder / "qrels" / f"{name}.tsv").open("w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid, pid, score in data.pairs(qids):
                f.write(f"{qid}\t{pid}\t{score:g}\n")
    meta = {
        "load_stats": data.stats.to_dict(),
        "predefined_splits": data.splits is not None,
        "groups": data.groups,
        "methods": data.methods,
        "train_only": data.train_only,
    }
    (folder / "stats.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_prepared(folder: str | Path) -> PairData:
    """Read back `save_beir`'s folder with the original load statistics and split information."""
    folder = Path(folder)
    meta_file = folder / "stats.json"
    if not meta_file.exists():
        raise RagtuneError(f"{folder}: not a prepared ragtune folder (no stats.json); run `ragtune prepare`")
    meta = json.loads(meta_file.read_text())
    data = load_beir(folder, skip_bad_rows=False)
    data.stats = LoadStats(**meta["load_stats"])
    if not meta["predefined_splits"]:
        data.splits = None
    data.groups = meta.get("groups", {})
    data.methods = meta.get("methods", {})
    data.train_only = meta.get("train_only", [])
    return data


# ---- passages to search (a corpus, with ids and metadata) ----------------------------------------------------


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def _plain(value):
    """JSON-safe metadata values; NaN (pandas' empty cell) is no value."""
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, str | int | float | bool | list | dict) or value is None else str(value)


def load_documents(path: str | Path, text_column: str = "text", id_column: str = "id") -> list[Document]:
    """Passages with ids and metadata: a ragtune data folder, a BEIR folder, a saved dataset, JSONL/CSV/Parquet.

    Columns other than the id and the text become metadata (filterable in the search API). A file without an id
    column gets content-hash ids; a repeated id is an error naming the row.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise RagtuneError(f"corpus not found: {path}")
    if path.is_dir() and (path / DATA_MARKER).exists():
        ds = datasets.load_from_disk(str(path / "corpus"))
        return [Document(i, t) for i, t in zip(ds["id"], ds["text"], strict=True)]
    fmt = detect_format(path)
    if fmt == "beir":
        records = read_jsonl(path / "corpus.jsonl")
        text_column, id_column = "text", "_id"
    elif fmt == "hf":
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise RagtuneError(f"{path}: not a corpus folder ({err})") from err
        if isinstance(ds, datasets.DatasetDict):
            raise RagtuneError(f"{path}: a DatasetDict; point at one split's folder, or a ragtune data folder")
        records = ((f"{path}: row {i + 1}", r) for i, r in enumerate(ds))
    elif fmt == "jsonl":
        records = read_jsonl(path)
    elif fmt in ("csv", "parquet"):
        records = read_frame(path, fmt)
    else:
        raise RagtuneError(f"{path}: not a corpus format ragtune can search (use JSONL, CSV, Parquet or BEIR)")
    docs: dict[str, Document] = {}
    for where, rec in records:
        text = rec.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise RagtuneError(f"{where}: field '{text_column}' is missing or empty")
        text = beir_text(rec.get("title"), text.strip()) if fmt == "beir" else text.strip()
        raw_id = _plain(rec.get(id_column))
        doc_id = str(raw_id) if raw_id is not None else text_id("p", text)
        if doc_id in docs:
            if raw_id is None:
                continue  # the same text twice without ids is one passage
            raise RagtuneError(f"{where}: id {doc_id!r} appears twice (field '{id_column}')")
        meta = {k: _plain(v) for k, v in rec.items() if k not in (text_column, id_column)}
        docs[doc_id] = Document(doc_id, text, {k: v for k, v in meta.items() if v is not None})
    if not docs:
        raise RagtuneError(f"{path}: no passages")
    return list(docs.values())


def load_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> dict[str, str]:
    return {d.id: d.text for d in load_documents(path, text_column, id_column)}


def corpus_cache_dir(path: str | Path) -> Path | None:
    """The embedding cache a ragtune run used for this data folder, so search reuses its vectors."""
    marker = Path(path) / DATA_MARKER
    if marker.exists():
        cache = json.loads(marker.read_text()).get("cache_dir")
        if cache:
            return (Path(path) / cache).resolve()
    return None
