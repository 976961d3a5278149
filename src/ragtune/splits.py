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
from ragtune.data import DATA_MARKER, PairData, Row, normalise
from ragtune.errors import RagtuneError

SPLITS = ("train", "validation", "test")


def split_queries(data: PairData, config: SplitConfig) -> tuple[dict[str, list[str]], str]:
    """Query ids per split, and a word on how they were chosen ('predefined' or 'random by <unit>').

    Train-only queries (`data.train_only`: pseudo-labelled or synthetic pairs added by `adapt`) always train."""
    if data.train_only:
        extra = set(data.train_only)
        labelled = data.subset([q for q in data.qrels if q not in extra])
        labelled.splits = data.splits
        split_ids, method = split_queries(labelled, config)
        split_ids["train"] = split_ids["train"] + [q for q in data.qrels if q in extra]
        return split_ids, method
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
    units = _units(data, config.split_by)
    random.Random(config.seed).shuffle(units)
    n = len(data.qrels)
    targets = {"test": max(1, round(n * config.test)), "validation": round(n * config.validation)}
    if n - sum(targets.values()) < 1 or len(units) < 2:
        raise RagtuneError(f"only {n} queries in {len(units)} {config.split_by} units: too few to split")
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for unit in units:  # whole units fill test, then validation; the rest trains
        name = next((k for k in ("test", "validation") if len(out[k]) < targets[k]), "train")
        out[name] += unit
    return out, f"random by {config.split_by}"


def _units(data: PairData, split_by: str) -> list[list[str]]:
    """Groups of queries that must share a split: connected through a passage or a group value."""
    parent = {q: q for q in sorted(data.qrels)}

    def find(q: str) -> str:
        while parent[q] != q:
            parent[q] = parent[parent[q]]
            q = parent[q]
        return q

    if split_by != "pair":
        first: dict[str, str] = {}
        for q in sorted(data.qrels):
            if split_by == "passage":
                keys = {normalise(data.corpus[p]) for p in data.qrels[q]}
            else:
                keys = set(data.groups.get(q, []))
            for key in keys:
                if key in first:
                    parent[find(q)] = find(first[key])
                else:
                    first[key] = q
    units: dict[str, list[str]] = {}
    for q in sorted(data.qrels):
        units.setdefault(find(q), []).append(q)
    return list(units.values())


def leakage_report(
    data: PairData, split_ids: dict[str, list[str]], vectors=None, threshold: float = 0.95
) -> dict[str, Any]:
    """Queries and positive passages that appear, identically or nearly, in two splits.

    `vectors(texts) -> np.ndarray` (normalised embeddings, e.g. a cached `Encoder.encode`) enables the
    near-identical check; identical means equal after lower-casing and collapsing whitespace.
    """

    def texts(name: str, kind: str) -> list[str]:
        if kind == "query":
            return list(dict.fromkeys(data.queries[q] for q in split_ids.get(name, [])))
        return list(dict.fromkeys(data.corpus[p] for q in split_ids.get(name, []) for p in data.qrels[q]))

    report: dict[str, Any] = {"threshold": threshold, "pairs": {}}
    for a, b in (("test", "train"), ("validation", "train"), ("test", "validation")):
        for kind in ("query", "passage"):
            left, right = texts(a, kind), texts(b, kind)
            right_norm = {normalise(t) for t in right}
            identical = [t for t in left if normalise(t) in right_norm]
            near: list[dict[str, Any]] = []
            if vectors is not None and left and right:
                from ragtune.faiss_search import flat_index, search_chunked

                scores, ids = search_chunked(flat_index(vectors(right)), vectors(left), 1)
                for t, score, j in zip(left, scores[:, 0], ids[:, 0], strict=True):
                    if score >= threshold and normalise(t) not in right_norm:
                        near.append({"text": t[:200], "other": right[int(j)][:200], "cosine": round(float(score), 4)})
            report["pairs"][f"{a}/{b}/{kind}"] = {
                "identical": len(identical),
                "near_identical": len(near),
                "identical_examples": [t[:200] for t in identical[:5]],
                "near_examples": near[:5],
            }
    totals = {k: v["identical"] + v["near_identical"] for k, v in report["pairs"].items()}
    leaks = {k: n for k, n in totals.items() if n}
    report["summary"] = (
        "none found"
        if not leaks
        else "; ".join(
            f"{n} {k.split('/')[2]} text(s) of {k.split('/')[0]} also in {k.split('/')[1]}" for k, n in leaks.items()
        )
    ) + (f" (identical or cosine ≥ {threshold})" if vectors is not None else " (identical only)")
    return report


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
        if data.methods:
            rec["method"] = data.methods.get(r.query_id, "")
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
        if records:  # an empty split is left out: `datasets` writes no data file for it, and cannot read it back
            parts[name] = datasets.Dataset.from_list(records)
    dd = datasets.DatasetDict(parts)
    folder.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(folder))
    corpus = datasets.Dataset.from_dict({"id": list(data.corpus), "text": list(data.corpus.values())})
    corpus.save_to_disk(str(folder / "corpus"))
    meta = {
        "splits": {
            name: {"queries": len(split_ids.get(name, [])), "rows": len(parts[name]) if name in parts else 0}
            for name in SPLITS
        },
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


def trained_on(trained: PairData, evaluated: PairData) -> dict[str, Any]:
    """Eval-set questions the tuned model has met in training: asked in the same words by a training question of
    any source, or answered by a passage that was the positive of a question a person labelled (`labelled` pairs,
    `judged` user questions). Synthetic pairs (ict, crop, title) train on the users' passages too, but never with a
    user's question, so their passages are not counted."""
    train = (trained.splits or {}).get("train", [])
    asked = {normalise(trained.queries[q]) for q in train}
    by_people = (q for q in train if trained.methods.get(q, "labelled") in ("labelled", "judged"))
    answered = {normalise(trained.corpus[p]) for q in by_people for p in trained.qrels[q]}
    same_question = {q for q in evaluated.qrels if normalise(evaluated.queries[q]) in asked}
    same_answer = {
        q for q in evaluated.qrels if any(normalise(evaluated.corpus[p]) in answered for p in evaluated.qrels[q])
    }
    return {
        "queries": len(evaluated.qrels),
        "same_question": len(same_question),
        "same_answer": len(same_answer),
        "either": len(same_question | same_answer),
        "seen_ids": sorted(same_question | same_answer),
    }
