"""Fine-tune with sentence-transformers' trainer: MultipleNegativesRankingLoss over (query, positive[, negatives]).

ragtune adds only what the trainer does not do on its own: it maps `TrainConfig` onto the trainer's arguments and
losses in one place each (MNRL or its GradCache variant, GISTEmbed with a guide model, Matryoshka on top, LoRA
adapters), evaluates retrieval over the *full* corpus on the validation split during training (keeping the best
checkpoint; at every Matryoshka size too), resumes from the last checkpoint after a crash, and writes the model and
training log from rank 0 only when several processes train (torchrun).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune import progress
from ragtune.config import TrainConfig
from ragtune.data import DATA_MARKER, PairData, load_ragtune_data
from ragtune.embeddings import PASSAGE, QUERY, load_model, model_prompts, model_settings, no_library_bars
from ragtune.errors import RagtuneError
from ragtune.outputs import claim_folder, replace_folder, write_json

log = logging.getLogger(__name__)

BEST_METRIC = "eval_validation_cosine_ndcg@10"


@dataclass
class TrainResult:
    model_dir: Path
    log_history: list[dict[str, Any]]
    best_metric: float | None
    best_checkpoint: str | None
    steps: int
    resumed_from: str | None
    rank: int = 0
    wrote_model: bool = True


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(
    config: TrainConfig,
    output_dir: Path,
    train_rows: int,
    has_validation: bool,
    prompts: dict[str, str] | None = None,
    best_metric: str = BEST_METRIC,
):
    """The single place a ragtune setting becomes a trainer argument. `prompts`: training column -> the model's
    prompt for it (`column_prompts`); `best_metric`: the logged score that picks the checkpoint kept."""
    steps_per_epoch = max(1, math.ceil(train_rows / (config.batch_size * world_size())))
    eval_steps = max(1, steps_per_epoch // config.evals_per_epoch)
    strategy = "steps" if has_validation else "no"
    if config.precision == "fp16" and not _has_cuda():
        raise RagtuneError(
            "train settings (precision=fp16): fp16 needs a CUDA GPU; on a CPU use precision: bf16 "
            "(autocast; fast on CPUs with AMX)"
        )
    try:
        return _arguments(
            config, output_dir, steps_per_epoch, eval_steps, strategy, best_metric if has_validation else None, prompts
        )
    except ValueError as err:  # e.g. bf16 on a GPU without bfloat16 support
        raise RagtuneError(f"train settings (precision={config.precision}): {err}") from err


def _arguments(
    config: TrainConfig,
    output_dir: Path,
    steps_per_epoch: int,
    eval_steps: int,
    strategy: str,
    best_metric: str | None,
    prompts: dict[str, str] | None,
):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of total steps (transformers 5)
        weight_decay=config.weight_decay,
        # A duplicate text in a batch would be a false negative, so both samplers keep them apart.
        batch_sampler=LengthGroupedNoDuplicates if config.group_by_length else BatchSamplers.NO_DUPLICATES,
        eval_strategy=strategy,
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=best_metric is not None,
        metric_for_best_model=best_metric,
        greater_is_better=True,
        logging_steps=max(1, min(10, steps_per_epoch // 5)),
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to or "none",
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        torch_compile=config.torch_compile,
        # Several CPU processes: accelerate only treats them as one job (MULTI_CPU, gloo) when told they are CPU;
        # bf16 autocast on a CPU is refused unless the trainer is told it runs on the CPU.
        use_cpu=not _has_cuda() and (world_size() > 1 or config.precision == "bf16"),
        ddp_backend="gloo" if world_size() > 1 and not _has_cuda() else None,
        dataloader_num_workers=0,
        dataloader_pin_memory=_has_cuda(),
        disable_tqdm=True,  # progress goes to ragtune.progress (the CLI's display), the losses to logging
        prompts=prompts or None,
    )


class LengthGroupedNoDuplicates:
    """No-duplicates batches of rows of similar length, so per-batch padding wastes less compute.

    Written here because sentence-transformers has no length grouping, and transformers' `group_by_length` cannot
    keep a repeated text out of a batch. Each epoch (seed + epoch) shuffles the rows, cuts them into mega-batches of
    50 batches, sorts each by text length and fills batches greedily, skipping a row whose text is already in the
    batch (it goes to the next one); then shuffles the batches, so lengths do not drift over the epoch. A batch
    sampler for the trainer (called with the dataset and the trainer's batch arguments).
    """

    MEGA = 50

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed=0):
        import numpy as np

        columns = [c for c in dataset.column_names if c not in (valid_label_columns or [])]
        rows = list(zip(*(dataset[c] for c in columns), strict=True))
        self.texts = [set(map(str, row)) for row in rows]
        self.lengths = np.array([sum(len(str(t)) for t in row) for row in rows])
        self.batch_size, self.drop_last, self.seed, self.epoch = batch_size, drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.texts)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        import numpy as np

        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.texts))
        batches: list[list[int]] = []
        pending: list[int] = []
        mega = self.batch_size * self.MEGA
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            pending += chunk[np.argsort(-self.lengths[chunk], kind="stable")].tolist()
            pending = self._fill(pending, batches, last=start + mega >= len(order))
        if pending and not self.drop_last:
            batches.append(pending)
        rng.shuffle(batches)
        yield from batches

    def _fill(self, pending: list[int], batches: list[list[int]], last: bool) -> list[int]:
        """Full batches from `pending`, in order; returns the rows of the last, incomplete batch (carried over)."""
        while pending:
            batch, seen, rest = [], set(), []
            for row in pending:
                if len(batch) < self.batch_size and self.texts[row].isdisjoint(seen):
                    batch.append(row)
                    seen |= self.texts[row]
                else:
                    rest.append(row)
            if len(batch) < self.batch_size and (not last or not rest):
                return batch + rest
            batches.append(batch)
            pending = rest
        return []


def build_loss(model, config: TrainConfig):
    """MNRL, or CachedMNRL (GradCache) for a large batch in little memory; GISTEmbed when a guide model is given;
    Matryoshka around either when sizes are given."""
    from sentence_transformers.sentence_transformer import losses

    gather = config.gather_across_devices and world_size() > 1
    cached = config.loss == "cached-mnrl"
    if config.guide_model:
        guide = load_model(config.guide_model, config.max_seq_length)
        if cached:
            loss = losses.CachedGISTEmbedLoss(
                model, guide, mini_batch_size=config.mini_batch_size, gather_across_devices=gather
            )
        else:
            loss = losses.GISTEmbedLoss(model, guide, gather_across_devices=gather)
    elif cached:
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config.mini_batch_size, gather_across_devices=gather
        )
    else:
        loss = losses.MultipleNegativesRankingLoss(model, gather_across_devices=gather)
    if config.matryoshka_dims:
        full = model.get_embedding_dimension()
        if config.matryoshka_dims[0] > full:
            raise RagtuneError(f"train.matryoshka_dims: {config.matryoshka_dims[0]} exceeds the model's {full} dims")
        loss = losses.MatryoshkaLoss(model, loss, config.matryoshka_dims)
    return loss


def add_lora(model, config: TrainConfig) -> None:
    try:
        from peft import LoraConfig, TaskType
    except ImportError as err:
        raise RagtuneError("train.adapter: lora needs the peft package (pip install 'ragtune[lora]')") from err
    lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
    )
    try:
        model.add_adapter(lora)
    except ValueError as err:
        raise RagtuneError(f"train.lora_target_modules {config.lora_target_modules}: {err}") from err


def merge_lora(model, base_model: str, adapter_dir: Path, max_seq_length: int | None) -> None:
    """Fold the adapter into the base weights: a plain model every other stage (index, serve, export) can load.

    The adapter sits inside the transformers model (`add_adapter`), which has no merge; so the saved adapter is
    applied to a clean copy of the base through peft's PeftModel, merged there, and put in the trained model's place
    (its model card and settings stay)."""
    from peft import PeftModel

    clean = load_model(base_model, max_seq_length)[0].auto_model
    model[0].auto_model = PeftModel.from_pretrained(clean, str(adapter_dir)).merge_and_unload()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def validation_evaluator(
    data_dir: Path, batch_size: int, dims: list[int] | None = None, prompts: dict[str, str] | None = None
):
    """Retrieval on the validation queries over every passage of the dataset, scored with the graded metrics the
    report shows (`ragtune.metrics`); with Matryoshka sizes, also at each smaller size (`validation_dim<N>`)."""
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    from ragtune.validation import GradedRetrievalEvaluator

    data = load_ragtune_data(data_dir)
    qids = (data.splits or {}).get("validation", [])
    if not qids:
        return None
    val = data.subset(qids)
    pool = json.loads((data_dir / DATA_MARKER).read_text()).get("validation_passages")
    if pool is not None:  # a folder from shards: the base model's candidates, not every training passage
        val.corpus = {p: data.corpus[p] for p in pool}
    full = GradedRetrievalEvaluator(val, "validation", batch_size, prompts=prompts)
    if not dims or len(dims) < 2:
        return full
    return SequentialEvaluator(
        [full] + [GradedRetrievalEvaluator(val, f"validation_dim{d}", batch_size, d, prompts) for d in dims[1:]]
    )


def column_prompts(columns: list[str], prompts: dict[str, str]) -> dict[str, str]:
    """The model's prompts by training column (query, positive, negatives), as the trainer puts them before each
    text: training reads the texts the way `Encoder` encodes them (`embeddings.with_prompt`)."""
    kinds = {c: QUERY if c == "query" else PASSAGE for c in columns}
    return {c: prompts[kind] for c, kind in kinds.items() if prompts.get(kind)}


def _training_columns(ds, use_negatives: bool):
    columns = ["query", "positive"]
    if use_negatives:
        columns += [c for c in ds.column_names if c.startswith("negative") and not c.endswith("_id")]
    return ds.select_columns(columns)


def _with_rewrites(ds, styles: list[str]):
    """`ds` plus one row per (row, style) whose rewritten question differs: same positive, same negatives."""
    import datasets

    from ragtune.rewrite import rewrite

    if not styles:
        return ds
    extra = []
    for row in ds:
        for style in styles:
            query = rewrite(row["query"], style)
            if query is not None:
                extra.append({**row, "query": query})
    log.info("query rewrites %s: %d rows added to %d", styles, len(extra), len(ds))
    if not extra:
        return ds
    return datasets.concatenate_datasets([ds, datasets.Dataset.from_list(extra, features=ds.features)])


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint the trainer finished writing. It writes trainer_state.json last, so a folder without a
    readable one was cut off mid-save (a crash or kill while saving) and is skipped with a warning; transformers'
    `get_last_checkpoint` would pick it by its number alone and the resume would fail."""
    if not checkpoint_dir.is_dir():
        return None
    complete = []
    for folder in checkpoint_dir.glob("checkpoint-*"):
        step = folder.name.removeprefix("checkpoint-")
        if not (step.isdigit() and folder.is_dir()):
            continue
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            warnings.warn(f"{folder}: cut off while being saved; resuming from an earlier checkpoint", stacklevel=2)
            continue
        complete.append((int(step), folder))
    return str(max(complete)[1]) if complete else None


# Where transformers' configs keep the dropout on attention probabilities: BERT, RoBERTa, XLM-R, MPNet, Electra;
# DistilBERT, ModernBERT and decoder models; GPT-2 style.
_ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def load_training_model(base_model: str, config: TrainConfig):
    """The model to fine-tune, built with `config.attention_dropout` (unless 'model').

    On a CPU, attention dropout draws a random mask over every batch x heads x tokens x tokens score and keeps
    PyTorch's scaled-dot-product attention off its fused kernel: without it a MiniLM training step took 1.49 s
    instead of 2.67 s (benchmarks/train_step_profile.py).
    The value is set in the transformer's config before the model is built (the one place every architecture reads
    it), then the config is given back the base model's value, so the saved model's config.json is the base one's.
    The model is loaded twice for that (the first load tells which keys its config has, and their values): 0.05 s
    for all-MiniLM-L6-v2 once its files are cached, once per training.
    """
    model = load_model(base_model, config.max_seq_length)
    if config.attention_dropout == "model":
        return model
    auto_config = model[0].auto_model.config
    original = {
        k: getattr(auto_config, k)
        for k in _ATTENTION_DROPOUT_KEYS
        if type(getattr(auto_config, k, None)) in (int, float)
    }
    if not original:
        warnings.warn(
            f"{base_model}: no attention dropout setting in its config ({', '.join(_ATTENTION_DROPOUT_KEYS)}); "
            "train.attention_dropout has no effect",
            stacklevel=2,
        )
        return model
    if all(v == config.attention_dropout for v in original.values()):
        return model
    model = load_model(
        base_model, config.max_seq_length, config_kwargs=dict.fromkeys(original, config.attention_dropout)
    )
    for key, value in original.items():
        setattr(model[0].auto_model.config, key, value)
    return model


def _report_progress(trainer) -> None:
    """Steps to ragtune.progress and the trainer's log lines to logging, instead of its own printing."""
    from transformers import PrinterCallback, TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.context, self.task = None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.context = progress.task("training steps", state.max_steps)
            self.task = self.context.__enter__()
            self.task.advance(state.global_step)  # a resumed run starts where its checkpoint was

        def on_step_end(self, args, state, control, **kwargs):
            self.task.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.debug("step %d: %s", state.global_step, logs)

        def on_train_end(self, args, state, control, **kwargs):
            self.context.__exit__(None, None, None)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress())


