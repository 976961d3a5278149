"""Split rows into train/validation/test by query and save them as a `DatasetDict` beside the full corpus.

Splitting is by query, not by row: a query with several positives never has rows in two splits, so a test query is
never trained on. A dataset's own split (BEIR qrels files, a DatasetDict's splits) is kept when it has a test part.

Layout of the saved folder (readable with `datasets.load_from_disk(folder)`):
    dataset_dict.json, train/, validation/, test/   one row per (query, positive) with its negatives
    corpus/                                         every distinct passage (id, text): evaluation searches all of it
    ragtune_data.json                               counts, the split settings and the load statistics
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from ragtune.config import SplitConfig
from ragtune.data import DATA_MARKER, PairData
from ragtune.errors import RagtuneError
from ragtune.mining import Row

SPLITS = ("train", "validation", "test")


def split_queries(data: PairData, config: SplitConfig) -> tuple[dict[str, list[str]], str]:
    """Query ids per split, and a word on how they were chosen ('predefined' or 'random')."""
    own = data.splits or {}
    if config.use_predefined and own.get("test"):
        test = list(dict.fromkeys(own["test"]))
        taken = set(test)
        validation = [q for q in own.get("validation", own.get("dev", [])) if q not in taken]
        taken |= set(validation)
        rest = [q for q in (own.get("train") or list(data.qrels)) if q not in taken]
        if not validation and config.validation > 0:
            rest = sorted(rest)
            random.Random(config.seed).shuffle(rest)
            n_val = round(len(rest) * config.validation / (config.train + config.validation))
            validation, rest = rest[:n_val], rest[n_val:]
        return {"train": rest, "validation": validation, "test": test}, "predefined"
    qids = sorted(data.qrels)
    random.Random(config.seed).shuffle(qids)
    n = len(qids)
    n_test = max(1, round(n * config.test))
    n_val = round(n * config.validation)
    if n - n_test - n_val < 1:
        raise RagtuneError(f"only {n} queries: too few to split into train/validation/test")
    return {
        "train": qids[n_test + n_val :],
        "validation": qids[n_test : n_test + n_val],
        "test": qids[:n_test],
    }, "random"


def rows_to_records(data: PairData, rows: list[Row]) -> list[dict[str, Any]]:
    """Training columns first (query, positive, negative...), ids after: the trainer reads columns in order."""
    n_neg = max((len(r.negative_ids) for r in rows), default=0)
    names = ["negative"] if n_neg == 1 else [f"negative_{i + 1}" for i in range(n_neg)]
    records = []
    for r in rows:
        rec: dict[str, Any] = {"query": data.queries[r.query_id], "positive": data.corpus[r.positive_id]}
        for name, nid in zip(names, r.negative_ids, strict=True):
            rec[name] = data.corpus[nid]
        rec.update({"query_id": r.query_id, "positive_id": r.positive_id, "score": r.score})
        for name, nid in zip(names, r.negative_ids, strict=True):
            rec[f"{name}_id"] = nid
        records.append(rec)
    return records


def save_splits(
    data: PairData,
    rows: list[Row],
    split_ids: dict[str, list[str]],
    folder: str | Path,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    import datasets

    datasets.disable_progress_bars()
    folder = Path(folder)
    by_query: dict[str, list[Row]] = {}
    for r in rows:
        by_query.setdefault(r.query_id, []).append(r)
    parts = {}
    for name in SPLITS:
        split_rows = [r for q in split_ids.get(name, []) for r in by_query.get(q, [])]
        records = rows_to_records(data, split_rows)
        if records:
            parts[name] = datasets.Dataset.from_list(records)
        else:
            template = rows_to_records(data, rows[:1])[0]
            parts[name] = datasets.Dataset.from_dict({k: [] for k in template})
    dd = datasets.DatasetDict(parts)
    folder.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(folder))
    corpus = datasets.Dataset.from_dict({"id": list(data.corpus), "text": list(data.corpus.values())})
    corpus.save_to_disk(str(folder / "corpus"))
    meta = {
        "splits": {name: {"queries": len(split_ids.get(name, [])), "rows": len(parts[name])} for name in SPLITS},
        "corpus": len(data.corpus),
        "load_stats": data.stats.to_dict(),
        **(extra_meta or {}),
    }
    (folder / DATA_MARKER).write_text(json.dumps(meta, indent=2))
    return folder


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> None:
    """Push the saved splits and corpus; only ever called when the user names a repo. Token from HF_TOKEN."""
    import datasets

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise RagtuneError("--push-to-hub needs a Hugging Face token in the HF_TOKEN environment variable")
    folder = Path(folder)
    try:
        datasets.load_from_disk(str(folder)).push_to_hub(repo_id, token=token, private=private)
        datasets.load_from_disk(str(folder / "corpus")).push_to_hub(
            repo_id, config_name="corpus", token=token, private=private
        )
    except Exception as err:  # the hub client raises many types; never echo the token
        raise RagtuneError(f"pushing to {repo_id} failed: {str(err).replace(token, '***')}") from err
