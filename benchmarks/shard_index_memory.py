"""The memory `index_from_shards` takes in this process, as the corpus grows: bounded, or growing with it?

    python benchmarks/shard_index_memory.py --passages 1000000 3000000 \
        --output-json benchmarks/results/shard-index-memory.json

For each size, one child process writes random unit vectors (`--dim` wide, short texts) as Parquet shards of
100,000 rows in row groups of 4,096 (as `embed_shards` writes them), and a fresh child builds the IVF-PQ index from
them while a thread samples its memory every 10 ms. Reported per size: the float32 size of the vectors, the peak
growth of anonymous memory (RssAnon: what cannot be paged out) and of the resident set (ru_maxrss, which also counts
the pages of memory-mapped files, here the inverted-lists file being merged), the build time and `recall` (the
index's recall@10 against exact search on 200 sampled passages). No model and no cluster: this measures the index build
alone (the encoding runs on the cluster; benchmarks/ray_scale.py measures it all).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from output import cpu_name, report

WRITE = """
import hashlib, json, sys
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
n, dim, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
folder.mkdir()
rng = np.random.default_rng(0)
for f, part in enumerate(np.array_split(np.arange(n), -(-n // 100_000))):  # embed_shards' default file size
    v = rng.standard_normal((len(part), dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    texts = [f"passage {i}" for i in part]
    pq.write_table(pa.table({"id": [f"p{i}" for i in part], "text": texts,
        "sha1": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), dim)}), folder / f"part-{f:03d}.parquet",
        row_group_size=4096)
meta = {"model": "random", "model_fingerprint": "-", "max_seq_length": 8, "backend": "torch", "dim": dim, "count": n}
(folder / "shards.json").write_text(json.dumps(meta))
"""

BUILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import faiss, faiss.contrib.ondisk, pyarrow.parquet  # imported before the baseline: their code is not the index
from ray_scale import AnonPeak
from ragtune.shards import index_from_shards
time.sleep(0.1)
rss_before, anon = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, AnonPeak()
anon_before = anon.take()
start = time.perf_counter()
out = index_from_shards(sys.argv[1], sys.argv[2], ivf_pq_from=0)
seconds = time.perf_counter() - start
time.sleep(0.05)
meta = json.loads((Path(out) / "index.json").read_text())
print(json.dumps({"index_s": round(seconds, 1), "index": meta["faiss"], "recall": meta["recall@10_vs_exact"],
    "anon_mb_before": anon_before, "anon_peak_growth_mb": round(anon.take() - anon_before, 1),
    "rss_peak_growth_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before, 1),
    "lists_file_mb": round((Path(out) / meta["lists"]).stat().st_size / 2**20, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    sizes = []
    for n in args.passages:
        with tempfile.TemporaryDirectory() as tmp:
            shards = Path(tmp) / "shards"
            subprocess.run([sys.executable, "-c", WRITE, str(n), str(args.dim), str(shards)], check=True)
            built = subprocess.run(
                [sys.executable, "-c", BUILD, str(shards), str(Path(tmp) / "index"), str(Path(__file__).parent)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(built.stdout.strip().splitlines()[-1])
        sizes.append({"passages": n, "float32_mb": round(n * args.dim * 4 / 2**20, 1), **result})
    report({"cpu": cpu_name(), "dim": args.dim, "sizes": sizes}, args.output_json)


if __name__ == "__main__":
    main()