def _save_models(trainer, config: TrainConfig, base_model: str, output_dir: Path, history: list) -> None:
    """Each folder is built beside the old one and swapped in: a crash never leaves half a model."""
    # Loading cleared it (ragtune puts prompts into the texts); users loading the model elsewhere get it back.
    trainer.model.default_prompt_name = model_settings(base_model).get("default_prompt_name")
    with no_library_bars():
        if config.adapter == "lora":
            with replace_folder(output_dir / "adapter", "adapter") as new:
                trainer.model.save(str(new))
            merge_lora(trainer.model, base_model, output_dir / "adapter", config.max_seq_length)
        with replace_folder(output_dir / "model", "model") as new:
            trainer.model.save(str(new))
            write_json(new / "training_log.json", history)


def train(
    base_model: str,
    data_dir: str | Path,
    output_dir: str | Path,
    config: TrainConfig,
    resume: bool = True,
    callbacks: list | None = None,
    select_on: tuple[str, PairData] | None = None,
) -> TrainResult:
    """Fine-tune `base_model` on `data_dir`'s train split; the model lands in `output_dir/model`.

    Args:
        base_model: A model folder, a Hub id, or "default" (all-MiniLM-L6-v2, packaged).
        data_dir: A folder written by `split`; its validation split picks the best checkpoint (graded NDCG@10 over
            the full corpus).
        output_dir: Gets `model/` (a sentence-transformers folder) and `checkpoints/`.
        config: Epochs, batch size, loss, learning rate... (`train:` of a run config).
        resume: Continue from the last checkpoint in `output_dir/checkpoints` when there is one.
        select_on: (name, queries with their corpus) that pick the checkpoint kept instead of the validation split,
            e.g. a dev split of real users' labelled questions (`checkpoint_on:` of a run config). Only they are
            scored during training; a number reported on them afterwards was chosen on them.
        callbacks: Extra `transformers.TrainerCallback`s (progress hooks, timing).

    Returns:
        The model folder, the trainer's log, the best validation score and checkpoint, steps taken.

    Example:
        >>> from ragtune.config import TrainConfig
        >>> result = ragtune.fine_tune("default", "work/data", "work/tuned", TrainConfig(epochs=1))
        >>> result.model_dir.name, result.steps > 0
        ('model', True)
    """
    import datasets
    from sentence_transformers import SentenceTransformerTrainer

    data_dir, output_dir = Path(data_dir), Path(output_dir)
    splits = datasets.load_from_disk(str(data_dir))
    if "train" not in splits or len(splits["train"]) == 0:
        raise RagtuneError(f"{data_dir}: no train rows to fine-tune on")
    train_ds = _with_rewrites(_training_columns(splits["train"], config.use_negatives), config.query_rewrites)
    model = load_training_model(base_model, config)
    if config.adapter == "lora":
        add_lora(model, config)
    prompts = model_prompts(base_model)
    if select_on:
        from ragtune.validation import GradedRetrievalEvaluator

        name, queries = select_on
        evaluator = GradedRetrievalEvaluator(queries, name, config.batch_size, prompts=prompts)
        best_metric = f"eval_{name}_cosine_ndcg@10"
    else:
        evaluator = validation_evaluator(data_dir, config.batch_size, config.matryoshka_dims, prompts)
        best_metric = BEST_METRIC
    checkpoint_dir = output_dir / "checkpoints"
    if int(os.environ.get("RANK", "0")) == 0:
        # One claimer: under torchrun every rank gets here at once, and another rank would see the folder rank 0
        # is marking (not yet marked) as a user's. Only rank 0 writes checkpoints anyway.
        claim_folder(checkpoint_dir, "checkpoints")
    args = training_arguments(
        config,
        checkpoint_dir,
        len(train_ds),
        evaluator is not None,
        column_prompts(train_ds.column_names, prompts),
        best_metric,
    )
    # Hub widget samples: their loop draws its own bar, and sentence-transformers 6.2's trainer samples them even
    # with generate_widget_examples=False, so the sampler itself is switched off for this model.
    model.model_card_data.generate_widget_examples = False
    model.model_card_data.set_widget_examples = lambda dataset: None
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        loss=build_loss(model, config),
        evaluator=evaluator,
        callbacks=callbacks,
    )
    _report_progress(trainer)
    resume_from = last_checkpoint(checkpoint_dir) if resume else None
    with no_library_bars():  # checkpoints saved, the best one loaded back
        trainer.train(resume_from_checkpoint=resume_from)
    model_dir = output_dir / "model"
    history = trainer.state.log_history
    wrote = trainer.is_world_process_zero()
    if wrote:  # other ranks hold the same weights; one writer avoids torn files
        _save_models(trainer, config, base_model, output_dir, history)
    return TrainResult(
        model_dir=model_dir,
        log_history=history,
        best_metric=trainer.state.best_metric,
        best_checkpoint=trainer.state.best_model_checkpoint,
        steps=trainer.state.global_step,
        resumed_from=resume_from,
        rank=trainer.args.process_index,
        wrote_model=wrote,
    )
