"""A million passages through the cluster: encoded into shards, indexed, mined and evaluated, driver memory bounded.

    python benchmarks/ray_scale.py --passages 1000000 --output-json benchmarks/results/ray-shards-1m.json

Synthetic passages (20 to 120 words, fixed seed) are written as JSONL files, plus one (query, positive id) row per
`--query-every` passages (the query: a passage's first 8 words). On a local Ray cluster (`--actors` model copies)
`ragtune.shards` encodes them into Parquet shards, builds the index from the shards (IVF-PQ from `--ivf-pq-from`
passages), mines one hard negative per query and evaluates every `--eval-every`-th query (`evaluate_from_shards`,
its positive the one relevant passage). The same machine then encodes `--compare` passages in one process
(torch on every core) for the throughput ratio. The driver's peak RSS is read before the cluster work and after;
the model is a 2-layer, 32-wide random BERT (`--model tiny`, as the tests use; `--tiny-dim 384` adds a random
projection so its vectors are as wide as all-MiniLM-L6-v2's) or any model path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from output import cpu_name, report
from ray_encode import WORDS

from ragtune.embeddings import Encoder
from ragtune.ray_engine import ray_engine
from ragtune.shard_eval import evaluate_from_shards
from ragtune.shards import embed_shards, index_from_shards, mine_from_shards


def write_corpus(
    folder: Path, n: int, files: int, query_every: int, eval_every: int, seed: int = 0
) -> tuple[list[Path], Path, Path]:
    """JSONL corpus files, a (query, positive id) file and a BEIR folder of every `eval_every`-th query with its
    positive judged relevant, written a file at a time (never the whole corpus in memory)."""
    rng = np.random.default_rng(seed)
    paths, per_file = [], -(-n // files)
    beir = folder / "beir"
    (beir / "qrels").mkdir(parents=True)
    with (
        (folder / "queries.jsonl").open("w") as queries,
        (beir / "queries.jsonl").open("w") as judged,
        (beir / "qrels" / "test.tsv").open("w") as qrels,
    ):
        for f in range(files):
            path = folder / f"corpus-{f:03d}.jsonl"
            with path.open("w") as out:
                for i in range(f * per_file, min(n, (f + 1) * per_file)):
                    words = rng.choice(WORDS, size=int(rng.integers(20, 120)))
                    text = " ".join(words) + f" ({i})"
                    out.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
                    if i % query_every == 0:
                        queries.write(json.dumps({"query": " ".join(words[:8]), "positive_id": f"p{i}"}) + "\n")
                    if i % (query_every * eval_every) == 0:
                        judged.write(json.dumps({"_id": f"q{i}", "text": " ".join(words[:8])}) + "\n")
                        qrels.write(f"q{i}\tp{i}\t1\n")
            paths.append(path)
    return paths, folder / "queries.jsonl", beir


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
    return 0.0


class AnonPeak:
    """This process' peak anonymous memory (RssAnon) since the last `take`, sampled every 10 ms. Unlike ru_maxrss it
    leaves out the pages of memory-mapped files (an on-disk index's lists), which the kernel can drop."""

    def __init__(self) -> None:
        self.peak = anon_mb()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, anon_mb())
            time.sleep(0.01)

    def take(self) -> float:
        peak, self.peak = self.peak, anon_mb()
        return round(peak, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (random 2-layer BERT), 'default', or a path")
    parser.add_argument("--tiny-dim", type=int, help="tiny: project its vectors to this many dimensions")
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--query-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10, help="evaluate every this many mined queries")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ivf-pq-from", type=int, default=1_000_000)
    parser.add_argument("--compare", type=int, default=20_000, help="passages encoded by one process, for the ratio")
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model == "tiny":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import build_tiny_bert

            model = str(build_tiny_bert(tmp, layers=2, dim=args.tiny_dim))
        start = time.perf_counter()
        corpus, queries, beir = write_corpus(tmp, args.passages, args.files, args.query_every, args.eval_every)
        write_s = time.perf_counter() - start
        encoder = Encoder(model, tmp / "cache", show_progress=False)
        float32_mb = args.passages * encoder.model.get_embedding_dimension() * 4 / 2**20
        timings = {}
        with ray_engine(actors=args.actors):
            rss_before, anon = rss_mb(), AnonPeak()
            anon_peaks = {"before": anon.take()}
            start = time.perf_counter()
            embed_shards(encoder, corpus, tmp / "shards")
            timings["encode_s"] = time.perf_counter() - start
            peaks, anon_peaks["encode"] = {"after_encode": rss_mb()}, anon.take()
            start = time.perf_counter()
            index = index_from_shards(tmp / "shards", tmp / "index", ivf_pq_from=args.ivf_pq_from)
            timings["index_s"] = time.perf_counter() - start
            peaks["after_index"], anon_peaks["index"] = rss_mb(), anon.take()
            start = time.perf_counter()
            mine_from_shards(index, [queries], tmp / "mined")
            timings["mine_s"] = time.perf_counter() - start
            peaks["after_mine"], anon_peaks["mine"] = rss_mb(), anon.take()
            start = time.perf_counter()
            evaluation = evaluate_from_shards({"model": index}, beir, "test")
            timings["evaluate_s"] = time.perf_counter() - start
            rss_after, anon_peaks["evaluate"] = rss_mb(), anon.take()
        built = json.loads((index / "index.json").read_text())
        with queries.open() as f:
            mined = sum(1 for _ in f)
        with corpus[0].open() as f:
            texts = [json.loads(line)["text"] for _, line in zip(range(args.compare), f, strict=False)]
        one = Encoder(model, tmp / "one", show_progress=False)
        _ = one.model
        start = time.perf_counter()
        one.encode(texts)
        one_per_s = len(texts) / (time.perf_counter() - start)
    ray_per_s = args.passages / timings["encode_s"]
    per_actor = ray_per_s / args.actors
    report(
        {
            "model": args.model,
            "dim": encoder.model.get_embedding_dimension(),
            "passages": args.passages,
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "actors": args.actors,
            "corpus_write_s": round(write_s, 1),
            **{k: round(v, 1) for k, v in timings.items()},
            "ray_encode_per_s": round(ray_per_s, 1),
            "ray_encode_per_actor_per_s": round(per_actor, 1),
            "one_process_encode_per_s": round(one_per_s, 1),
            "ray_vs_one_process": round(ray_per_s / one_per_s, 2),
            "index": built["faiss"],
            "index_recall@10_vs_exact": built.get("recall@10_vs_exact", 1.0),
            "queries_mined": mined,
            "mine_per_s": round(mined / timings["mine_s"], 1),
            "queries_evaluated": evaluation.queries,
            "evaluate_per_s": round(evaluation.queries / timings["evaluate_s"], 1),
            "evaluated": {m: round(v, 4) for m, v in evaluation.metrics["model"].items()},
            "corpus_float32_mb": round(float32_mb, 1),
            "driver_peak_rss_mb_before_cluster_work": rss_before,
            "driver_peak_rss_mb_after": rss_after,
            "driver_rss_growth_mb": round(rss_after - rss_before, 1),
            "driver_peak_rss_mb_by_stage": peaks,
            "driver_peak_anon_mb_by_stage": anon_peaks,
            "hours_for_50m_at_this_per_actor_rate_per_actor_count": {
                n: round(50_000_000 / (per_actor * n) / 3600, 1) for n in (8, 64, 512)
            },
        },
        args.output_json,
    )


if __name__ == "__main__":
    sys.exit(main())
