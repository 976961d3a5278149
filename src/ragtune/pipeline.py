"""Stages that hand off through folders, and `run`, which chains them and skips what is already done.

A run directory holds every stage's output plus the resolved config:
    config.yaml   the resolved settings
    prepared/     BEIR-layout copy of the loaded pairs (+ load statistics)
    mined/        rows.jsonl (query, positive, negative ids) + stats.json
    data/         the DatasetDict of train/validation/test rows + the full corpus + leakage.json
    eval/         base/ and tuned/result.json: metrics, per-query values, top-10 ids, pair scores, per split
    model/        the fine-tuned model; checkpoints/ the trainer's checkpoints (resume after a crash)
    cache/        embeddings keyed by model and text, shared by every stage and by `ragtune search`
    report.html, report.md, results.json
Each stage records a key (a hash of its settings and its inputs' keys) in `<stage>/.stage.json` (`ragtune.stages`);
a stage whose key matches is skipped, so re-running after a crash resumes where it stopped. A config with `shards:`
runs `ragtune.shard_run` instead, whose corpus never enters this process.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ragtune import data as data_mod
from ragtune.comparison import ComparisonResult, comparison
from ragtune.config import (
    AdaptConfig,
    DataConfig,
    EvalConfig,
    EvalSetConfig,
    MiningConfig,
    RunConfig,
    SplitConfig,
    SynthConfig,
)
from ragtune.embeddings import Encoder, model_fingerprint, resolve_model
from ragtune.errors import RagtuneError, RegressionError
from ragtune.evaluate import EvalResult, evaluate_systems, pair_scores, triplet_accuracy
from ragtune.hybrid import Fusion, FusionChoice
from ragtune.mining import mine, read_mined, save_mined
from ragtune.outputs import claim_folder, replace_folder, write_json, write_text
from ragtune.ray_engine import engine_for
from ragtune.report import RunResult, summarise_run
from ragtune.splits import leakage_report, push_to_hub, save_splits, split_queries, trained_on
from ragtune.stages import checkpoint_key, eval_set_data, file_key, run_stage, stage_key, train_in_run

log = logging.getLogger(__name__)
EVAL_VERSION = 3  # bump when the evaluation output changes, so finished runs re-evaluate
EVAL_SET_VERSION = 2  # the same for eval sets (2: questions met in training, and the comparison without them)
UNSEEN = "not met in training"  # an eval set's questions the tuned model never trained on (`splits.trained_on`)


# ---- stages, each usable on its own ---------------------------------------------------------------------------


def prepare_stage(config: DataConfig, out: str | Path) -> data_mod.PairData:
    """Load the pairs `config` names and save them, normalised, as a BEIR folder in `out` (`prepared/`).

    Args:
        config: Where the data is and how to read it (`data:` of a run config).
        out: The folder to write; replaced only if ragtune made it.

    Returns:
        The loaded pairs: queries, passages, relevance judgements.

    Example (examples run in order, in a folder holding `pairs.jsonl`):
        >>> from ragtune.config import DataConfig
        >>> data = ragtune.prepare(DataConfig(path="pairs.jsonl"), "work/prepared")
        >>> len(data.queries)
        40
    """
    out = Path(out)
    data = data_mod.load_pairs(
        config.path,
        config.format,
        config.query_column,
        config.passage_column,
        config.skip_bad_rows,
        config.max_pairs,
        config.sample_seed,
        config.group_column,
    )
    with replace_folder(out, "prepared", [config.path]) as new:
        data_mod.save_beir(data, new)
    return data


def synth_stage(config: SynthConfig, model: str, out: Path) -> dict[str, Any]:
    """Chunk the corpus (when asked) and make pairs from it with the offline methods; stats beside the pairs."""
    from ragtune.chunking import chunk_corpus
    from ragtune.synth import synth_offline

    if not Path(config.corpus).exists():
        raise RagtuneError(f"synth.corpus not found: {config.corpus}")
    claim_folder(out, "synth", [config.corpus])
    corpus, text_column, id_column = Path(config.corpus), config.text_column, config.id_column
    stats: dict[str, Any] = {}
    if config.chunk_tokens:
        stats["chunking"] = chunk_corpus(
            corpus, out / "chunks.jsonl", model, config.chunk_tokens, config.chunk_overlap, text_column, id_column
        )
        corpus, text_column, id_column = out / "chunks.jsonl", "text", "id"
    made = synth_offline(corpus, list(config.methods), out / "pairs.jsonl", config.seed, text_column, id_column)
    stats["synth"] = made.to_dict()
    write_json(out / "stats.json", stats)
    log.info("synthetic pairs: %s", stats)
    return stats


def adapt_stage(
    prepared: Path,
    data_config: DataConfig,
    config: AdaptConfig,
    base_model: str,
    out: Path,
    cache_dir: Path | None,
    max_seq_length: int | None = None,
) -> dict[str, Any]:
    """The prepared pairs plus the users' corpus (`data.corpus`) and train-only pairs made from it (`ragtune.adapt`),
    saved like a prepared folder, which mining and splitting then read."""
    from ragtune.adapt import adapt, load_judged, load_pairs_files, load_user_queries
    from ragtune.data import load_documents

    data = data_mod.load_prepared(prepared)
    documents = load_documents(data_config.corpus, data_config.corpus_text_column) if data_config.corpus else []
    queries = (
        load_user_queries(data_config.user_queries, data_config.user_queries_split)
        if data_config.user_queries
        else None
    )
    judged = (
        load_judged(data_config.user_queries, data_config.user_queries_split)
        if "judged" in config.methods and data_config.user_queries
        else None
    )
    encoder = Encoder(base_model, cache_dir, max_seq_length) if "pseudo" in config.methods and queries else None
    extra = load_pairs_files(config.pairs)
    adapted, stats = adapt(data, documents, queries, encoder, config, judged, extra)
    sources = [prepared, data_config.corpus, data_config.user_queries, *config.pairs]
    with replace_folder(out, "adapted", sources) as new:
        data_mod.save_beir(adapted, new)
        write_json(new / "adapt.json", stats.to_dict())
    log.info("adapted to the users' corpus: %s", stats.to_dict())
    return stats.to_dict()


def mine_stage(
    prepared: str | Path,
    base_model: str,
    config: MiningConfig,
    out: str | Path,
    cache_dir: str | Path | None = None,
    max_seq_length: int | None = None,
    split: SplitConfig | None = None,
) -> dict[str, Any]:
    """Mine negatives for every row of a prepared folder and write the `mined/` folder.

    The split is decided here, before mining, so that with `negatives_from: train` a training row never gets a
    validation/test passage as its negative; `split_stage` then reuses it.

    Args:
        prepared: A folder written by `prepare`.
        base_model: The model whose embeddings rank candidates: a folder, a Hub id, or "default".
        config: How to mine (`mining:` of a run config): strategy, how many negatives, guards.
        out: The folder to write.
        cache_dir: Embedding cache (default: $RAGTUNE_CACHE_DIR or ~/.cache/ragtune).
        max_seq_length: Truncate texts to this many tokens (default: the model's).
        split: The split mining must respect with `negatives_from: train`.

    Returns:
        Mining statistics (JSON-able; also in `out/stats.json`).

    Example:
        >>> from ragtune.config import MiningConfig
        >>> stats = ragtune.mine("work/prepared", "default", MiningConfig(strategy="hard"), "work/mined")
        >>> stats["rows"]
        40
    """
    prepared, out = Path(prepared), Path(out)
    data = data_mod.load_prepared(prepared)
    held_out = None
    if config.negatives_from == "train":
        split = split or SplitConfig()
        split_ids, method = split_queries(data, split)
        held_out = set(split_ids["validation"]) | set(split_ids["test"])
    needs_model = config.strategy in ("least-similar", "hard")
    encoder = Encoder(base_model, cache_dir, max_seq_length, config.batch_size) if needs_model else None
    result = mine(data, encoder, config, held_out)
    meta = {"prepared": str(prepared.resolve()), "stats": result.stats}
    if held_out is not None:
        meta["split"] = {"settings": split.assignment(), "method": method, "ids": split_ids}
    with replace_folder(out, "mined", [prepared]) as new:
        save_mined(result.rows, meta, new)
    return result.stats


def split_stage(
    mined: str | Path,
    config: SplitConfig,
    out: str | Path,
    cache_dir: str | Path | None = None,
    model: str | None = None,
    max_seq_length: int | None = None,
) -> dict[str, Any]:
    """Split by query (or passage, or group), save the DatasetDict, and report leakage across the splits.

    Args:
        mined: A folder written by `mine`.
        config: Split sizes, what to split by, seed (`split:` of a run config).
        out: The folder to write: a `datasets` DatasetDict plus the corpus, what `fine_tune` and `evaluate_models`
            read.
        cache_dir: Embedding cache for `model`.
        model: With a model, near-identical texts across splits are found with its embeddings; without, identical
            ones only.
        max_seq_length: Truncation for `model`.

    Returns:
        The folder's description (`ragtune_data.json`): split sizes, split method, leakage summary, mining stats.

    Example:
        >>> from ragtune.config import SplitConfig
        >>> info = ragtune.split("work/mined", SplitConfig(), "work/data")
        >>> sorted(info["splits"])
        ['test', 'train', 'validation']
    """
    mined, out = Path(mined), Path(out)
    data, rows, meta = read_mined(mined)
    mining_stats = meta["stats"]
    recorded = meta.get("split")
    if recorded and recorded["settings"] != config.assignment():
        raise RagtuneError(
            f"{mined} was mined for the split {recorded['settings']} (training rows avoid its held-out passages), "
            f"not for {config.assignment()}: run `ragtune mine` with the same split settings (--config), "
            "or mine with negatives_from: all"
        )
    split_ids, method = (recorded["ids"], recorded["method"]) if recorded else split_queries(data, config)
    vectors = Encoder(model, cache_dir, max_seq_length, show_progress=False).encode if model else None
    leakage = leakage_report(data, split_ids, vectors, config.near_duplicate_cosine)
    extra = {
        "split_method": method,
        "mining": mining_stats,
        "split_config": config.model_dump(),
        "leakage": {"summary": leakage["summary"]},
    }
    if cache_dir is not None:
        extra["cache_dir"] = str(Path(cache_dir).resolve())
    with replace_folder(out, "data", [mined]) as new:
        save_splits(data, rows, split_ids, new, extra)
        write_json(new / "leakage.json", leakage)
    log.info("leakage across splits: %s (details in %s)", leakage["summary"], out / "leakage.json")
    if config.push_to_hub:
        push_to_hub(out, config.push_to_hub)
    return json.loads((out / data_mod.DATA_MARKER).read_text())


def evaluate_stage(
    models: dict[str, str],
    data_path: str | Path,
    split: str | None = None,
    config: EvalConfig | None = None,
    cache_dir: str | Path | None = None,
    bm25: bool | None = None,
    query_column: str = "query",
    passage_column: str = "passage",
    data: data_mod.PairData | None = None,
    fusion: str | dict[str, Fusion | FusionChoice] | None = None,
) -> EvalResult:
    """Retrieval metrics on one split, each query searched over the full corpus, plus the mined triplets' scores
    where rows have them, and each model fused with BM25 when `fusion` asks.

    Args:
        models: {name: model folder, Hub id or "default"}.
        data_path: A ragtune data folder, a BEIR folder, a pairs file (JSONL/CSV/Parquet) or a saved dataset.
        split: The split to evaluate (e.g. "test"); None: the whole dataset.
        config: Batch size and truncation (`evaluate:` of a run config); default settings when None.
        cache_dir: Embedding cache.
        bm25: Add BM25 (bm25s) as the system `bm25`; None: as `config` says (yes by default).
        query_column, passage_column: The columns of a pairs file.
        data: `data_path` already loaded, for callers evaluating several splits.
        fusion: Add `<model>+bm25` systems: a split name (e.g. "validation", "dev") to choose each model's fusion
            on, never the split evaluated unless it is a validation split; or {model: Fusion} fixed by the user.

    Returns:
        Metrics, per-query values and top-10 ids per system; triplet accuracy for ragtune data folders; the fusion
        used per model.

    Example:
        >>> result = ragtune.evaluate_models({"base": "default"}, "work/data", "test")
        >>> sorted(result.metrics), result.queries, result.corpus
        (['base', 'bm25'], 4, 40)
    """
    config = config or EvalConfig()
    for model in models.values():
        resolve_model(model)  # a wrong model path fails before any data is read or encoded
    if data is None:
        data = data_mod.load_pairs(data_path, "auto", query_column, passage_column)
    queries = _split(data, split, data_path) if split else data
    bm25 = config.bm25 if bm25 is None else bm25
    settings = (cache_dir, config.max_seq_length, config.batch_size)
    if isinstance(fusion, str) and fusion == split:
        result = evaluate_systems(models, queries, bm25, *settings, fusion="choose")
    else:
        if isinstance(fusion, str):
            tuning = evaluate_systems(models, _split(data, fusion, data_path), False, *settings, fusion="choose")
            fusion = {name: replace(choice, chosen_on=fusion) for name, choice in tuning.fusion.items()}
        fixed = {n: f if isinstance(f, FusionChoice) else FusionChoice(f) for n, f in (fusion or {}).items()}
        result = evaluate_systems(models, queries, bm25, *settings, fusion=fixed or None)
    if isinstance(fusion, str):
        result.fusion = {name: replace(choice, chosen_on=split) for name, choice in result.fusion.items()}
    for name, model in models.items():
        scores = _pair_scores(model, data_path, split, cache_dir, config)
        result.triplet_accuracy[name] = triplet_accuracy(scores) if scores else None
        if scores:
            result.pair_scores[name] = scores
    return result


def compare_stage(
    models: list[str] | dict[str, str],
    data_path: str | Path,
    split: str | None = None,
    config: EvalConfig | None = None,
    cache_dir: str | Path | None = None,
    bm25: bool = True,
    query_column: str = "query",
    passage_column: str = "passage",
    extra_pairs: list[tuple[str, str]] = (),
    data: data_mod.PairData | None = None,
    fusion: str | dict[str, Fusion | FusionChoice] | None = None,
) -> ComparisonResult:
    """Several models (and BM25, and each model fused with BM25) on the same queries, each compared with the first
    model, with 95% intervals and paired tests (Holm-adjusted over every comparison made). A fused system
    `<model>+bm25` is compared with each of its two components, on NDCG@10.

    Args:
        models: Model paths (each named by its path) or {name: path}; the first is the reference.
        data_path, split, config, cache_dir, bm25, query_column, passage_column, data, fusion: as for
            `evaluate_models`.
        extra_pairs: More (baseline, system) comparisons, e.g. [("bm25", "tuned")].

    Returns:
        Metrics with intervals per system, and the comparisons.

    Example:
        >>> result = ragtune.compare_models({"base": "default"}, "pairs.jsonl")
        >>> [(c.baseline, c.system, c.metric) for c in result.comparisons][0]
        ('base', 'bm25', 'ndcg@10')
    """
    config = config or EvalConfig()

    named = models if isinstance(models, dict) else {m: m for m in dict.fromkeys(models)}
    result = evaluate_stage(
        named, data_path, split, config, cache_dir, bm25, query_column, passage_column, data, fusion
    )
    return comparison(result, list(named) + (["bm25"] if bm25 else []), extra_pairs)


def _split(data: data_mod.PairData, split: str, data_path: str | Path) -> data_mod.PairData:
    if not data.splits or split not in data.splits:
        have = ", ".join(data.splits or {}) or "none (the whole dataset is one set)"
        raise RagtuneError(f"{data_path}: no split {split!r}; splits: {have}")
    return data.subset(data.splits[split])


def _pair_scores(model: str, data_path: Path, split: str | None, cache_dir, config: EvalConfig) -> dict | None:
    if split is None or not (Path(data_path) / data_mod.DATA_MARKER).exists():
        return None  # only ragtune's own splits carry mined negatives
    import datasets

    ds = datasets.load_from_disk(str(data_path))[split]
    neg_cols = [c for c in ds.column_names if c.startswith("negative") and not c.endswith("_id")]
    if len(ds) == 0:
        return None
    encoder = Encoder(model, cache_dir, config.max_seq_length, config.batch_size)
    negatives = [list(t) for t in zip(*[ds[c] for c in neg_cols], strict=True)] if neg_cols else [[] for _ in ds]
    return pair_scores(encoder, ds["query"], ds["positive"], negatives)


# ---- the whole run ---------------------------------------------------------------------------------------------


def run(config: RunConfig, allow_regression: bool = False) -> RunResult:
    """The whole pipeline: prepare, (adapt,) mine, split, evaluate base + BM25, train, evaluate tuned, eval sets,
    report. Each stage is skipped when its folder is up to date with its inputs and settings. With `shards:` in the
    config, the run from shards on a Ray cluster (`ragtune.shard_run.run_from_shards`).

    Args:
        config: The run's settings (`load_config("run.yaml")`, or `RunConfig.model_validate({...})`); the caller's
            object is not changed.
        allow_regression: Return normally even when the tuned model is not better than the base model on the
            guard's set (validation by default).

    Returns:
        Where the model and reports are, and the test metrics, verdict and eval-set results.

    Raises:
        RegressionError: The tuned model regressed and regressions are not allowed; `err.result` holds the
            finished run's `RunResult`.
        RagtuneError: Bad data, settings or paths, in one sentence.

    Example:
        >>> config = ragtune.RunConfig.model_validate(
        ...     {"data": {"path": "pairs.jsonl"}, "output_dir": "runs/example", "allow_regression": True}
        ... )
        >>> result = ragtune.run(config)
        >>> sorted(result.metrics), result.model_dir.name, result.report_html.name
        (['base', 'base+bm25', 'bm25', 'tuned', 'tuned+bm25'], 'model', 'report.html')
    """
    if config.shards:
        from ragtune.shard_run import run_from_shards

        return run_from_shards(config, allow_regression)
    with engine_for(config.engine):
        return _run(config, allow_regression)


def _run(config: RunConfig, allow_regression: bool) -> RunResult:
    config = config.model_copy(deep=True)  # paths are filled in below; the caller's config stays as given
    out = Path(config.output_dir)
    inputs = [
        config.data.path,
        config.synth.corpus if config.synth else None,
        config.data.corpus,
        config.data.user_queries,
        *(s.path for s in config.eval_sets),
    ]
    claim_folder(out, "run", inputs)
    cache = out / "cache"
    resolved_yaml = yaml.safe_dump(config.model_dump(), sort_keys=False)
    write_text(out / "config.yaml", resolved_yaml)
    base = resolve_model(config.base_model)
    base_key = model_fingerprint(base)
    seq = config.evaluate.max_seq_length

    if config.synth:
        synth = config.synth
        k_synth = stage_key(synth.model_dump(), file_key(Path(synth.corpus)), base_key if synth.chunk_tokens else None)
        run_stage(
            "synthesize pairs from the corpus", out / "synth", k_synth, lambda: synth_stage(synth, base, out / "synth")
        )
        config.data.path = str((out / "synth" / "pairs.jsonl").resolve())
        config.data.group_column = config.data.group_column or "doc_id"  # one document's pairs stay together
    source = config.data.path
    if config.data.format == "pubmedqa" and (not source or not Path(source).exists()):
        source = str(data_mod.resolve_pubmedqa(source))
        config.data.path = source
    if not source or not Path(source).exists():
        raise RagtuneError(f"data not found: {source}")
    k_prepare = stage_key(config.data.model_dump(), file_key(Path(source)))
    run_stage("prepare", out / "prepared", k_prepare, lambda: prepare_stage(config.data, out / "prepared"))
    pairs_dir = out / "prepared"
    if config.data.corpus or config.adapt.pairs:
        k_prepare = stage_key(
            k_prepare,
            config.adapt.model_dump(),
            file_key(Path(config.data.corpus)) if config.data.corpus else None,
            file_key(Path(config.data.user_queries)) if config.data.user_queries else None,
            *(file_key(Path(f)) for f in config.adapt.pairs),
            base_key,
            seq,
        )
        pairs_dir = out / "adapted"
        run_stage(
            "adapt to the users' corpus",
            pairs_dir,
            k_prepare,
            lambda: adapt_stage(out / "prepared", config.data, config.adapt, base, pairs_dir, cache, seq),
        )
    k_mine = stage_key(k_prepare, config.mining.model_dump(), base_key, seq, config.split.assignment())
    run_stage(
        "mine negatives",
        out / "mined",
        k_mine,
        lambda: mine_stage(pairs_dir, base, config.mining, out / "mined", cache, seq, config.split),
    )
    k_split = stage_key(k_mine, config.split.model_dump(), base_key)
    run_stage(
        "split",
        out / "data",
        k_split,
        lambda: split_stage(out / "mined", config.split, out / "data", cache, base, seq),
    )

    eval_dir = out / "eval"
    k_base = stage_key(k_split, config.evaluate.model_dump(), base_key, EVAL_VERSION)
    run_stage(
        "evaluate base model and BM25 (full corpus)",
        eval_dir / "base",
        k_base,
        lambda: _save_eval({"base": base}, out, eval_dir / "base", config.evaluate, bm25=True),
    )

    k_train = stage_key(k_split, config.train.model_dump(), base_key, *checkpoint_key(config))
    run_stage("train", out / "model", k_train, lambda: train_in_run(config, base, out, k_train))
    k_tuned = stage_key(k_train, config.evaluate.model_dump(), EVAL_VERSION)
    run_stage(
        "evaluate tuned model (full corpus)",
        eval_dir / "tuned",
        k_tuned,
        lambda: _save_eval({"tuned": str(out / "model")}, out, eval_dir / "tuned", config.evaluate, bm25=False),
    )
    for eval_set in config.eval_sets:
        k_set = stage_key(k_tuned, base_key, eval_set.model_dump(), file_key(Path(eval_set.path)), EVAL_SET_VERSION)
        run_stage(
            f"evaluate on {eval_set.name} (base, tuned, BM25)",
            eval_dir / "sets" / eval_set.name,
            k_set,
            lambda s=eval_set: _save_eval_set(s, base, out, config.evaluate),
        )

    summary = summarise_run(out, resolved_yaml, config.guard, [s.name for s in config.eval_sets])
    if summary.regression["regressed"] and not (allow_regression or config.allow_regression):
        raise RegressionError(summary.regression["message"] + " Pass --allow-regression to accept it.", summary)
    return summary


def _save_eval(models: dict[str, str], out: Path, folder: Path, config: EvalConfig, bm25: bool) -> None:
    data = data_mod.load_ragtune_data(out / "data")  # read once, evaluated on both splits
    results = {}
    # Each model's fusion with BM25 is chosen on the validation queries and then applied, fixed, to the test ones.
    fusion = "validation" if config.hybrid and data.splits.get("validation") else None
    for split in ("validation", "test"):
        if data.splits.get(split):
            evaluation = evaluate_stage(
                models, out / "data", split, config, out / "cache", bm25, data=data, fusion=fusion
            )
            results[split] = evaluation.to_dict()
            fusion = evaluation.fusion or None
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "result.json", results, indent=None)


def _save_eval_set(eval_set: EvalSetConfig, base: str, out: Path, config: EvalConfig) -> None:
    """Another test set (real users' questions, say): the same comparison code as `ragtune compare`."""
    from ragtune.templates import template_stats

    path = Path(eval_set.path)
    data, queries = eval_set_data(eval_set)
    fusion = (eval_set.fusion_split or _validation_fusion(out)) if config.hybrid else None

    def compared(split: str | None, data: data_mod.PairData) -> dict[str, Any]:
        models = {"base": base, "tuned": str(out / "model")}
        columns = (eval_set.query_column, eval_set.passage_column)
        pairs = [("bm25", "tuned")]
        result = compare_stage(models, path, split, config, out / "cache", True, *columns, pairs, data, fusion or None)
        return result.to_dict()

    result = compared(eval_set.split, data)
    seen = trained_on(data_mod.load_ragtune_data(out / "data"), queries)
    if seen["either"]:
        # The same comparison without the questions the model met in training: what a new question gets.
        met = set(seen["seen_ids"])
        new = [q for q in queries.qrels if q not in met]
        apart = replace(data, splits={**(data.splits or {}), UNSEEN: new})
        result["unseen"] = {k: v for k, v in compared(UNSEEN, apart).items() if k != "fusion"}
    result.update(
        name=eval_set.name,
        path=eval_set.path,
        split=eval_set.split,
        templates=template_stats(list(queries.queries.values())).to_dict(),
        trained_on=seen,
    )
    folder = out / "eval" / "sets" / eval_set.name
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "result.json", result)


def _validation_fusion(out: Path) -> dict[str, FusionChoice]:
    """The fusions the run chose on its validation split, per model."""
    chosen = {}
    for stage in ("base", "tuned"):
        validation = json.loads((out / "eval" / stage / "result.json").read_text()).get("validation", {})
        chosen |= {name: FusionChoice.from_dict(c) for name, c in validation.get("fusion", {}).items()}
    return chosen
