"""Stages that hand off through folders, and `run`, which chains them and skips what is already done.

A run directory holds every stage's output plus the resolved config:
    prepared/  BEIR-layout copy of the loaded pairs (+ load statistics)
    mined/     rows.jsonl (query, positive, negative ids) + stats.json
    data/      the DatasetDict of train/validation/test rows + the full corpus
    eval/      base.json and tuned.json: metrics and per-query values on the test split
    model/     the fine-tuned model; checkpoints/ the trainer's checkpoints (resume after a crash)
    cache/     embeddings keyed by model and text, shared by every stage and by `ragtune search`
    report.md
Each stage records a key (a hash of its settings and its inputs' keys) in `<stage>/.stage.json`; a stage whose key
matches is skipped, so re-running after a crash resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ragtune import data as data_mod
from ragtune.config import DataConfig, EvalConfig, MiningConfig, RunConfig, SplitConfig
from ragtune.embeddings import Encoder, model_fingerprint, resolve_model
from ragtune.errors import RagtuneError
from ragtune.evaluate import EvalResult, evaluate_systems, triplet_accuracy
from ragtune.mining import Row, mine
from ragtune.report import metrics_table, verdict, write_report
from ragtune.splits import push_to_hub, save_splits, split_queries

console = Console()
STAGE_FILE = ".stage.json"


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_key(path: Path) -> str:
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return _key(sorted(_file_key(p) for p in path.rglob("*") if p.is_file()))


def stage_done(folder: Path, key: str) -> bool:
    marker = folder / STAGE_FILE
    return marker.exists() and json.loads(marker.read_text()).get("key") == key


def mark_done(folder: Path, key: str) -> None:
    (folder / STAGE_FILE).write_text(json.dumps({"key": key}))


# ---- stages, each usable on its own ---------------------------------------------------------------------------


def prepare_stage(config: DataConfig, out: Path) -> data_mod.PairData:
    data = data_mod.load_pairs(
        config.path,
        config.format,
        config.query_column,
        config.passage_column,
        config.skip_bad_rows,
        config.max_pairs,
        config.sample_seed,
    )
    if out.exists():
        shutil.rmtree(out)
    data_mod.save_beir(data, out)
    return data


def mine_stage(
    prepared: Path,
    base_model: str,
    config: MiningConfig,
    out: Path,
    cache_dir: Path | None,
    max_seq_length: int | None = None,
) -> dict[str, Any]:
    data = data_mod.load_prepared(prepared)
    needs_model = config.strategy in ("least-similar", "hard")
    encoder = Encoder(base_model, cache_dir, max_seq_length, config.batch_size) if needs_model else None
    result = mine(data, encoder, config)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "rows.jsonl").open("w") as f:
        for r in result.rows:
            f.write(json.dumps(asdict(r)) + "\n")
    meta = {"prepared": str(prepared.resolve()), "stats": result.stats}
    (out / "stats.json").write_text(json.dumps(meta, indent=2))
    return result.stats


def read_mined(mined: Path) -> tuple[data_mod.PairData, list[Row], dict[str, Any]]:
    if not (mined / "stats.json").exists():
        raise RagtuneError(f"{mined}: not a mined folder (no stats.json); run `ragtune mine` first")
    meta = json.loads((mined / "stats.json").read_text())
    data = data_mod.load_prepared(meta["prepared"])
    with (mined / "rows.jsonl").open() as f:
        rows = [Row(**json.loads(line)) for line in f]
    return data, rows, meta["stats"]


def split_stage(mined: Path, config: SplitConfig, out: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    data, rows, mining_stats = read_mined(mined)
    split_ids, method = split_queries(data, config)
    if out.exists():
        shutil.rmtree(out)
    extra = {"split_method": method, "mining": mining_stats, "split_config": config.model_dump()}
    if cache_dir is not None:
        extra["cache_dir"] = str(Path(cache_dir).resolve())
    save_splits(data, rows, split_ids, out, extra)
    if config.push_to_hub:
        push_to_hub(out, config.push_to_hub)
    return json.loads((out / data_mod.DATA_MARKER).read_text())


def evaluate_stage(
    models: dict[str, str],
    data_path: Path,
    split: str | None,
    config: EvalConfig,
    cache_dir: Path | None,
    bm25: bool | None = None,
    query_column: str = "query",
    passage_column: str = "passage",
) -> tuple[EvalResult, dict[str, float | None]]:
    """Retrieval metrics on one split over the full corpus, plus triplet accuracy where rows carry negatives."""
    for model in models.values():
        resolve_model(model)  # a wrong model path fails before any data is read or encoded
    data = data_mod.load_pairs(data_path, "auto", query_column, passage_column)
    queries = data
    if split:
        if not data.splits or split not in data.splits:
            have = ", ".join(data.splits or {}) or "none (the whole dataset is one set)"
            raise RagtuneError(f"{data_path}: no split {split!r}; splits: {have}")
        queries = data.subset(data.splits[split])
    result = evaluate_systems(
        models, queries, config.bm25 if bm25 is None else bm25, cache_dir, config.max_seq_length, config.batch_size
    )
    triplet = {name: _triplet(name_model, data_path, split, cache_dir, config) for name, name_model in models.items()}
    return result, triplet


def _triplet(model: str, data_path: Path, split: str | None, cache_dir, config: EvalConfig) -> float | None:
    if not (Path(data_path) / data_mod.DATA_MARKER).exists():
        return None
    import datasets

    ds = datasets.load_from_disk(str(data_path))[split or "test"]
    neg_cols = [c for c in ds.column_names if c.startswith("negative") and not c.endswith("_id")]
    if not neg_cols or len(ds) == 0:
        return None
    encoder = Encoder(model, cache_dir, config.max_seq_length, config.batch_size)
    return triplet_accuracy(
        encoder, ds["query"], ds["positive"], [list(t) for t in zip(*[ds[c] for c in neg_cols], strict=True)]
    )


def result_to_json(result: EvalResult, triplet: dict[str, float | None]) -> dict[str, Any]:
    return {
        "metrics": result.metrics,
        "triplet_accuracy": triplet,
        "per_query": result.per_query,
        "top10": result.top,
        "queries": result.queries,
        "corpus": result.corpus,
    }


# ---- the whole run ---------------------------------------------------------------------------------------------


def _stage(name: str, folder: Path, key: str, work: Callable[[], Any]) -> bool:
    if stage_done(folder, key):
        console.print(f"[green]✓ {name}[/green] (up to date, skipped)")
        return False
    console.rule(f"[bold]{name}")
    work()
    folder.mkdir(parents=True, exist_ok=True)
    mark_done(folder, key)
    return True


def run(config: RunConfig, config_text: str | None = None) -> dict[str, Any]:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    resolved_yaml = yaml.safe_dump(config.model_dump(), sort_keys=False)
    (out / "config.yaml").write_text(resolved_yaml)
    base = resolve_model(config.base_model)
    base_key = model_fingerprint(base)
    seq = config.evaluate.max_seq_length

    source = config.data.path
    if config.data.format == "pubmedqa" and (not source or not Path(source).exists()):
        source = str(data_mod.resolve_pubmedqa(source))
        config.data.path = source
    if not source or not Path(source).exists():
        raise RagtuneError(f"data not found: {source}")
    k_prepare = _key(config.data.model_dump(), _file_key(Path(source)))
    _stage("prepare", out / "prepared", k_prepare, lambda: prepare_stage(config.data, out / "prepared"))
    k_mine = _key(k_prepare, config.mining.model_dump(), base_key, seq)
    _stage(
        "mine negatives",
        out / "mined",
        k_mine,
        lambda: mine_stage(out / "prepared", base, config.mining, out / "mined", cache, seq),
    )
    k_split = _key(k_mine, config.split.model_dump())
    _stage("split", out / "data", k_split, lambda: split_stage(out / "mined", config.split, out / "data", cache))

    eval_dir = out / "eval"
    k_base = _key(k_split, config.evaluate.model_dump(), base_key)
    _stage(
        "evaluate base model and BM25 (test split, full corpus)",
        eval_dir / "base",
        k_base,
        lambda: _save_eval({"base": base}, out, eval_dir / "base", config.evaluate, bm25=True),
    )

    k_train = _key(k_split, config.train.model_dump(), base_key)
    _stage("train", out / "model", k_train, lambda: _train(config, base, out, k_train))
    k_tuned = _key(k_train, config.evaluate.model_dump())
    _stage(
        "evaluate tuned model (test split, full corpus)",
        eval_dir / "tuned",
        k_tuned,
        lambda: _save_eval({"tuned": str(out / "model")}, out, eval_dir / "tuned", config.evaluate, bm25=False),
    )

    summary = _summarise(config, out, resolved_yaml)
    console.rule("[bold]result")
    console.print(summary["table"], soft_wrap=True, markup=False)
    console.print()
    console.print(summary["verdict"], markup=False)
    console.print(f"\nmodel:  {out / 'model'}\nreport: {out / 'report.md'}")
    return summary


def _save_eval(models: dict[str, str], out: Path, folder: Path, config: EvalConfig, bm25: bool) -> None:
    result, triplet = evaluate_stage(models, out / "data", "test", config, out / "cache", bm25=bm25)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result_to_json(result, triplet)))


def _train(config: RunConfig, base: str, out: Path, key: str) -> None:
    from ragtune.train import train

    # Checkpoints from a run with other settings or data must not be resumed.
    owner = out / "checkpoints" / "ragtune_key.txt"
    if owner.exists() and owner.read_text() != key:
        shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    owner.write_text(key)
    result = train(base, out / "data", out, config.train, resume=True)
    info = {
        "steps": result.steps,
        "best_validation_ndcg@10": result.best_metric,
        "best_checkpoint": result.best_checkpoint,
        "resumed_from": result.resumed_from,
    }
    (out / "model" / "ragtune_train.json").write_text(json.dumps(info, indent=2))


def _summarise(config: RunConfig, out: Path, resolved_yaml: str) -> dict[str, Any]:
    base = json.loads((out / "eval" / "base" / "result.json").read_text())
    tuned = json.loads((out / "eval" / "tuned" / "result.json").read_text())
    metrics = {**base["metrics"], **tuned["metrics"]}
    triplet = {**base["triplet_accuracy"], **tuned["triplet_accuracy"]}
    systems = [s for s in ("bm25", "base", "tuned") if s in metrics]
    table = metrics_table(metrics, systems, {"triplet accuracy": triplet})
    data_meta = json.loads((out / "data" / data_mod.DATA_MARKER).read_text())
    train_info = json.loads((out / "model" / "ragtune_train.json").read_text())
    history = json.loads((out / "model" / "training_log.json").read_text())
    report = write_report(
        out / "report.md",
        Path(config.output_dir).name,
        resolved_yaml,
        data_meta["load_stats"],
        data_meta.get("mining", {}),
        data_meta,
        metrics,
        triplet,
        {"queries": base["queries"], "corpus": base["corpus"]},
        {**train_info, "log_history": history},
        str(out / "model"),
    )
    _model_card_section(out / "model", table, verdict(metrics))
    (out / "results.json").write_text(json.dumps({"metrics": metrics, "triplet_accuracy": triplet}, indent=2))
    return {
        "metrics": metrics,
        "triplet_accuracy": triplet,
        "table": table,
        "verdict": verdict(metrics),
        "report": str(report),
    }


def _model_card_section(model_dir: Path, table: str, conclusion: str) -> None:
    card = model_dir / "README.md"
    marker = "\n## ragtune evaluation\n"
    text = card.read_text() if card.exists() else ""
    text = text.split(marker)[0]
    card.write_text(
        text
        + marker
        + "\nHeld-out test queries, searched over the full corpus.\n\n"
        + table
        + "\n\n"
        + conclusion
        + "\n"
    )
