"""Training throughput: ragtune vs a plain sentence-transformers script, as a share of this CPU's matmul peak.

    python benchmarks/train_throughput.py --data runs/medquad/data --steps 12 \
        --output-json benchmarks/results/train_throughput.json

Child processes, one after another, each alone on the machine: (1) the float32 and bfloat16 matmul peaks
(torch.mm of 4096x4096, best of 6), (2) a plain SentenceTransformerTrainer script (MNRL, no-duplicates batches),
(3) `ragtune.train` with its defaults (no attention dropout: the plain script keeps the model's 0.1), (4) the same
with the model's attention dropout (the plain script's work exactly), (5) with `group_by_length`; on request
(`--trainers`) also torch.compile, and both trainers under bfloat16 autocast (`-bf16`, measured against the
bfloat16 peak). `--repeats R` runs R rounds of all trainers and reports each trainer's median run, every round's
samples/s and the per-round ratios to plain. All trainers get the same model (all-MiniLM-L6-v2), data (query,
positive, negative), batch size, sequence length and learning-rate schedule. Each training step is timed by a
callback (evaluation and saving excluded) and the first 2 steps are dropped as warm-up. Useful FLOPs count the
non-padding tokens of the texts each timed step encoded (a hook on the model counts them): per text 6 x
(non-embedding parameters) x tokens for the linear layers plus 6 x layers x 2 x tokens^2 x width for attention
(forward + backward = 3x forward), so padding a batch makes it slower without making it look busier.
`computed_gflops` counts the padded lengths instead: how fast the kernels ran, whatever the batches' padding (the
trainers draw different batches); `shortcut_gflops` is the common shortcut 6 x all parameters x padded tokens, which
counts the embedding lookup as if it were a matrix product.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS_SKIPPED = 2
TRAINERS = (
    "plain",
    "ragtune",
    "ragtune-attn-dropout",
    "ragtune-grouped",
    "ragtune-grouped-compiled",
    "plain-bf16",
    "ragtune-bf16",
)
# -attn-dropout: train.attention_dropout: model (the model's 0.1, as the plain script trains: the same work);
# -grouped: train.group_by_length; -compiled: train.torch_compile as well; -bf16: bfloat16 autocast (train.precision)
DEFAULT_TRAINERS = TRAINERS[:4]


def matmul_peak() -> dict:
    """float32 and bfloat16 torch.mm of 4096x4096, best of 6 each (bfloat16 runs on AMX tiles where the CPU has them,
    so a bf16 trainer is measured against the bf16 peak)."""
    import torch

    peaks = {}
    for name, dtype in (("gflops", torch.float32), ("bf16_gflops", torch.bfloat16)):
        a = torch.randn(4096, 4096).to(dtype)
        best = float("inf")
        for _ in range(6):
            start = time.perf_counter()
            torch.mm(a, a)
            best = min(best, time.perf_counter() - start)
        peaks[name] = round(2 * 4096**3 / best / 1e9, 1)
    return peaks | {"threads": torch.get_num_threads()}


class StepTimer:
    """A TrainerCallback that times each optimizer step and counts the non-padding tokens the model saw in it."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self.tokens: list[list[int]] = []  # per step: the non-padding length of every text encoded
                self.padded: list[list[int]] = []  # per step: the padded length of every text encoded
                self.start = 0.0

            def on_train_begin(self, args, state, control, model=None, **kw):
                def count(module, args, kwargs):
                    features = args[0] if args else kwargs.get("features", {})
                    if module.training and "attention_mask" in features:
                        mask = features["attention_mask"]
                        self.tokens[-1].extend(mask.sum(dim=1).tolist())
                        self.padded[-1].extend([mask.shape[1]] * mask.shape[0])

                model[0].register_forward_pre_hook(count, with_kwargs=True)  # the tokenized batch, per column

            def on_step_begin(self, args, state, control, **kw):
                self.tokens.append([])
                self.padded.append([])
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self.start)

        return _Timer()


def useful_gflop(model, lengths: list[int]) -> float:
    """Useful training FLOPs (GFLOP) of encoding texts of these non-padding lengths, forward and backward."""
    cfg = model[0].auto_model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    dense = sum(p.numel() for p in model.parameters()) - embed
    return sum(6 * dense * t + 6 * cfg.num_hidden_layers * 2 * t * t * cfg.hidden_size for t in lengths) / 1e9


