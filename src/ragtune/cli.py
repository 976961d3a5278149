"""The `ragtune` command: parse options, call one library function, print. No logic lives here.

Each stage command takes its options on the command line; `--config FILE` reads that stage's section of a run
config first, and options given on the command line override it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError

from ragtune import terminal
from ragtune.config import (
    Adapter,
    DataConfig,
    DataFormat,
    EvalConfig,
    IndexKind,
    Loss,
    MiningConfig,
    NegativesFrom,
    Precision,
    Sampling,
    Screen,
    SplitBy,
    SplitConfig,
    Strategy,
    TrainConfig,
    format_validation_error,
    load_config,
    override,
)
from ragtune.embeddings import Backend
from ragtune.errors import RagtuneError
from ragtune.outputs import check_file_output, write_json, write_text

app = typer.Typer(
    help="Fine-tune an embedding model on your own domain data and measure whether retrieval got better.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings, errors and the final result.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug log lines too (training losses), and libraries' own bars.")
    ] = False,
) -> None:
    """Fine-tune an embedding model on your own domain data and measure whether retrieval got better."""
    terminal.configure(quiet, verbose)
    _state["quiet"] = quiet


_state = {"quiet": False}


def _shown():
    return terminal.shown(_state["quiet"])


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Read defaults from this run config (YAML).")]
CacheOpt = Annotated[
    Path | None, typer.Option(help="Embedding cache folder (default: $RAGTUNE_CACHE_DIR or ~/.cache/ragtune).")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Base model: 'default' (packaged all-MiniLM-L6-v2), folder, Hub id.")
]
QueryColOpt = Annotated[str | None, typer.Option(help="Column holding the query (JSONL/CSV/Parquet/saved dataset).")]
PassageColOpt = Annotated[str | None, typer.Option(help="Column holding the passage.")]
SeqOpt = Annotated[int | None, typer.Option(help="Truncate texts to this many tokens (default: the model's).")]
HybridOnOpt = Annotated[
    str | None,
    typer.Option(
        help="Add each model fused with BM25 (`<model>+bm25`), the fusion (RRF or a convex weight) chosen on this "
        "split, e.g. dev; never the split you report."
    ),
]
HybridWeightOpt = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Add each model fused with BM25 at this fixed BM25 weight (convex fusion)."),
]
MarginOpt = Annotated[float | None, typer.Option(help="hard: drop candidates above positive_score*(1-margin).")]
MaxScoreOpt = Annotated[float | None, typer.Option(help="hard: drop candidates with cosine above this.")]
RrfOpt = Annotated[bool, typer.Option("--rrf", help="Add each model fused with BM25 by reciprocal-rank fusion.")]
WeightOpt = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Hybrid: BM25's weight in a convex fusion (default: the index's own)."),
]
RayOpt = Annotated[
    bool, typer.Option("--ray", help="Encode the corpus on a Ray cluster (a local one unless --ray-address).")
]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="A running Ray cluster's address (or set RAY_ADDRESS); implies --ray.")
]
FuseRrfOpt = Annotated[bool, typer.Option("--rrf", help="Hybrid: fuse by reciprocal-rank fusion instead.")]


def _settings(cls: type[BaseModel], config: Path | None, section: str, **overrides: Any) -> Any:
    """A stage's settings: the config file's section (if any) with the command-line values on top."""
    base = getattr(load_config(config), section).model_dump() if config else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(base)
    except ValidationError as err:
        raise RagtuneError(format_validation_error(err)) from err


def _base_model(model: str | None, config: Path | None) -> str:
    return model or (load_config(config).base_model if config else "default")


@app.command()
def prepare(
    data: Annotated[
        str | None,
        typer.Argument(help="Pairs file (JSONL/CSV/Parquet), BEIR or saved-dataset folder, or PubMedQA JSON."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (BEIR layout + stats.json).")] = Path(
        "prepared"
    ),
    format: Annotated[
        DataFormat | None, typer.Option(help="Input format (auto: by extension or folder layout).")
    ] = None,
    query_column: QueryColOpt = None,
    passage_column: PassageColOpt = None,
    skip_bad_rows: Annotated[
        bool | None,
        typer.Option("--skip-bad-rows", help="Skip and count rows with an empty or missing text instead of stopping."),
    ] = None,
    max_pairs: Annotated[int | None, typer.Option(help="Keep a seeded sample of about this many pairs.")] = None,
    sample_seed: Annotated[int | None, typer.Option(help="Seed of that sample.")] = None,
    group_column: Annotated[
        str | None, typer.Option(help="Column whose value keeps rows together when splitting (--split-by group).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Load (query, passage) pairs, drop duplicates, check every text, and save them in one shape."""
    from ragtune.pipeline import prepare_stage

    settings = _settings(
        DataConfig,
        config,
        "data",
        path=data,
        format=format,
        query_column=query_column,
        passage_column=passage_column,
        skip_bad_rows=skip_bad_rows,
        max_pairs=max_pairs,
        sample_seed=sample_seed,
        group_column=group_column,
    )
    with _shown():
        loaded = prepare_stage(settings, out)
    typer.echo(json.dumps(loaded.stats.to_dict(), indent=2))
    typer.echo(f"prepared data written to {out}")


