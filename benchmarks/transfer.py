"""Recipes judged where users are: one row per finished run, NDCG@10 on its own test split and on each eval set.

    python benchmarks/transfer.py --run "pseudo=runs/medquad-users" --run "synthetic=runs/medquad-synth" \
        --output-json benchmarks/results/transfer.json --markdown benchmarks/results/transfer.md

Each `--run NAME=FOLDER` is a finished `ragtune run` (its `results.json`); the command that made it is read from the
run's resolved `config.yaml`. `--append` keeps the rows already in `--output-json` (runs measured in earlier
sessions, whose folders are gone) and adds or replaces the named ones; `--cpu` records where the new runs ran. Every
value comes with its 95% interval; the differences are tuned − base, paired over the same queries, with their
interval and p.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from output import cpu_name, report

HEADLINE = "ndcg@10"


def _diff(comparisons: list[dict], baseline: str = "base") -> dict:
    c = next(c for c in comparisons if (c["baseline"], c["system"], c["metric"]) == (baseline, "tuned", HEADLINE))
    return {"delta": c["delta"], "ci": [c["ci_low"], c["ci_high"]], "p": c["p_value"]}


def row(name: str, folder: Path, cpu: str) -> dict:
    results = json.loads((folder / "results.json").read_text())
    sets = {
        "own test split": {
            "queries": results["test_queries"],
            "base": results["metrics"]["base"][HEADLINE],
            "tuned": results["metrics"]["tuned"][HEADLINE],
            "tuned_vs_base": _diff(results["comparisons"]),
        }
    }
    for set_name, r in results.get("eval_sets", {}).items():
        # A set partly met in training (judged user questions) also without those questions.
        both = [(set_name, r)] + ([(f"{set_name}, not met in training", r["unseen"])] if r.get("unseen") else [])
        for name_of, found in both:
            sets[name_of] = {
                "queries": found["queries"],
                "base": found["metrics"]["base"][HEADLINE],
                "tuned": found["metrics"]["tuned"][HEADLINE],
                "bm25": found["metrics"]["bm25"][HEADLINE],
                "tuned_vs_base": _diff(found["comparisons"]),
            }
    return {
        "name": name,
        "run": str(folder),
        "cpu": cpu,
        "training_pairs_by_source": results.get("training_pairs_by_source"),
        "sets": sets,
    }


def markdown(rows: list[dict]) -> str:
    names = list(dict.fromkeys(n for r in rows for n in r["sets"]))
    head = "| recipe | training pairs | " + " | ".join(f"{n}: tuned − base [95% CI]" for n in names) + " |"
    lines = [head, "|---|---|" + "---:|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            s = r["sets"].get(n)
            if s is None:
                cells.append("–")
                continue
            d = s["tuned_vs_base"]
            cells.append(
                f"{s['base']:.4f} → {s['tuned']:.4f}: {d['delta'] * 100:+.2f} "
                f"[{d['ci'][0] * 100:+.2f}, {d['ci'][1] * 100:+.2f}], p {d['p']:.3f}"
            )
        sources = ", ".join(f"{k} {v}" for k, v in (r["training_pairs_by_source"] or {}).items())
        lines.append(f"| {r['name']} | {sources} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=FOLDER of a finished run")
    parser.add_argument("--output-json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--append", action="store_true", help="keep the rows already in --output-json")
    parser.add_argument("--cpu", default=cpu_name(), help="the CPU the new runs ran on (default: this machine's)")
    args = parser.parse_args()
    new = [row(*item.split("=", 1)[:1], Path(item.split("=", 1)[1]), args.cpu) for item in args.run]
    rows = []
    if args.append and args.output_json and args.output_json.exists():
        named = {r["name"] for r in new}
        rows = [r for r in json.loads(args.output_json.read_text())["rows"] if r["name"] not in named]
    rows += new
    table = markdown(rows)
    report({"rows": rows, "table": table}, args.output_json)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
