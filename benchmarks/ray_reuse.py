"""Encoding the same texts again and again on one Ray cluster, as a run does (mining, validation, test, index):
tasks in workers that keep their model (what `RayEngine.encode` does) against a new actor pool per call (what it
did before; `map_with_model(tasks=False)` over the same batches).

    python benchmarks/ray_reuse.py --output-json benchmarks/results/ray-reuse.json

Each size is encoded `--repeats` times per way, each time with a fresh embedding cache (so every text goes to the
cluster), on one local cluster of `--actors` CPUs. The model: the tests' random 2-layer BERT projected to 384
dimensions (`--tiny-dim`), whose load costs what any model's does here (importing sentence-transformers); texts of
20 to 120 synthetic words.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from output import cpu_name, report
from ray_encode import WORDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_tiny_bert  # noqa: E402

from ragtune.embeddings import Encoder  # noqa: E402
from ragtune.ray_engine import WorkerModel, _encode_batches, map_with_model, ray_engine  # noqa: E402


def on_new_actors(engine, encoder: Encoder, texts: list[str]) -> np.ndarray:
    """The earlier way: the same batches, a pool of actors started for this call."""
    import ray.data

    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[s : s + encoder.batch_size] for s in range(0, len(texts), encoder.batch_size)]
    items = [{"batch": n, "texts": [texts[i] for i in rows]} for n, rows in enumerate(batches)]
    size = engine.pool_size(len(items))
    found = map_with_model(
        ray.data.from_items(items), _encode_batches, WorkerModel.of(encoder), engine, size, {}, batch_size=1
    )
    vectors = None
    for row in found.iter_rows():
        rows = batches[int(row["batch"])]
        batch = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(rows), -1)
        vectors = np.empty((len(texts), batch.shape[1]), np.float32) if vectors is None else vectors
        vectors[rows] = batch
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 60_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--tiny-dim", type=int, default=384)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = build_tiny_bert(tmp, layers=2, dim=args.tiny_dim)
    rng = np.random.default_rng(0)
    texts = {n: [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 120)))) for _ in range(n)] for n in args.sizes}
    result = {"cpu": cpu_name(), "actors": args.actors, "model": f"tiny, {args.tiny_dim} dims", "runs": []}
    first: dict[int, np.ndarray] = {}
    # One cluster per way, the new actors first: the tasks' workers start without the model.
    for way in ("new actor pool per call", "tasks, workers keep the model"):
        with ray_engine(actors=args.actors) as engine:
            for size in args.sizes:
                seconds, worst = [], 0.0
                for n in range(args.repeats):
                    encoder = Encoder(str(model), tmp / f"cache-{way[:3]}-{size}-{n}", show_progress=False)
                    start = time.perf_counter()
                    if "actor" in way:
                        vectors = on_new_actors(engine, encoder, texts[size])
                    else:
                        vectors = encoder.encode(texts[size])
                    seconds.append(round(time.perf_counter() - start, 2))
                    first.setdefault(size, vectors)
                    worst = max(worst, float(np.abs(vectors - first[size]).max()))
                result["runs"].append({"way": way, "texts": size, "seconds": seconds, "max_abs_vs_first_way": worst})
    report(result, args.output_json)


if __name__ == "__main__":
    main()