@app.command("mine")
def mine_cmd(
    prepared: Annotated[Path, typer.Argument(help="Folder written by `ragtune prepare`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write rows.jsonl and stats.json.")] = Path(
        "mined"
    ),
    model: ModelOpt = None,
    strategy: Annotated[
        Strategy | None, typer.Option(help="Negatives: least-similar (classic), hard, random, none.")
    ] = None,
    num_negatives: Annotated[int | None, typer.Option(help="Negatives per row.")] = None,
    range_min: Annotated[int | None, typer.Option(help="hard: skip this many top candidates.")] = None,
    range_max: Annotated[int | None, typer.Option(help="hard: consider candidates up to this rank.")] = None,
    sampling: Annotated[
        Sampling | None, typer.Option(help="hard: take the 'top' of the window or 'random' from it.")
    ] = None,
    margin: MarginOpt = None,
    max_score: MaxScoreOpt = None,
    max_cosine_to_positive: Annotated[
        float | None, typer.Option(help="hard: drop candidates at least this similar to a positive (e.g. 0.98).")
    ] = None,
    negatives_from: Annotated[
        NegativesFrom | None,
        typer.Option(help="train: training rows never get a validation/test passage (split from --config); all."),
    ] = None,
    index: Annotated[
        IndexKind | None, typer.Option(help="Candidate search; ivf is approximate, for large corpora.")
    ] = None,
    nprobe: Annotated[int | None, typer.Option(help="ivf: clusters searched per query.")] = None,
    screen: Annotated[
        Screen | None,
        typer.Option(help="least-similar, exact: bfloat16 screen + float32 rescoring, same picks (auto, on, off)."),
    ] = None,
    cross_encoder: Annotated[
        str | None, typer.Option(help="hard: rescore candidates with this cross-encoder model folder.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for random choices.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Encoding batch size.")] = None,
    max_seq_length: SeqOpt = None,
    cache_dir: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Give every (query, positive) row its negatives; embeddings are cached for later stages.

    The train/validation/test split is decided here (the config's `split` section, or the defaults) so that
    training rows never get a held-out passage as a negative; `ragtune split` must then use the same settings.
    """
    from ragtune.pipeline import mine_stage

    settings = _settings(
        MiningConfig,
        config,
        "mining",
        strategy=strategy,
        num_negatives=num_negatives,
        range_min=range_min,
        range_max=range_max,
        sampling=sampling,
        margin=margin,
        max_score=max_score,
        max_cosine_to_positive=max_cosine_to_positive,
        negatives_from=negatives_from,
        index=index,
        nprobe=nprobe,
        screen=screen,
        cross_encoder=cross_encoder,
        seed=seed,
        batch_size=batch_size,
    )
    split = _settings(SplitConfig, config, "split")
    with _shown():
        stats = mine_stage(prepared, _base_model(model, config), settings, out, cache_dir, max_seq_length, split)
    typer.echo(json.dumps(stats, indent=2))
    typer.echo(f"mined rows written to {out}")


@app.command("split")
def split_cmd(
    mined: Annotated[Path, typer.Argument(help="Folder written by `ragtune mine`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the DatasetDict and corpus.")] = Path("data"),
    train: Annotated[float | None, typer.Option(help="Share of queries for training (default 0.8).")] = None,
    validation: Annotated[float | None, typer.Option(help="Share for validation (default 0.1).")] = None,
    test: Annotated[float | None, typer.Option(help="Share for test (default 0.1).")] = None,
    seed: Annotated[int | None, typer.Option(help="Shuffle seed (default 42).")] = None,
    use_predefined: Annotated[
        bool | None,
        typer.Option(
            "--use-predefined/--no-predefined", help="Keep the dataset's own train/test split when it has one."
        ),
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also push to this Hub dataset repo (token: HF_TOKEN).")
    ] = None,
    split_by: Annotated[
        SplitBy | None, typer.Option(help="pair (by query), passage (no passage in two splits) or group.")
    ] = None,
    near_duplicate_cosine: Annotated[
        float | None, typer.Option(help="Leakage report: cosine at which texts count as near-identical (0.95).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model for the near-identical check (default: none).")
    ] = None,
    max_seq_length: SeqOpt = None,
    cache_dir: CacheOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Split rows into train/validation/test, save a DatasetDict plus the full corpus, and report leakage."""
    from ragtune.pipeline import split_stage

    settings = _settings(
        SplitConfig,
        config,
        "split",
        train=train,
        validation=validation,
        test=test,
        seed=seed,
        use_predefined=use_predefined,
        push_to_hub=push_to_hub,
        split_by=split_by,
        near_duplicate_cosine=near_duplicate_cosine,
    )
    with _shown():
        meta = split_stage(mined, settings, out, cache_dir, model, max_seq_length)
    typer.echo(json.dumps(meta["splits"], indent=2))
    typer.echo(f"splits written to {out} ({meta['split_method']} split)")


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model folder or Hub id; repeat for several.")],
    data: Annotated[Path, typer.Option(help="Any supported dataset: ragtune data folder, BEIR folder, pairs file.")],
    split: Annotated[
        str | None, typer.Option(help="Split to evaluate (e.g. test); default: the whole dataset.")
    ] = None,
    output_json: Annotated[Path | None, typer.Option(help="Write {system: {metric: value}} here.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    bm25: Annotated[bool, typer.Option("--bm25/--no-bm25", help="Include the BM25 baseline.")] = True,
    query_column: QueryColOpt = None,
    passage_column: PassageColOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Encoding batch size.")] = None,
    max_seq_length: SeqOpt = None,
    cache_dir: CacheOpt = None,
    hybrid_on: HybridOnOpt = None,
    hybrid_weight: HybridWeightOpt = None,
    rrf: RrfOpt = False,
) -> None:
    """Retrieval metrics (NDCG@10, MRR@10, Recall@1/10/100, MAP@100) over the full corpus, per system."""
    from ragtune.pipeline import evaluate_stage
    from ragtune.tables import metrics_table

    settings = _settings(EvalConfig, None, "evaluate", batch_size=batch_size, max_seq_length=max_seq_length)
    for target in (output_json, markdown):
        if target:  # before the work, so a finished evaluation is never lost to an unwritable path
            check_file_output(target, [data])
    models = {m: m for m in model}
    with _shown():
        result = evaluate_stage(
            models,
            data,
            split,
            settings,
            cache_dir,
            bm25,
            query_column or "query",
            passage_column or "passage",
            fusion=_fusion(models, hybrid_on, hybrid_weight, rrf),
        )
    systems = (["bm25"] if bm25 else []) + list(models) + [f"{m}+bm25" for m in result.fusion]
    triplet = result.triplet_accuracy
    extra = {"triplet accuracy": triplet} if any(v is not None for v in triplet.values()) else None
    table = metrics_table(result.metrics, systems, extra)
    typer.echo(f"{result.queries} queries over a corpus of {result.corpus} passages\n")
    typer.echo(table)
    for name, choice in result.fusion.items():
        typer.echo(
            f"{name}+bm25: {choice.fusion.label}" + (f", chosen on {choice.chosen_on}" if choice.chosen_on else "")
        )
    if output_json:
        write_json(output_json, {s: result.metrics[s] for s in systems})
    if markdown:
        write_text(markdown, table + "\n")


@app.command("compare")
def compare_cmd(
    models: Annotated[list[str], typer.Argument(help="Model folders or Hub ids; the first is the reference.")],
    data: Annotated[Path, typer.Option(help="Any supported dataset: ragtune data folder, BEIR folder, pairs file.")],
    split: Annotated[
        str | None, typer.Option(help="Split to evaluate (e.g. test); default: the whole dataset.")
    ] = None,
    output_json: Annotated[Path | None, typer.Option(help="Write metrics, intervals and comparisons here.")] = None,
    bm25: Annotated[bool, typer.Option("--bm25/--no-bm25", help="Include the BM25 baseline.")] = True,
    query_column: QueryColOpt = None,
    passage_column: PassageColOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Encoding batch size.")] = None,
    max_seq_length: SeqOpt = None,
    cache_dir: CacheOpt = None,
    hybrid_on: HybridOnOpt = None,
    hybrid_weight: HybridWeightOpt = None,
    rrf: RrfOpt = False,
) -> None:
    """Evaluate several models (and BM25, and their fusion) on one dataset; each difference to the first model
    gets a 95% CI and a significant / not significant verdict; each fused system is compared with its parts."""
    from ragtune.pipeline import compare_stage
    from ragtune.tables import comparison_table, metrics_table

    settings = _settings(EvalConfig, None, "evaluate", batch_size=batch_size, max_seq_length=max_seq_length)
    if output_json:
        check_file_output(output_json, [data])
    with _shown():
        result = compare_stage(
            models,
            data,
            split,
            settings,
            cache_dir,
            bm25,
            query_column or "query",
            passage_column or "passage",
            fusion=_fusion(models, hybrid_on, hybrid_weight, rrf),
        )
    typer.echo(f"{result.queries} queries over a corpus of {result.corpus} passages\n")
    typer.echo(metrics_table(result.metrics, result.systems, cis=result.ci95))
    typer.echo("")
    typer.echo(comparison_table(result.comparisons))
    for name, choice in result.fusion.items():
        typer.echo(
            f"{name}+bm25: {choice['label']}" + (f", chosen on {choice['chosen_on']}" if choice["chosen_on"] else "")
        )
    if output_json:
        write_json(output_json, result.to_dict())


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option(help="Folder written by `ragtune split`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for model/ and checkpoints/.")] = Path("tuned"),
    model: ModelOpt = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs (default 1).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size; more in-batch negatives (default 16).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-5).")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Share of steps warming up (default 0.1).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay (default 0.01).")] = None,
    max_seq_length: SeqOpt = None,
    evals_per_epoch: Annotated[int | None, typer.Option(help="Validation runs per epoch (default 2).")] = None,
    use_negatives: Annotated[
        bool | None, typer.Option("--use-negatives/--no-negatives", help="Feed mined negatives to the loss.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed (default 42).")] = None,
    loss: Annotated[
        Loss | None, typer.Option(help="mnrl or cached-mnrl (GradCache: big batches, little memory).")
    ] = None,
    mini_batch_size: Annotated[int | None, typer.Option(help="cached-mnrl: texts per forward pass.")] = None,
    matryoshka_dims: Annotated[
        str | None, typer.Option(help="Comma-separated embedding sizes to train for, e.g. 384,256,128,64.")
    ] = None,
    guide_model: Annotated[str | None, typer.Option(help="GISTEmbed guide model (filters false negatives).")] = None,
    adapter: Annotated[Adapter | None, typer.Option(help="none or lora (PEFT adapter, merged into model/).")] = None,
    lora_rank: Annotated[int | None, typer.Option(help="lora: adapter rank (default 16).")] = None,
    group_by_length: Annotated[
        bool | None,
        typer.Option("--group-by-length/--no-group-by-length", help="Batches of similar lengths (less padding)."),
    ] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="fp32, bf16 (GPUs; CPUs with AMX) or fp16 (CUDA).")
    ] = None,
    attention_dropout: Annotated[
        str | None, typer.Option(help="Attention dropout while training: a rate (default 0) or 'model' (its own).")
    ] = None,
    report_to: Annotated[
        list[str] | None, typer.Option(help="Experiment tracker (tensorboard, mlflow); repeat for several.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the last checkpoint.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune with MultipleNegativesRankingLoss, keeping the checkpoint best on validation retrieval.

    Several processes: `torchrun --nproc_per_node N -m ragtune train ...` (gloo on CPU, NCCL on GPUs); each rank's
    batch serves as negatives for every other's, and only rank 0 writes the model.
    """
    from ragtune.train import train

    settings = _settings(
        TrainConfig,
        config,
        "train",
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_seq_length=max_seq_length,
        evals_per_epoch=evals_per_epoch,
        use_negatives=use_negatives,
        seed=seed,
        loss=loss,
        mini_batch_size=mini_batch_size,
        matryoshka_dims=[int(d) for d in matryoshka_dims.split(",")] if matryoshka_dims else None,
        guide_model=guide_model,
        adapter=adapter,
        lora_rank=lora_rank,
        group_by_length=group_by_length,
        precision=precision,
        attention_dropout=attention_dropout,
        report_to=report_to,
    )
    with _shown():
        result = train(_base_model(model, config), data, out, settings, resume=resume)
    if result.wrote_model:
        typer.echo(
            f"rank {result.rank}: model saved to {result.model_dir} after {result.steps} steps; "
            f"best validation NDCG@10: {result.best_metric}"
        )
    else:
        typer.echo(f"rank {result.rank}: trained {result.steps} steps; wrote nothing (rank 0 writes the model)")


@app.command("chunk")
def chunk_cmd(
    corpus: Annotated[Path, typer.Argument(help="Documents: BEIR folder, JSONL/CSV/Parquet, saved dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL of passages to write.")],
    model: ModelOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Longest passage, in the model's tokens.")] = 256,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive passages of a document.")] = 32,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    id_column: Annotated[str, typer.Option(help="Column holding the document id.")] = "id",
) -> None:
    """Split long documents into overlapping passages that fit the model (a RAG corpus is chunks)."""
    from ragtune.chunking import chunk_corpus

    typer.echo(json.dumps(chunk_corpus(corpus, out, model or "default", max_tokens, overlap, text_column, id_column)))


@app.command("synth")
def synth_cmd(
    corpus: Annotated[Path, typer.Argument(help="Documents or passages (see `ragtune chunk`), no queries needed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pairs JSONL (query, passage, method, doc_id).")],
    method: Annotated[
        list[str], typer.Option(help="title, ict, crop or llm; repeat to combine (offline methods only).")
    ] = ["title"],  # noqa: B006 (typer reads the default, never mutates it)
    seed: Annotated[int, typer.Option(help="Seed: the same corpus and seed give the same pairs.")] = 42,
    text_column: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    id_column: Annotated[str, typer.Option(help="Column holding the document id.")] = "id",
    base_url: Annotated[
        str | None, typer.Option(help="llm: OpenAI-compatible base URL, e.g. http://localhost:11434/v1 (Ollama).")
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="llm: model name the endpoint serves.")] = None,
    api_key_env: Annotated[str, typer.Option(help="llm: environment variable holding the API key.")] = "OPENAI_API_KEY",
    questions: Annotated[int, typer.Option(help="llm: questions asked per passage.")] = 3,
    prompt: Annotated[Path | None, typer.Option(help="llm: prompt template file with {passage} and {n}.")] = None,
    concurrency: Annotated[int, typer.Option(help="llm: requests in flight at once.")] = 4,
    retries: Annotated[int, typer.Option(help="llm: retries on 429/5xx/connection errors, with backoff.")] = 5,
    max_copied_words: Annotated[
        int, typer.Option(help="llm: drop a question sharing this many consecutive words with its passage.")
    ] = 10,
    round_trip_k: Annotated[
        int, typer.Option(help="llm: keep a question only if its passage is in the base model's top k (0: off).")
    ] = 20,
    round_trip_model: ModelOpt = None,
    style_queries: Annotated[
        Path | None,
        typer.Option(help="llm: questions your users wrote (BEIR folder or JSONL/CSV/Parquet); prompts show a few."),
    ] = None,
    style_split: Annotated[
        str | None, typer.Option(help="llm: of a BEIR --style-queries, only the questions of qrels/<split>.tsv.")
    ] = None,
    style_column: Annotated[str, typer.Option(help="llm: column of a --style-queries file.")] = "text",
    style_examples: Annotated[int, typer.Option(min=1, help="llm: user questions shown in each prompt.")] = 8,
) -> None:
    """Turn a bare corpus into (query, passage) training pairs: offline methods, or your own LLM endpoint."""
    from ragtune.synth import synth_offline

    if "llm" not in method:
        if style_queries:
            raise RagtuneError("--style-queries is for --method llm (the offline methods write no questions)")
        stats = synth_offline(corpus, method, out, seed, text_column, id_column)
        typer.echo(json.dumps(stats.to_dict(), indent=2))
        typer.echo(f"{stats.pairs} pairs written to {out}")
        return
    if method != ["llm"]:
        raise RagtuneError("--method llm cannot be combined with offline methods in one call; write two files")
    from ragtune.adapt import load_user_queries
    from ragtune.llm import LLMSettings, load_prompt, synth_llm

    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url or not llm_model:
        raise RagtuneError("--method llm needs --base-url (or OPENAI_BASE_URL) and --llm-model")
    users = load_user_queries(style_queries, style_split, style_column) if style_queries else []
    settings = LLMSettings(
        base_url=base_url,
        model=llm_model,
        api_key_env=api_key_env,
        questions=questions,
        prompt=load_prompt(prompt, with_examples=bool(users)),
        concurrency=concurrency,
        retries=retries,
        max_copied_words=max_copied_words,
        round_trip_k=round_trip_k,
        round_trip_model=round_trip_model or "default",
        style_examples=users,
        examples_per_prompt=style_examples,
        seed=seed,
    )
    with _shown():
        stats, raw = synth_llm(corpus, out, settings, text_column, id_column)
    typer.echo(json.dumps(stats.to_dict(), indent=2))
    typer.echo(f"{stats.pairs} pairs written to {out} (raw answers kept in {raw}; re-running resumes from it)")
    if stats.failed:
        typer.echo(
            f"{len(stats.failed)} passages got no answer after {retries} retries; run the same command again to "
            "ask for them only",
            err=True,
        )
        raise typer.Exit(1)


@app.command("index")
def index_cmd(
    model: Annotated[str | None, typer.Argument(help="Model folder (or Hub id) to encode with.")] = None,
    corpus: Annotated[
        Path | None, typer.Argument(help="JSONL/CSV/Parquet file, BEIR folder, saved dataset or data folder.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Index folder to write.")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Write to a vector store instead: lancedb://FOLDER, chroma://FOLDER, milvus-lite://FILE.db."),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Text column of a corpus file.")] = "text",
    id_column: Annotated[str, typer.Option(help="Id column (default: a hash of the text).")] = "id",
    add: Annotated[
        bool, typer.Option("--add", help="Append new documents to an existing index (a store: its serving one).")
    ] = False,
    stage: Annotated[
        bool, typer.Option("--stage", help="Store: write the new collection beside the serving one, not promoted.")
    ] = False,
    promote: Annotated[
        bool, typer.Option("--promote", help="Store: serve the newest (or --collection) collection.")
    ] = False,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Store: serve again the collection that served before.")
    ] = False,
    collection: Annotated[str | None, typer.Option(help="Store: the collection --promote serves.")] = None,
    check: Annotated[
        Path | None,
        typer.Option(help="Store: before promoting, compare new vs serving on this labelled set (ids = corpus ids)."),
    ] = None,
    check_split: Annotated[str | None, typer.Option(help="The split of --check to use (e.g. dev).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Store: promote even if --check shows a regression.")] = False,
    backend: Annotated[Backend, typer.Option(help="onnx and onnx-int8 after `ragtune export`.")] = "torch",
    max_seq_length: SeqOpt = None,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 32,
    cache_dir: CacheOpt = None,
    weight: WeightOpt = None,
    rrf: FuseRrfOpt = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    shards: Annotated[
        Path | None,
        typer.Option(
            help="Encode on Ray into Parquet embedding shards in this folder and index from them; the corpus "
            "(a file or a folder of .jsonl/.parquet files) never loads here; a rerun encodes only new or changed "
            "texts. Dense search only; IVF-PQ from 1M."
        ),
    ] = None,
) -> None:
    """Encode a corpus into a persisted FAISS index plus a BM25 index and a document store (ids, texts, metadata),
    or into a vector store (--store) as a new collection, checked (--check) and promoted without downtime.

    Hybrid search fuses the two at the weight the run that trained MODEL chose on validation (its results.json),
    else by RRF; --weight or --rrf set it."""
    from ragtune.config import EngineConfig
    from ragtune.embeddings import Encoder
    from ragtune.ray_engine import engine_for

    encoder = Encoder(model, cache_dir, max_seq_length, batch_size, backend=backend) if model else None
    engine = EngineConfig(kind="ray" if ray or ray_address else "local", address=ray_address)
    fusion = _one_fusion(weight, rrf)
    if store:
        from ragtune.rollout import manage_store

        if out is not None:
            raise RagtuneError("give one of --out (an index folder) and --store (a vector store)")
        with _shown(), engine_for(engine):
            result = manage_store(
                store,
                encoder,
                corpus,
                add=add,
                stage=stage,
                promote=promote,
                rollback_=rollback,
                collection=collection,
                check_data=check,
                check_split=check_split,
                force=force,
                text_column=text_column,
                id_column=id_column,
                fusion=fusion,
            )
        typer.echo(f"{store}: {result.message}")
        return
    from ragtune.index import index_corpus

    if encoder is None or corpus is None or out is None:
        raise RagtuneError("give MODEL, CORPUS and --out (or --store URI)")
    if stage or promote or rollback or collection or check or force:
        raise RagtuneError("--stage, --promote, --rollback, --collection, --check and --force are for --store")
    if shards is not None:
        from ragtune.shards import index_through_shards

        if add or fusion:
            raise RagtuneError("--shards builds a new dense index: no --add, --weight or --rrf")
        with _shown(), engine_for(EngineConfig(kind="ray", address=ray_address)):
            written = index_through_shards(encoder, corpus, shards, out, text_column, id_column)
        count, reused = written.meta["count"], written.meta["reused"]
        typer.echo(f"indexed {count} documents into {out} (embedding shards in {shards}: {reused} vectors reused)")
        return
    with _shown(), engine_for(engine):
        index, added, seen = index_corpus(encoder, corpus, out, add, text_column, id_column, fusion)
    if add:
        typer.echo(f"added {added} new documents ({seen - added} already indexed); {out} holds {len(index.documents)}")
        return
    typer.echo(f"indexed {len(index.documents)} documents into {out}")


@app.command("mine-shards")
def mine_shards_cmd(
    index: Annotated[Path, typer.Argument(help="An index built from embedding shards (`ragtune index --shards`).")],
    pairs: Annotated[list[Path], typer.Argument(help="JSONL or Parquet files of (query, positive id) rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for Parquet files of negatives.")],
    num_negatives: Annotated[int, typer.Option(help="Negatives per row.")] = 1,
    range_min: Annotated[int, typer.Option(help="Skip this many top candidates.")] = 0,
    range_max: Annotated[int, typer.Option(help="Consider candidates up to this rank.")] = 30,
    nprobe: Annotated[int, typer.Option(help="IVF-PQ index: cells searched per query.")] = 32,
    query_column: Annotated[str, typer.Option(help="Column holding the query text.")] = "query",
    positive_column: Annotated[str, typer.Option(help="Column holding the positive passage's id.")] = "positive_id",
    strategy: Annotated[
        Literal["hard", "least-similar"],
        typer.Option(help="hard (ranked by the index's model), or least-similar (the classic walk; an exact index)."),
    ] = "hard",
    held_out: Annotated[
        list[Path] | None,
        typer.Option(
            help="Held-out (e.g. test) pairs, same columns: their positives are never negatives (repeatable)."
        ),
    ] = None,
    training_data: Annotated[
        Path | None, typer.Option(help="Also write the rows with their texts as a `ragtune train --data` folder here.")
    ] = None,
    margin: MarginOpt = None,
    max_score: MaxScoreOpt = None,
    sampling: Annotated[
        Literal["top", "random"], typer.Option(help="hard: take the window's top, or a random choice from it.")
    ] = "top",
    seed: Annotated[int, typer.Option(help="Seed of random choices (each row has its own generator).")] = 42,
    ray_address: RayAddressOpt = None,
) -> None:
    """Hard negatives for (query, positive id) files, mined on a Ray cluster by actors holding the model and the index;
    ragtune's process never holds the pairs or the corpus. No groups or near-duplicate test: `ragtune mine` does those.
    --strategy least-similar walks the rows in order here, over the exact index's vectors."""
    from ragtune.config import EngineConfig
    from ragtune.ray_engine import engine_for
    from ragtune.shards import check_mining, mine_from_shards

    settings = {"num_negatives": num_negatives, "range_min": range_min, "range_max": range_max}
    settings.update(margin=margin, max_score=max_score, sampling=sampling)
    check_mining(index, [*pairs, *(held_out or [])], strategy, **settings)  # before a cluster starts
    with _shown(), engine_for(EngineConfig(kind="ray", address=ray_address)):
        done = mine_from_shards(
            index,
            pairs,
            out,
            query_column,
            positive_column,
            num_negatives,
            range_min,
            range_max,
            nprobe,
            strategy,
            held_out or [],
            training_data,
            margin,
            max_score,
            sampling,
            seed,
        )
    typer.echo(f"negatives for the rows of {len(pairs)} file(s) in {done}")
    if training_data:
        typer.echo(f"training folder: {training_data} (`ragtune train --data {training_data}`)")


@app.command("evaluate-shards")
def evaluate_shards_cmd(
    indexes: Annotated[
        list[str], typer.Argument(help="Index folders (e.g. `ragtune index --shards`), each NAME=FOLDER or FOLDER.")
    ],
    data: Annotated[Path, typer.Option(help="BEIR folder: queries.jsonl and qrels/SPLIT.tsv (its corpus unread).")],
    split: Annotated[str, typer.Option(help="The qrels file to evaluate, e.g. test.")],
    output_json: Annotated[Path | None, typer.Option(help="Write metrics, intervals and comparisons here.")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF-PQ index: cells searched per query.")] = None,
    batch_size: Annotated[int, typer.Option(help="Queries per encoding batch.")] = 32,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """Retrieval metrics of indexes too large to load, over their whole corpus, each compared with the first;
    ragtune's process never holds the corpus (with --ray, queries are encoded and searched on the cluster)."""
    from ragtune.config import EngineConfig
    from ragtune.ray_engine import engine_for
    from ragtune.shard_eval import compare_from_shards
    from ragtune.tables import comparison_table, metrics_table

    named = dict(i.split("=", 1) if "=" in i else (i, i) for i in indexes)
    if output_json:
        check_file_output(output_json, [data, *named.values()])
    engine = EngineConfig(kind="ray" if ray or ray_address else "local", address=ray_address)
    with _shown(), engine_for(engine):
        result = compare_from_shards(named, data, split, nprobe, batch_size)
    typer.echo(f"{result.queries} queries over a corpus of {result.corpus} passages\n")
    typer.echo(metrics_table(result.metrics, result.systems, cis=result.ci95))
    if result.comparisons:
        typer.echo("")
        typer.echo(comparison_table(result.comparisons))
    if output_json:
        write_json(output_json, result.to_dict())


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model folder to export (the files land in MODEL/onnx/).")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format so far).")] = False,
    quantize: Annotated[Literal["int8"] | None, typer.Option(help="Also write an int8 model.")] = None,
    min_cosine: Annotated[float, typer.Option(help="Refuse an export whose embeddings agree less with torch.")] = 0.99,
) -> None:
    """Export to ONNX through torch.onnx (optionally int8), verified against the torch model on probe texts.

    Use it with `ragtune index --backend onnx` (or onnx-int8); search and serve follow the index's backend."""
    from ragtune.export import export_onnx

    if not onnx:
        raise RagtuneError("say which format: --onnx")
    report = export_onnx(model, quantize, min_cosine)
    for variant, r in report.items():
        typer.echo(
            f"{variant}: {r['file']} (cosine to torch on probe texts: min {r['min_cosine']}, mean {r['mean_cosine']})"
        )


@app.command("search")
def search_cmd(
    model: Annotated[
        str, typer.Argument(help="An index folder or store URI (from `ragtune index`), or a model folder/Hub id.")
    ],
    query: Annotated[list[str] | None, typer.Argument(help="One or more queries.")] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(help="With a model: ragtune data folder, BEIR folder, saved dataset or JSONL/CSV/Parquet file."),
    ] = None,
    queries_file: Annotated[Path | None, typer.Option(help="A file with one query per line.")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 5,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Index or store search: keep metadata key=value (repeatable)."),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Text column of a corpus file.")] = "text",
    id_column: Annotated[str, typer.Option(help="Id column of a corpus file (default: hash of the text).")] = "id",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    max_seq_length: SeqOpt = None,
    cache_dir: CacheOpt = None,
    mode: Annotated[Literal["dense", "bm25", "hybrid"], typer.Option(help="The model, BM25, or both fused.")] = "dense",
    weight: WeightOpt = None,
    rrf: FuseRrfOpt = False,
) -> None:
    """Top-k passages for each query, from a persisted index or a model plus a corpus: by the model (cosine
    scores), BM25, or both fused (hybrid; at the index's weight unless --weight or --rrf)."""
    from ragtune.index import parse_filters
    from ragtune.search import hits_to_json, search_anything

    queries = list(query or [])
    if queries_file:
        if not queries_file.is_file():
            raise RagtuneError(f"queries file not found: {queries_file}")
        queries += [line.strip() for line in queries_file.read_text().splitlines() if line.strip()]
    with _shown():
        hits = search_anything(
            model,
            queries,
            k,
            corpus,
            parse_filters(filter_ or []),
            text_column,
            id_column,
            max_seq_length,
            cache_dir,
            not as_json,
            mode,
            _one_fusion(weight, rrf),
        )
    if as_json:
        typer.echo(json.dumps(hits_to_json(queries, hits), indent=2))
        return
    for q, hs in zip(queries, hits, strict=True):
        typer.echo(f"\nquery: {q}")
        for rank, h in enumerate(hs, start=1):
            snippet = h.text if len(h.text) <= 200 else h.text[:200] + "…"
            typer.echo(f"  {rank:>2}. {h.score:.4f}  [{h.id}] {snippet}")


