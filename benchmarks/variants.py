"""The same run with one setting varied, every tuned model compared on the same held-out test queries.

    python benchmarks/variants.py negatives --config examples/medquad.yaml --set train.max_seq_length=128
    python benchmarks/variants.py batch-size --config examples/medquad.yaml --set train.max_seq_length=128
    python benchmarks/variants.py batching --config examples/medquad.yaml --set train.max_seq_length=128 \
        --out-root runs/batch-size
    python benchmarks/variants.py precision --config examples/medquad.yaml --set train.max_seq_length=128
    python benchmarks/variants.py attention-dropout --config examples/medquad.yaml --set train.max_seq_length=128

Presets: `negatives` varies the `mining` section (least-similar vs hard vs hard + guards); `batch-size` varies the
effective batch of the loss (16 with MNRL; 64 and 256 with CachedMNRL in mini-batches of 16); `batching` trains
batch 16 with sentence-transformers' no-duplicates batches vs ragtune's length-grouped ones (`--out-root
runs/batch-size` reuses batch-size's batch-16 run, which is the same run); `precision` trains in float32 vs under
bfloat16 autocast (`train.precision`; on a CPU with AMX the bf16 matrix products run on its tiles);
`attention-dropout` trains with the model's own attention dropout (0.1 for all-MiniLM-L6-v2) vs none
(`train.attention_dropout`, ragtune's default). Everything
else (data, split, training settings; `--set key=value` changes all variants alike) is the same. The tuned models
are compared on the same test queries over the full corpus with `ragtune compare` (95% CIs, paired tests against the
base model).
The variants share one embedding cache, so the base model encodes each text once. Results go to
benchmarks/results/<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

GUARDS = {"range_min": 0, "range_max": 20, "margin": 0.05, "max_cosine_to_positive": 0.98}
PRESETS = {
    "negatives": {
        "least-similar": {"mining": {"strategy": "least-similar"}},
        "hard": {"mining": {"strategy": "hard", "range_min": 0, "range_max": 20, "margin": None}},
        "hard+guards": {"mining": {"strategy": "hard", **GUARDS}},
    },
    "batch-size": {
        "batch-16": {"train": {"loss": "mnrl", "batch_size": 16}},
        "batch-64": {"train": {"loss": "cached-mnrl", "batch_size": 64, "mini_batch_size": 16}},
        "batch-256": {"train": {"loss": "cached-mnrl", "batch_size": 256, "mini_batch_size": 16}},
    },
    "precision": {
        "fp32": {"train": {"precision": "fp32"}},
        "bf16": {"train": {"precision": "bf16"}},
    },
    "attention-dropout": {
        "model-0.1": {"train": {"attention_dropout": "model"}},
        "off": {"train": {"attention_dropout": 0.0}},
    },
    "batching": {
        "batch-16": {"train": {"loss": "mnrl", "batch_size": 16}},
        "batch-16-grouped": {"train": {"loss": "mnrl", "batch_size": 16, "group_by_length": True}},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=list(PRESETS))
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out-root", type=Path, help="default: runs/<preset>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every variant")
    parser.add_argument("--output-json", type=Path, help="default: benchmarks/results/<preset>.json")
    args = parser.parse_args()
    variants = PRESETS[args.preset]
    args.out_root = args.out_root or Path("runs") / args.preset
    args.output_json = args.output_json or Path("benchmarks/results") / f"{args.preset}.json"

    from ragtune.config import load_config, set_values

    base_config = yaml.safe_load(args.config.read_text())
    base_config["data"]["path"] = str(Path(load_config(args.config).data.path).resolve())  # the variants live elsewhere
    set_values(base_config, args.overrides)
    args.out_root.mkdir(parents=True, exist_ok=True)
    shared_cache = (args.out_root / "cache").resolve()
    shared_cache.mkdir(exist_ok=True)
    runs = {}
    for name, changes in variants.items():
        out = args.out_root / name
        out.mkdir(exist_ok=True)
        if not (out / "cache").exists():
            (out / "cache").symlink_to(shared_cache)
        config = {**base_config, "output_dir": str(out)}
        for section, values in changes.items():
            config[section] = {**base_config.get(section, {}), **values}
        config_file = args.out_root / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        start = time.perf_counter()
        command = [sys.executable, "-m", "ragtune", "run", str(config_file), "--allow-regression"]
        subprocess.run(command, check=True)
        mined = json.loads((out / "mined" / "stats.json").read_text())["stats"]
        log = json.loads((out / "model" / "training_log.json").read_text())
        runs[name] = {
            "wall_seconds": round(time.perf_counter() - start, 1),
            "train_seconds": next((h["train_runtime"] for h in log if "train_runtime" in h), None),
            "mining": {k: mined.get(k) for k in ("candidates_removed", "mean_query_negative_cosine")},
            "mean_query_positive_cosine": mined.get("mean_query_positive_cosine"),
        }

    models = ["default"] + [str(args.out_root / name / "model") for name in variants]
    compare_json = args.out_root / "compare.json"
    first = args.out_root / next(iter(variants)) / "data"  # every variant has the same test queries and corpus
    command = [sys.executable, "-m", "ragtune", "compare", *models, "--data", str(first)]
    command += ["--split", "test", "--output-json", str(compare_json), "--cache-dir", str(shared_cache)]
    subprocess.run(command, check=True)
    compared = json.loads(compare_json.read_text())
    result = {
        "command": " ".join(["python", "benchmarks/variants.py", args.preset, "--config", str(args.config)])
        + "".join(f" --set {o}" for o in args.overrides),
        "variants": variants,
        "runs": runs,
        "compare": compared,
    }
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result, list(variants)))


def markdown(result: dict, names: list[str]) -> str:
    compared = result["compare"]
    systems = compared["systems"]
    label = {systems[0]: "base (no fine-tuning)", "bm25": "BM25"}
    label.update({s: f"tuned, {n}" for s, n in zip(systems[1:], names, strict=False)})
    diff = {c["system"]: c for c in compared["comparisons"] if c["metric"] == "ndcg@10"}
    lines = ["| model | NDCG@10 [95% CI] | vs base (NDCG@10 points) |", "|---|---:|---:|"]
    for s in systems:
        lo, hi = compared["ci95"][s]["ndcg@10"]
        vs = diff.get(s)
        change = f"{vs['delta'] * 100:+.2f} [{vs['ci_low'] * 100:+.2f}, {vs['ci_high'] * 100:+.2f}]" if vs else ""
        lines.append(f"| {label.get(s, s)} | {compared['metrics'][s]['ndcg@10']:.4f} [{lo:.4f}, {hi:.4f}] | {change} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
