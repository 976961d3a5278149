"""Fine-tune with sentence-transformers' trainer: MultipleNegativesRankingLoss over (query, positive[, negatives]).

ragtune adds only what the trainer does not do on its own: it maps `TrainConfig` onto the trainer's arguments in
one function, evaluates retrieval over the *full* corpus on the validation split during training (keeping the best
checkpoint), resumes from the last checkpoint after a crash, and writes the training log beside the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.config import TrainConfig
from ragtune.data import load_ragtune_data
from ragtune.embeddings import load_model
from ragtune.errors import RagtuneError

BEST_METRIC = "eval_validation_cosine_ndcg@10"


@dataclass
class TrainResult:
    model_dir: Path
    log_history: list[dict[str, Any]]
    best_metric: float | None
    best_checkpoint: str | None
    steps: int
    resumed_from: str | None


def training_arguments(config: TrainConfig, output_dir: Path, train_rows: int, has_validation: bool):
    """The single place a ragtune setting becomes a trainer argument."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    steps_per_epoch = max(1, math.ceil(train_rows / config.batch_size))
    eval_steps = max(1, steps_per_epoch // config.evals_per_epoch)
    strategy = "steps" if has_validation else "no"
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of total steps (transformers 5)
        weight_decay=config.weight_decay,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate text in a batch would be a false negative
        eval_strategy=strategy,
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=has_validation,
        metric_for_best_model=BEST_METRIC if has_validation else None,
        greater_is_better=True,
        logging_steps=max(1, min(10, steps_per_epoch // 5)),
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=_has_cuda(),
    )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def validation_evaluator(data_dir: Path, batch_size: int):
    """Retrieval on the validation queries over every passage of the dataset, as the final evaluation does."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    data = load_ragtune_data(data_dir)
    qids = (data.splits or {}).get("validation", [])
    if not qids:
        return None
    val = data.subset(qids)
    relevant = {q: set(rel) for q, rel in val.qrels.items()}
    return InformationRetrievalEvaluator(
        queries=val.queries,
        corpus=data.corpus,
        relevant_docs=relevant,
        name="validation",
        batch_size=batch_size,
        show_progress_bar=True,
        write_csv=False,
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10, 100],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[100],
    )


def _training_columns(ds, use_negatives: bool):
    columns = ["query", "positive"]
    if use_negatives:
        columns += [c for c in ds.column_names if c.startswith("negative") and not c.endswith("_id")]
    return ds.select_columns(columns)


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def train(
    base_model: str, data_dir: str | Path, output_dir: str | Path, config: TrainConfig, resume: bool = True
) -> TrainResult:
    """Fine-tune `base_model` on `data_dir`'s train split; the model lands in `output_dir/model`."""
    import datasets
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    data_dir, output_dir = Path(data_dir), Path(output_dir)
    splits = datasets.load_from_disk(str(data_dir))
    if "train" not in splits or len(splits["train"]) == 0:
        raise RagtuneError(f"{data_dir}: no train rows to fine-tune on")
    train_ds = _training_columns(splits["train"], config.use_negatives)
    model = load_model(base_model, config.max_seq_length)
    evaluator = validation_evaluator(data_dir, config.batch_size)
    checkpoint_dir = output_dir / "checkpoints"
    args = training_arguments(config, checkpoint_dir, len(train_ds), evaluator is not None)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        loss=MultipleNegativesRankingLoss(model),
        evaluator=evaluator,
    )
    resume_from = last_checkpoint(checkpoint_dir) if resume else None
    trainer.train(resume_from_checkpoint=resume_from)
    model_dir = output_dir / "model"
    trainer.model.save(str(model_dir))
    history = trainer.state.log_history
    (model_dir / "training_log.json").write_text(json.dumps(history, indent=2))
    return TrainResult(
        model_dir=model_dir,
        log_history=history,
        best_metric=trainer.state.best_metric,
        best_checkpoint=trainer.state.best_model_checkpoint,
        steps=trainer.state.global_step,
        resumed_from=resume_from,
    )
