"""Peak memory of a training step: CachedMNRL at batch 256 vs MNRL at batch 16 (and MNRL at 256 for scale).

    python benchmarks/train_memory.py --data runs/medquad/data --output-json benchmarks/results/train_memory.json

Each configuration trains `--steps` optimizer steps of all-MiniLM-L6-v2 on (query, positive, negative) rows in its
own process, through ragtune's loss and argument builders; the process's peak RSS is recorded (this is a CPU run, so
RSS is where activations live). GradCache keeps only one mini-batch of activations at a time, so its memory should
track the mini-batch, not the batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "mnrl-16": {"loss": "mnrl", "batch_size": 16},
    "cached-mnrl-256 (mini-batch 16)": {"loss": "cached-mnrl", "batch_size": 256, "mini_batch_size": 16},
    "mnrl-256": {"loss": "mnrl", "batch_size": 256},
}


def measure(name: str, data: Path, steps: int, seq: int) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformerTrainer

    from ragtune.config import TrainConfig
    from ragtune.embeddings import load_model
    from ragtune.train import build_loss, training_arguments

    config = TrainConfig(max_seq_length=seq, **CONFIGS[name])
    ds = datasets.load_from_disk(str(data))["train"].select_columns(["query", "positive", "negative"])
    ds = ds.select(range(min(len(ds), steps * config.batch_size)))
    model = load_model("default", seq)
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(config, Path(tmp), len(ds), has_validation=False)
        args.save_strategy = "no"
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=build_loss(model, config))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": round(peak), "steps": trainer.state.global_step, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/medquad/data"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--output-json", type=Path, default=Path("benchmarks/results/train_memory.json"))
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.data, args.steps, args.max_seq_length)))
        return
    result = {"steps": args.steps, "max_seq_length": args.max_seq_length, "data": str(args.data)}
    for name in CONFIGS:
        command = [sys.executable, __file__, "--child", name, "--data", str(args.data), "--steps", str(args.steps)]
        command += ["--max-seq-length", str(args.max_seq_length)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, result[name], flush=True)
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