@app.command("serve")
def serve_cmd(
    index: Annotated[
        str,
        typer.Argument(help="Index folder, or store URI (serves its serving collection and follows promotions)."),
    ],
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless others must reach it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    base_model: Annotated[
        str | None, typer.Option(help="Also serve this model over the same documents, for the side-by-side page.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="A dataset with qrels: the page marks relevant passages of known queries.")
    ] = None,
    max_inputs: Annotated[int, typer.Option(help="Most inputs in one embeddings request (else 413).")] = 256,
    max_chars: Annotated[int, typer.Option(help="Most characters in one input (else 413).")] = 8192,
    max_request_tokens: Annotated[
        int, typer.Option(help="Most tokens in one request, after truncation (else 413): bounds one caller's work.")
    ] = 16384,
    cache_dir: CacheOpt = None,
) -> None:
    """OpenAI-compatible /v1/embeddings, /search, /health and a comparison page at /. API key: RAGTUNE_API_KEY."""
    try:
        from ragtune.serve import serve
    except ImportError as err:
        raise RagtuneError(f"serving needs the serve extra: pip install 'ragtune[serve]' ({err})") from err

    serve(
        str(index),
        host,
        port,
        base_model=base_model,
        data=str(data) if data else None,
        max_inputs=max_inputs,
        max_chars=max_chars,
        max_request_tokens=max_request_tokens,
        cache_dir=cache_dir,
    )


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="Run config (YAML); see examples/.")],
    output_dir: Annotated[str | None, typer.Option(help="Override output_dir.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override one setting, e.g. --set train.epochs=2 (repeatable).")
    ] = None,
    allow_regression: Annotated[
        bool, typer.Option(help="Exit 0 even if the tuned model is not better than the base on validation.")
    ] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
) -> None:
    """The whole pipeline: prepare, mine, split, evaluate base + BM25, train, evaluate tuned, report."""

    from ragtune.errors import RegressionError
    from ragtune.pipeline import run

    overrides = [f"output_dir={output_dir}"] if output_dir else []
    if ray or ray_address:
        overrides += ["engine.kind=ray"] + ([f"engine.address={ray_address}"] if ray_address else [])
    cfg = override(load_config(config), overrides + list(set_ or []), str(config))
    try:
        with _shown():
            result = run(cfg, allow_regression=allow_regression)
    except RegressionError as err:
        if err.result is not None:
            _print_run(err.result)
        raise
    _print_run(result)


