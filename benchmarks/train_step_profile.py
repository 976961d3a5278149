"""Where a training step's time goes: one forward + backward + AdamW step of all-MiniLM-L6-v2, by operator.

    python benchmarks/train_step_profile.py --output-json benchmarks/results/train_step_profile.json

One batch of `--batch-size` texts padded to `--max-seq-length` tokens (one column of an MNRL batch), timed over
`--steps` steps after 2 warm-up steps, with the model built three ways through `ragtune.train.load_training_model`:
the model's own attention dropout (`attention_dropout: model`, 0.1), ragtune's default (none), and no dropout at all
(hidden dropout off too; not a ragtune setting, for reference). Each way also gets one step under torch.profiler:
its operators with the largest share of CPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

WAYS = ("model", "attention-off", "all-off")


def profile(way: str, batch: int, seq: int, steps: int, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ragtune.config import TrainConfig
    from ragtune.train import load_training_model

    torch.manual_seed(0)
    model = load_training_model(
        "default", TrainConfig(max_seq_length=seq, attention_dropout=0.0 if way != "model" else "model")
    )
    if way == "all-off":
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.train()
    texts = [f"text {i} " + "word " * (2 * seq) for i in range(batch)]  # long enough to fill max_seq_length
    features = {k: v for k, v in model.preprocess(texts).items() if isinstance(v, torch.Tensor)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def step() -> None:
        embeddings = model(dict(features))["sentence_embedding"]
        embeddings.pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "seconds_per_step": round(seconds, 3),
        "top_operators": {e.key: round(e.self_cpu_time_total / total, 3) for e in events[:top]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top", type=int, default=8, help="operators listed per way")
    parser.add_argument("--output-json", type=Path, default=Path("benchmarks/results/train_step_profile.json"))
    args = parser.parse_args()
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k != "output_json"}}
    for way in WAYS:
        result[way] = profile(way, args.batch_size, args.max_seq_length, args.steps, args.top)
        print(way, json.dumps(result[way], indent=2), flush=True)
    for way in WAYS[1:]:
        result[f"{way}_speedup"] = round(result["model"]["seconds_per_step"] / result[way]["seconds_per_step"], 2)
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.endswith("speedup")}))


if __name__ == "__main__":
    main()
