"""ragtune: fine-tune an embedding model on your own (query, passage) pairs and measure, honestly, whether retrieval
got better.

The whole pipeline is `ragtune.run(config)`; each stage is a function too:

- `load_config`, `RunConfig`: a run's settings (YAML file or dict).
- `run`: prepare, mine negatives, split, evaluate base + BM25, train, evaluate tuned, report -> `RunResult`.
- `load_pairs`: any supported data (JSONL/CSV/Parquet pairs, BEIR folder, saved dataset) -> `PairData`.
- `prepare`, `mine`, `split`: the first stages, folder to folder (what `run` chains).
- `evaluate_models`, `compare_models`: retrieval metrics over the full corpus -> `EvalResult`, `ComparisonResult`.
- `fine_tune`: fine-tune on a split folder -> `TrainResult`.
- `build_index`, `retrieve`: a saved FAISS index of a corpus, and top-k hits from it or from a model and a corpus;
  `Searcher`: an index or a store with its model loaded once, for searching many times.
- `index_to_store`, `promote`, `rollback`, `add_to_store`: a corpus in a vector store (LanceDB, Chroma, Milvus
  Lite), one collection per model, checked before it serves -> `StoreResult`.
- `ray_engine`, `embed_shards`, `index_from_shards`, `mine_from_shards`, `evaluate_from_shards`,
  `compare_from_shards`: encoding on a Ray cluster, and corpora too large for one process as Parquet embedding
  shards, an index built from them, hard negatives mined over it and queries evaluated against it.

Nothing is printed: library code logs through `logging` (logger `ragtune`) and tells progress to
`ragtune.progress` listeners, so you see output only if you configure logging.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# name -> (module, attribute); imported on first use so `import ragtune` stays light (no torch, no faiss). No name
# equals a submodule's (train, evaluate, index, search): importing that submodule would replace the function.
_API = {
    "RunConfig": ("ragtune.config", "RunConfig"),
    "load_config": ("ragtune.config", "load_config"),
    "run": ("ragtune.pipeline", "run"),
    "RunResult": ("ragtune.report", "RunResult"),
    "load_pairs": ("ragtune.data", "load_pairs"),
    "PairData": ("ragtune.data", "PairData"),
    "load_documents": ("ragtune.data", "load_documents"),
    "Document": ("ragtune.data", "Document"),
    "prepare": ("ragtune.pipeline", "prepare_stage"),
    "mine": ("ragtune.pipeline", "mine_stage"),
    "split": ("ragtune.pipeline", "split_stage"),
    "evaluate_models": ("ragtune.pipeline", "evaluate_stage"),
    "EvalResult": ("ragtune.evaluate", "EvalResult"),
    "compare_models": ("ragtune.pipeline", "compare_stage"),
    "ComparisonResult": ("ragtune.comparison", "ComparisonResult"),
    "fine_tune": ("ragtune.train", "train"),
    "TrainResult": ("ragtune.train", "TrainResult"),
    "build_index": ("ragtune.index", "index_corpus"),
    "Index": ("ragtune.index", "Index"),
    "retrieve": ("ragtune.search", "search_anything"),
    "Searcher": ("ragtune.search", "Searcher"),
    "index_to_store": ("ragtune.rollout", "index_to_store"),
    "promote": ("ragtune.rollout", "promote_collection"),
    "rollback": ("ragtune.rollout", "rollback"),
    "add_to_store": ("ragtune.rollout", "add_to_store"),
    "StoreResult": ("ragtune.rollout", "StoreResult"),
    "ray_engine": ("ragtune.ray_engine", "ray_engine"),
    "embed_shards": ("ragtune.shards", "embed_shards"),
    "index_from_shards": ("ragtune.shards", "index_from_shards"),
    "mine_from_shards": ("ragtune.shards", "mine_from_shards"),
    "evaluate_from_shards": ("ragtune.shard_eval", "evaluate_from_shards"),
    "compare_from_shards": ("ragtune.shard_eval", "compare_from_shards"),
    "Hit": ("ragtune.index", "Hit"),
    "Encoder": ("ragtune.embeddings", "Encoder"),
    "RagtuneError": ("ragtune.errors", "RagtuneError"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'ragtune' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