def run_trainer(which: str, data: Path, steps: int, batch: int, seq: int) -> dict:
    import datasets

    from ragtune.embeddings import load_model

    ds = datasets.load_from_disk(str(data))["train"]
    rows = steps * batch
    timer = StepTimer()
    bf16 = which.endswith("-bf16")
    if which.startswith("plain"):
        import torch
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        model = load_model("default", seq)
        train_ds = ds.select_columns(["query", "positive", "negative"])
        with tempfile.TemporaryDirectory() as tmp:
            args = SentenceTransformerTrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=batch,
                max_steps=steps,
                learning_rate=2e-5,
                warmup_steps=0.1,
                batch_sampler=BatchSamplers.NO_DUPLICATES,
                save_strategy="no",
                report_to="none",
                seed=42,
                bf16=bf16,
                use_cpu=bf16 and not torch.cuda.is_available(),  # the trainer refuses bf16 on a CPU otherwise
            )
            trainer = SentenceTransformerTrainer(
                model=model,
                args=args,
                train_dataset=train_ds,
                loss=MultipleNegativesRankingLoss(model),
                callbacks=[timer],
            )
            trainer.train()
    else:
        from ragtune.config import TrainConfig
        from ragtune.train import train

        config = TrainConfig(
            epochs=rows / len(ds),
            batch_size=batch,
            max_seq_length=seq,
            evals_per_epoch=1,
            group_by_length=which.startswith("ragtune-grouped"),
            torch_compile=which.endswith("-compiled"),
            precision="bf16" if bf16 else "fp32",
            attention_dropout="model" if which == "ragtune-attn-dropout" else 0.0,
        )
        with tempfile.TemporaryDirectory() as tmp:
            train("default", data, Path(tmp), config, resume=False, callbacks=[timer])
        model = load_model("default", seq)
    times = timer.times[STEPS_SKIPPED:]
    timed = slice(STEPS_SKIPPED, STEPS_SKIPPED + len(times))
    lengths = [t for step in timer.tokens[timed] for t in step]
    padded = [t for step in timer.padded[timed] for t in step]
    seconds = sum(times)
    return {
        "steps_timed": len(times),
        "seconds_per_step": round(seconds / len(times), 3),
        "samples_per_second": round(batch * len(times) / seconds, 2),
        "useful_gflop_per_row": round(useful_gflop(model, lengths) / (batch * len(times)), 2),
        "useful_gflops": round(useful_gflop(model, lengths) / seconds, 1),
        "padding_share": round(1 - sum(lengths) / sum(padded), 3),
        # The same count over padded lengths: how fast the kernels ran, whatever the batches' padding.
        "computed_gflops": round(useful_gflop(model, padded) / seconds, 1),
        # The shortcut count (6 x all parameters x padded tokens, embedding table included, attention left out),
        # only to relate this run to figures measured that way.
        "shortcut_gflops": round(6 * sum(p.numel() for p in model.parameters()) * sum(padded) / seconds / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/medquad/data"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--output-json", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(DEFAULT_TRAINERS))
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of all trainers (order reversed every other round); medians"
    )
    parser.add_argument("--child", choices=["peak", *TRAINERS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "peak":
        print(json.dumps(matmul_peak()))
        return
    if args.child:
        print(json.dumps(run_trainer(args.child, args.data, args.steps, args.batch_size, args.max_seq_length)))
        return

    def child(which: str) -> dict:
        command = [sys.executable, __file__, "--child", which, "--data", str(args.data), "--steps", str(args.steps)]
        command += ["--batch-size", str(args.batch_size), "--max-seq-length", str(args.max_seq_length)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:  # keep the other trainers' measurements
            print(f"{which} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
            return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
        return json.loads(out.stdout.strip().splitlines()[-1])

    peak = child("peak")
    result = {"settings": vars(args) | {"data": str(args.data), "output_json": str(args.output_json)}, "peak": peak}
    runs: dict[str, list[dict]] = {which: [] for which in args.trainers}
    for round_ in range(args.repeats):  # reversed every other round, so no trainer always runs first
        for which in args.trainers if round_ % 2 == 0 else args.trainers[::-1]:
            runs[which].append(child(which))
    for which, measured in runs.items():
        ok = sorted((r for r in measured if "error" not in r), key=lambda r: r["samples_per_second"])
        if not ok:
            result[which] = measured[0]
            continue
        r = result[which] = dict(ok[(len(ok) - 1) // 2])  # the median run (the lower middle one of an even count)
        if args.repeats > 1:
            r["samples_per_second_each_round"] = [m.get("samples_per_second") for m in measured]
        r["peak_used"] = "bf16_gflops" if which.endswith("-bf16") else "gflops"
        r["share_of_peak"] = round(r["useful_gflops"] / peak[r["peak_used"]], 3)
        for count in ("computed", "shortcut"):
            r[f"{count}_share_of_peak"] = round(r[f"{count}_gflops"] / peak[r["peak_used"]], 3)
    for which in args.trainers:  # each trainer against the plain script in the same precision
        plain = "plain-bf16" if which.endswith("-bf16") else "plain"
        if which != plain and all("samples_per_second" in result.get(w, {}) for w in (plain, which)):
            ratio = result[which]["samples_per_second"] / result[plain]["samples_per_second"]
            result[f"{which}_vs_{plain}"] = round(ratio, 3)
            if args.repeats > 1:  # paired by round: the two ran back to back
                pairs = zip(runs[which], runs[plain], strict=True)
                ok_pairs = [(a, b) for a, b in pairs if "error" not in a and "error" not in b]
                each = [a["samples_per_second"] / b["samples_per_second"] for a, b in ok_pairs]
                result[f"{which}_vs_{plain}_each_round"] = [round(x, 3) for x in each]
    result.pop("child", None)
    result["settings"].pop("child", None)
    print(json.dumps(result, indent=2))
    args.output_json.parent.mkdir(parents=True, exist_ok=True)
    args.output_json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
