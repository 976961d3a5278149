"""The metric checkpoints are chosen on during training: the graded retrieval metrics the report shows.

sentence-transformers' InformationRetrievalEvaluator counts every judged passage as equally relevant (binary NDCG),
while ragtune's report grades them (trec_eval's NDCG, `ragtune.metrics`): on graded data the two could prefer
different checkpoints. This evaluator plugs into the trainer like theirs and computes ragtune's own numbers.
"""

from __future__ import annotations

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from ragtune.data import PairData
from ragtune.embeddings import PASSAGE, QUERY, with_prompt
from ragtune.faiss_search import flat_index, search_chunked
from ragtune.metrics import aggregate, per_query


class GradedRetrievalEvaluator(SentenceEvaluator):
    """Every query of `data` searched over all of `data.corpus`; metrics named `<name>_cosine_<metric>`."""

    def __init__(
        self,
        data: PairData,
        name: str,
        batch_size: int = 32,
        truncate_dim: int | None = None,
        prompts: dict[str, str] | None = None,
    ):
        super().__init__()
        self.data, self.name, self.batch_size, self.truncate_dim = data, name, batch_size, truncate_dim
        self.prompts = prompts or {}  # the model's, as `Encoder` puts them before queries and passages
        self.primary_metric = "cosine_ndcg@10"
        self.greater_is_better = True

    def _encode(self, model, texts: list[str]) -> np.ndarray:
        vectors = model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        if self.truncate_dim:
            vectors = vectors[:, : self.truncate_dim]
        return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args, **kwargs):
        corpus_ids, qids = list(self.data.corpus), list(self.data.qrels)
        passages = self._encode(model, with_prompt([self.data.corpus[p] for p in corpus_ids], self.prompts, PASSAGE))
        queries = self._encode(model, with_prompt([self.data.queries[q] for q in qids], self.prompts, QUERY))
        scores, found = search_chunked(flat_index(passages), queries, 100)
        run = {
            q: {corpus_ids[int(j)]: float(s) for s, j in zip(scores[n], found[n], strict=True) if j >= 0}
            for n, q in enumerate(qids)
        }
        values = aggregate(per_query(run, self.data.qrels))
        metrics = self.prefix_name_to_metrics({f"cosine_{m}": v for m, v in values.items()}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
