"""Encode throughput and agreement: torch vs ONNX fp32 vs ONNX int8, on real passages, on this machine.

    python benchmarks/onnx_speed.py --model default --passages 256 --output-json benchmarks/results/onnx_speed.json

The model folder is copied under runs/ first (export writes into MODEL/onnx/). Passages are PubMedQA abstracts,
truncated at the model's max_seq_length (256 tokens for all-MiniLM-L6-v2).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from output import report

from ragtune.data import load_pairs
from ragtune.embeddings import load_model, resolve_model
from ragtune.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--data", default="../shared/data/pubmedqa/ori_pqal.json")
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    folder = Path("runs/onnx-benchmark/model")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(resolve_model(args.model), folder)
    export = export_onnx(folder, quantize="int8", min_cosine=0.0)  # measured and reported, not gated
    texts = list(load_pairs(args.data, format="pubmedqa").corpus.values())[: args.passages]
    results, reference = {}, None
    for backend in ("torch", "onnx", "onnx-int8"):
        model = load_model(folder, backend=backend)
        model.encode(texts[:8], batch_size=8)  # warm-up
        start = time.perf_counter()
        vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
        seconds = time.perf_counter() - start
        reference = vectors if reference is None else reference
        cosines = np.sum(vectors * reference, axis=1)
        results[backend] = {
            "passages_per_second": round(len(texts) / seconds, 1),
            "min_cosine_to_torch": round(float(cosines.min()), 5),
            "mean_cosine_to_torch": round(float(cosines.mean()), 5),
        }
    out = {"passages": len(texts), "export_probe_check": export, "backends": results}
    report(out, args.output_json)


if __name__ == "__main__":
    main()
