"""How right would pseudo-labels of unlabelled user questions be? Checked against the labels of a BEIR split.

    python benchmarks/pseudo_labels.py --data ../shared/data/medicationqa --split dev \
        --output-json benchmarks/results/pseudo_labels.json

For each question of the split, over the whole corpus: the base model's first passage, BM25's, whether they agree
(`adapt.methods: [pseudo]` keeps only those), and a fused teacher (min-max normalised dense + w * BM25 scores). Each
selection's precision is measured with the split's labels, which the pseudo-labeller itself never reads. Wider
selections (the base model's margin between its first two passages, alone or with agreement) show whether more
questions could be labelled at the same precision.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from output import report

from ragtune.data import load_pairs
from ragtune.embeddings import Encoder
from ragtune.evaluate import DEPTH, bm25_run, dense_run


def _minmax(run: dict[str, float], ids: list[str]) -> np.ndarray:
    values = np.array([run.get(i, 0.0) for i in ids])
    low, high = values.min(), values.max()
    return (values - low) / max(high - low, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--model", default="default")
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    data = load_pairs(args.data)
    split = data.subset(data.splits[args.split])
    depth = min(DEPTH, len(split.corpus))
    dense = dense_run(Encoder(args.model, show_progress=False), split, k=len(split.corpus))
    lexical = bm25_run(split, k=depth)
    ids = list(split.corpus)
    qids = list(split.qrels)

    def right(q: str, pid: str) -> bool:
        return split.qrels[q].get(pid, 0) > 0

    dense_top = {q: max(dense[q], key=dense[q].get) for q in qids}
    bm25_top = {q: max(lexical[q], key=lexical[q].get) for q in qids if lexical[q]}
    agreed = [q for q in qids if bm25_top.get(q) == dense_top[q]]
    out = {
        "data": str(args.data),
        "split": args.split,
        "questions": len(qids),
        "dense_first_right": round(float(np.mean([right(q, dense_top[q]) for q in qids])), 4),
        "agreed": len(agreed),
        "agreed_right": round(float(np.mean([right(q, dense_top[q]) for q in agreed])), 4) if agreed else None,
        "fused_first_right": {},
    }
    for w in (0.1, 0.2, 0.3, 0.5):
        hits = []
        for q in qids:
            fused = (1 - w) * _minmax(dense[q], ids) + w * _minmax(lexical[q], ids)
            hits.append(right(q, ids[int(np.argmax(fused))]))
        out["fused_first_right"][str(w)] = round(float(np.mean(hits)), 4)
    margin = {}
    for q in qids:
        scores = sorted(dense[q].values(), reverse=True)
        margin[q] = scores[0] - scores[1] if len(scores) > 1 else scores[0]
    out["selections"] = {}
    for t in (0.05, 0.1, 0.15):
        for name, keep in (
            (f"margin > {t}", lambda q, t=t: margin[q] > t),
            (f"agreed or margin > {t}", lambda q, t=t: bm25_top.get(q) == dense_top[q] or margin[q] > t),
        ):
            chosen = [q for q in qids if keep(q)]
            hits = sum(right(q, dense_top[q]) for q in chosen)
            out["selections"][name] = {
                "labelled": len(chosen),
                "right": hits,
                "precision": round(hits / len(chosen), 4) if chosen else None,
            }
    out["selections"]["agreed"] = {
        "labelled": len(agreed),
        "right": sum(right(q, dense_top[q]) for q in agreed),
        "precision": out["agreed_right"],
    }
    report(out, args.output_json)


if __name__ == "__main__":
    main()
