"""Could brand names explain real questions' misses? Counts the questions a brand-to-generic mapping could help.

    python benchmarks/brand_names.py --data ../shared/data/medicationqa --split dev --split test \
        --output-json benchmarks/results/brand_names.json

The mapping comes from the corpus itself, where drug leaflets write "diazepam (Valium)" or "ibuprofen (Advil,
Motrin)". A question can only gain from it when it names a brand that its relevant passage does not contain while
that passage contains one of the brand's generic names (e.g. "how does valium affect the brain", answered by a
passage on diazepam). No model runs: this decides whether brand/generic augmentation is worth a training run.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from output import report

from ragtune.data import load_pairs

# A lower-case generic name, then a parenthesis of capitalised brand names: "naproxen (Aleve, Naprosyn)",
# "ipratropium (Atrovent, in Combivent, DuoNeb)".
LEAFLET = re.compile(r"\b([a-z][a-z-]{3,}) \(((?:in )?[A-Z][\w-]*®?(?:, (?:in )?[A-Z][\w-]*®?)*)\)")


def brand_to_generics(texts: list[str]) -> dict[str, set[str]]:
    """Every brand named in parentheses after a generic name, lower-cased, with the generic names it follows."""
    mapping: dict[str, set[str]] = defaultdict(set)
    for text in texts:
        for generic, brands in LEAFLET.findall(text):
            for brand in brands.split(", "):
                brand = brand.removeprefix("in ").rstrip("®").lower()
                if brand != generic:
                    mapping[brand].add(generic)
    return dict(mapping)


def helped(question: str, passages: list[str], mapping: dict[str, set[str]]) -> list[str]:
    """The brands of `question` that only a brand-to-generic mapping links to one of its relevant `passages`."""
    words = set(re.findall(r"[a-z][a-z-]+", question.lower()))
    texts = [p.lower() for p in passages]
    out = []
    for brand in sorted(words & mapping.keys()):
        if not any(brand in t for t in texts) and any(g in t for g in mapping[brand] for t in texts):
            out.append(brand)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", action="append", required=True)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    data = load_pairs(args.data)
    mapping = brand_to_generics(list(data.corpus.values()))
    out: dict = {"data": str(args.data), "brands": len(mapping), "splits": {}}
    for name in args.split:
        split = data.subset(data.splits[name])
        hits = {}
        for qid, relevant in split.qrels.items():
            passages = [split.corpus[p] for p, grade in relevant.items() if grade > 0 and p in split.corpus]
            brands = helped(split.queries[qid], passages, mapping)
            if brands:
                hits[qid] = {"question": split.queries[qid], "brands": brands}
        out["splits"][name] = {"questions": len(split.qrels), "helped": len(hits), "examples": hits}
    report(out, args.output_json)


if __name__ == "__main__":
    main()