def _fusion(models, hybrid_on: str | None, hybrid_weight: float | None, rrf: bool):
    from ragtune.hybrid import Fusion

    if sum(x is not None and x is not False for x in (hybrid_on, hybrid_weight, rrf)) > 1:
        raise RagtuneError("give one of --hybrid-on, --hybrid-weight and --rrf")
    if hybrid_weight is not None or rrf:
        fixed = Fusion("rrf", 0.0) if rrf else Fusion("convex", hybrid_weight)
        return dict.fromkeys(models, fixed)
    return hybrid_on


def _one_fusion(weight: float | None, rrf: bool):
    from ragtune.hybrid import Fusion

    if weight is not None and rrf:
        raise RagtuneError("give one of --weight and --rrf")
    return Fusion("rrf", 0.0) if rrf else Fusion("convex", weight) if weight is not None else None


def _print_run(result) -> None:
    out = terminal.console
    out.rule("[bold]result")
    out.print(result.table, soft_wrap=True, markup=False)
    out.print()
    out.print(result.verdict, markup=False)
    out.print(result.recommendation, markup=False)
    if result.eval_table:
        out.print("\nwhere users are (NDCG@10 on each eval set):", markup=False)
        out.print(result.eval_table, soft_wrap=True, markup=False)
    if result.template_warning:
        out.print(f"\n[bold yellow]warning:[/bold yellow] {result.template_warning}", soft_wrap=True)
    out.print(f"\nmodel:  {result.model_dir}\nreport: {result.report_html} (and {result.report_md})")
    if result.regression["regressed"]:
        out.print(f"\n[bold red]{result.regression['message']}[/bold red]")


def main() -> None:
    try:
        app()
    except RagtuneError as err:
        _fail(str(err), err.exit_code)
    except OSError as err:
        # An unreadable, missing or unwritable path met deep inside a library: name it, in one line.
        if err.filename is None:
            raise
        _fail(f"{err.filename}: {err.strerror or err}", 2)


def _fail(message: str, code: int) -> None:
    if os.environ.get("RAGTUNE_DEBUG"):
        import traceback

        traceback.print_exc()  # the traceback for whoever debugs, the exit code for whatever scripts call us
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
