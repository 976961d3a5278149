"""`ragtune run` for a corpus that never enters ragtune's process (a run config with `shards:`).

The stages of `pipeline.run`, each done from files on the Ray cluster, each skipped when up to date:
    split/        the (query, positive id) rows split by query (or passage) into train/validation/test JSONL
                  files, and the held-out queries as a BEIR folder (queries.jsonl, qrels/)
    base/         the corpus encoded by the base model into Parquet shards, and their index
    mined/        hard or least-similar negatives for the train rows (held-out positives never negatives);
    data/         the training folder: the texts of those rows only, and a validation pool (below)
    model/        the fine-tuned model, its checkpoint chosen on a sample of validation queries (or of the eval
                  set `checkpoint_on:` names) among their positives and the base model's top passages (the guard
                  judges afterwards, over the whole corpus)
    tuned/        the corpus encoded by the tuned model, and its index
    eval/         base vs tuned on validation, test and each eval set, every query over the whole corpus
    results.json, report.md, report.html
What the in-memory run has and this one does not: BM25 and its fusion (BM25's statistics need every text in one
process), mining's near-duplicate test and cross-encoder, groups, and the pair scores and query movers of the report.
"""

from __future__ import annotations

import functools
import html
import json
import logging
from pathlib import Path

import yaml

from ragtune.config import EvalSetConfig, RunConfig
from ragtune.data import LoadStats, PairData, sample_pairs, text_id
from ragtune.embeddings import Encoder, model_fingerprint, resolve_model
from ragtune.errors import RagtuneError, RegressionError
from ragtune.metrics import HEADLINE
from ragtune.outputs import claim_folder, replace_folder, write_json, write_jsonl, write_text
from ragtune.report import RunResult, regression_check, verdict
from ragtune.shard_mining import mined_counts, pair_rows, query_pool, training_data_from_shards, validation_pool
from ragtune.shards import corpus_files, embed_shards, index_from_shards, mine_from_shards
from ragtune.splits import split_queries
from ragtune.stages import checkpoint_key, file_key, run_stage, stage_key, train_in_run
from ragtune.tables import comparison_table, eval_sets_table, metrics_table

log = logging.getLogger(__name__)
HELD_OUT = ("validation", "test")
NO_BM25 = "BM25 is not evaluated in a run from shards: its statistics need every text in one process."


def run_from_shards(config: RunConfig, allow_regression: bool = False) -> RunResult:
    """`ragtune.run` for a config with `shards:`: the same stages and report, the corpus read only by the cluster.

    Raises:
        RegressionError: The tuned model is not better than the base on the guard's queries (unless allowed).
        RagtuneError: Bad data, settings or paths, in one sentence.
    """
    from ragtune.ray_engine import ray_engine

    for path in (config.data.path, config.shards.corpus, *(s.path for s in config.eval_sets)):
        if not Path(path).exists():  # said before a cluster starts
            raise RagtuneError(f"{path}: no such file or folder")
    engine = config.engine  # always Ray: `kind` only says whether the in-memory run uses it
    with ray_engine(engine.address, engine.actors, engine.gpus):
        return _run(config, allow_regression)


def _run(config: RunConfig, allow_regression: bool) -> RunResult:
    shards = config.shards
    out = Path(config.output_dir)
    claim_folder(out, "run", [config.data.path, shards.corpus, *(s.path for s in config.eval_sets)])
    write_text(out / "config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))
    base = resolve_model(config.base_model)
    seq, batch = config.evaluate.max_seq_length, config.evaluate.batch_size

    k_split = stage_key(
        file_key(Path(config.data.path)), config.data.query_column, shards.positive_column, config.split.model_dump()
    )
    run_stage("split the pairs", out / "split", k_split, lambda: split_pairs(config, out / "split"))
    k_corpus = stage_key(
        file_key(Path(shards.corpus)), shards.model_dump(exclude={"positive_column", "nprobe"}), seq, batch
    )
    k_base = stage_key(k_corpus, model_fingerprint(base))
    run_stage(
        "encode and index the corpus (base model)", out / "base", k_base, lambda: _index(config, base, out / "base")
    )
    validation = (shards.validation_queries, shards.validation_depth)
    k_mine = stage_key(k_split, k_base, config.mining.model_dump(), shards.nprobe, validation)
    run_stage("mine negatives (from the shards)", out / "mined", k_mine, lambda: _mine(config, out))
    k_train = stage_key(k_mine, config.train.model_dump(), *checkpoint_key(config))
    chooser = functools.partial(_checkpoint_queries, config, out / "base" / "index")
    run_stage("train", out / "model", k_train, lambda: train_in_run(config, base, out, k_train, chooser))
    k_tuned = stage_key(k_corpus, k_train)

    def tuned() -> None:
        _index(config, str(out / "model"), out / "tuned")

    run_stage("encode and index the corpus (tuned model)", out / "tuned", k_tuned, tuned)
    sets = [(s.name, s.path, s.split) for s in config.eval_sets]
    k_eval = stage_key(k_tuned, k_base, shards.nprobe, batch, [(n, file_key(Path(p)), s) for n, p, s in sets])
    run_stage("evaluate base and tuned (whole corpus)", out / "eval", k_eval, lambda: _evaluate(config, out))

    result = summarise_shard_run(out, config.guard, [s.name for s in config.eval_sets])
    if result.regression["regressed"] and not (allow_regression or config.allow_regression):
        raise RegressionError(result.regression["message"] + " Pass --allow-regression to accept it.", result)
    return result


def split_pairs(config: RunConfig, out: Path) -> dict:
    """The pairs files' rows split as `ragtune split` splits pairs (by query or by passage, seeded), written as
    train/validation/test JSONL files of (query, positive_id) and a BEIR folder of the held-out queries."""
    files = [str(f) for f in corpus_files(config.data.path)]
    rows = pair_rows(files, config.data.query_column, config.shards.positive_column)
    if not rows:
        raise RagtuneError(f"{config.data.path}: no (query, positive id) rows")
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = {}
    for query, positive, _ in rows:
        qid = text_id("q", query)
        queries[qid] = query
        qrels.setdefault(qid, {})[positive] = 1.0
    stats = LoadStats(source=str(config.data.path), format="pairs of ids", rows_read=len(rows), queries=len(qrels))
    # By passage, the unit is the id (in memory it is the text: two ids of one text are not joined here).
    data = PairData({p: p for rel in qrels.values() for p in rel}, queries, qrels, stats)
    stats.pairs = len(data.pairs())
    if config.data.max_pairs is not None:
        data = sample_pairs(data, config.data.max_pairs, config.data.sample_seed)
        queries, qrels = data.queries, data.qrels
    split_ids, method = split_queries(data, config.split)
    with replace_folder(out, "split", [config.data.path]) as new:
        (new / "qrels").mkdir()
        for name, qids in split_ids.items():
            write_jsonl(
                new / f"{name}.jsonl", ({"query": queries[q], "positive_id": p} for q in qids for p in qrels[q])
            )
            if name in HELD_OUT:
                lines = "".join(f"{q}\t{p}\t1\n" for q in qids for p in qrels[q])
                write_text(new / "qrels" / f"{name}.tsv", "query-id\tcorpus-id\tscore\n" + lines)
        held = [q for name in HELD_OUT for q in split_ids[name]]
        write_jsonl(new / "queries.jsonl", ({"_id": q, "text": queries[q]} for q in held))
        summary = {
            "method": method,
            "rows": len(rows),
            "pairs_sampled_out": data.stats.pairs_sampled_out,
            "splits": {
                name: {"queries": len(q), "rows": sum(len(qrels[i]) for i in q)} for name, q in split_ids.items()
            },
        }
        write_json(new / "split.json", summary)
    log.info("split %d queries (%s): %s", len(qrels), method, {k: len(v) for k, v in split_ids.items()})
    return summary


def _index(config: RunConfig, model: str, out: Path) -> None:
    shards = config.shards
    encoder = Encoder(model, None, config.evaluate.max_seq_length, config.evaluate.batch_size)
    claim_folder(out, "stage")
    corpus = corpus_files(shards.corpus)
    written = embed_shards(encoder, corpus, out / "shards", shards.text_column, shards.id_column)
    index_from_shards(written.folder, out / "index", shards.ivf_pq_from, shards.code_bytes)


def _mine(config: RunConfig, out: Path) -> None:
    split, mining = out / "split", config.mining
    counts = json.loads((split / "split.json").read_text())["splits"]
    held_out = [split / f"{name}.jsonl" for name in HELD_OUT if counts[name]["rows"]]
    claim_folder(out / "mined", "stage")
    index = out / "base" / "index"
    rows = mine_from_shards(
        index,
        [split / "train.jsonl"],
        out / "mined" / "rows",
        positive_column="positive_id",
        num_negatives=mining.num_negatives,
        range_min=mining.range_min,
        range_max=mining.range_max,
        nprobe=config.shards.nprobe,
        strategy=mining.strategy,
        held_out=held_out,
        margin=mining.margin,
        max_score=mining.max_score,
        sampling=mining.sampling,
        seed=mining.seed,
    )
    pool = None
    if counts["validation"]["rows"]:
        shards = config.shards
        pool = validation_pool(
            index, split / "validation.jsonl", shards.validation_queries, shards.validation_depth, config.split.seed
        )
    training_data_from_shards(rows, index, out / "data", pool)
    stats = {
        "strategy": mining.strategy,
        **mined_counts(rows),
        "negatives_per_row": mining.num_negatives,
        "held_out": ", ".join(f"{name} ({counts[name]['rows']} rows)" for name in HELD_OUT if counts[name]["rows"]),
        "validation_during_training": (
            f"{len(pool.queries)} queries among {len(pool.passages)} passages (their positives and the base model's "
            f"top {config.shards.validation_depth})"
            if pool
            else "none"
        ),
    }
    write_json(out / "mined" / "stats.json", stats)


def _checkpoint_queries(config: RunConfig, index: Path, eval_set: EvalSetConfig) -> PairData:
    """The eval set that picks the checkpoint (`checkpoint_on:`), as the validation split is scored here: a sample
    of its judged queries, each searched among its relevant passages and the base model's top `validation_depth`
    (the folder has no corpus; the passages' texts come from the index)."""
    from ragtune.index import documents_where
    from ragtune.shard_eval import read_beir_queries

    texts, qrels = read_beir_queries(eval_set.path, eval_set.split)
    shards = config.shards
    pool = query_pool(index, texts, qrels, shards.validation_queries, shards.validation_depth, config.split.seed)
    corpus = {d["id"]: d["text"] for d in documents_where(index, wanted=set(pool.passages)).values()}
    stats = LoadStats(source=str(eval_set.path), format="BEIR queries among the base model's top passages")
    log.info("checkpoint chosen on %s: %d queries among %d passages", eval_set.name, len(pool.queries), len(corpus))
    return PairData(corpus, pool.queries, pool.qrels, stats)


def _evaluate(config: RunConfig, out: Path) -> None:
    from ragtune.shard_eval import compare_from_shards, read_beir_queries
    from ragtune.templates import template_stats

    indexes = {"base": out / "base" / "index", "tuned": out / "tuned" / "index"}
    nprobe, batch = config.shards.nprobe, config.evaluate.batch_size
    claim_folder(out / "eval", "stage")
    split_info = json.loads((out / "split" / "split.json").read_text())
    for name in HELD_OUT:
        if split_info["splits"][name]["queries"]:
            result = compare_from_shards(indexes, out / "split", name, nprobe, batch).to_dict()
            texts, _ = read_beir_queries(out / "split", name)
            result["templates"] = template_stats(list(texts.values())).to_dict()
            write_json(out / "eval" / f"{name}.json", result)
    for eval_set in config.eval_sets:
        result = compare_from_shards(indexes, eval_set.path, eval_set.split, nprobe, batch).to_dict()
        texts, _ = read_beir_queries(eval_set.path, eval_set.split)
        result.update(
            name=eval_set.name,
            path=eval_set.path,
            split=eval_set.split,
            templates=template_stats(list(texts.values())).to_dict(),
        )
        write_json(out / "eval" / "sets" / f"{eval_set.name}.json", result)


def summarise_shard_run(out: Path, guard_on: str = "validation", eval_sets: list[str] = ()) -> RunResult:
    """results.json, report.md and report.html of a run from shards, from its eval/ folder."""
    from ragtune.report import EVAL_SET_FIELDS
    from ragtune.significance import Comparison
    from ragtune.templates import TemplateStats, template_warning

    test = json.loads((out / "eval" / "test.json").read_text())
    validation_file = out / "eval" / "validation.json"
    validation = json.loads(validation_file.read_text()) if validation_file.is_file() else None
    sets = {n: json.loads((out / "eval" / "sets" / f"{n}.json").read_text()) for n in eval_sets}
    comparisons = [Comparison.from_dict(c) for c in test["comparisons"]]
    headline = next(c for c in comparisons if c.metric == HEADLINE)
    if guard_on == "validation":
        guard = regression_check(validation, validation)
    else:
        guard = regression_check(sets[guard_on], sets[guard_on], f"the eval set {guard_on}")
    templates = TemplateStats(**{k: v for k, v in test["templates"].items() if k != "templated"})
    others = {
        n: TemplateStats(**{k: v for k, v in r["templates"].items() if k != "templated"}) for n, r in sets.items()
    }
    train_info = json.loads((out / "model" / "ragtune_train.json").read_text())
    mining = json.loads((out / "mined" / "stats.json").read_text())
    if "checkpoint_chosen_on" in train_info:  # the validation pool was built but not scored
        mining["validation_during_training"] = f"none: {train_info['checkpoint_chosen_on']} picked the checkpoint"
    summary = {
        "metrics": test["metrics"],
        "ci95": test["ci95"],
        "comparisons": test["comparisons"],
        "verdict": verdict(test["metrics"], headline) + " " + NO_BM25,
        "regression": guard,
        "recommended_model": "base" if guard["regressed"] else "tuned",
        "test_queries": test["queries"],
        "corpus": test["corpus"],
        "test_templates": test["templates"],
        "template_warning": template_warning(templates, others),
        "eval_sets": {n: {k: r[k] for k in EVAL_SET_FIELDS if k in r} for n, r in sets.items()},
        "split": json.loads((out / "split" / "split.json").read_text()),
        "mining": mining,
        "training": train_info,
        "checkpoint_chosen_on": train_info.get("checkpoint_chosen_on", "validation"),
        "shards": {stage: _shard_meta(out / stage) for stage in ("base", "tuned")},
    }
    summary["recommended_system"] = summary["recommended_model"]
    summary["recommendation"] = f"Serve the {summary['recommended_model']} model (index: {out / 'tuned' / 'index'})."
    if summary["recommended_model"] == "base":
        summary["recommendation"] = f"Serve the base model (index: {out / 'base' / 'index'})."
    write_json(out / "results.json", summary)
    table = metrics_table(test["metrics"], ["base", "tuned"], cis=test["ci95"])
    sets_table = eval_sets_table(sets, train_info.get("checkpoint_chosen_on")) if sets else ""
    md = _markdown(out, summary, table, comparison_table(comparisons), sets_table)
    write_text(out / "report.md", md)
    write_text(out / "report.html", _html(out.name, md))
    return RunResult(
        output_dir=out,
        model_dir=out / "model",
        report_html=out / "report.html",
        report_md=out / "report.md",
        metrics=test["metrics"],
        verdict=summary["verdict"],
        regression=guard,
        recommended_model=summary["recommended_model"],
        recommended_system=summary["recommended_system"],
        recommendation=summary["recommendation"],
        test_queries=test["queries"],
        corpus=test["corpus"],
        eval_sets=summary["eval_sets"],
        template_warning=summary["template_warning"],
        table=table,
        eval_table=sets_table,
        results=summary,
    )


def _shard_meta(folder: Path) -> dict:
    meta = json.loads((folder / "shards" / "shards.json").read_text())
    index = json.loads((folder / "index" / "index.json").read_text())
    return {"passages": meta["count"], "reused_vectors": meta["reused"], "index": index.get("kind", "exact")}


def _markdown(out: Path, s: dict, table: str, comparisons: str, sets_table: str) -> str:
    lines = [f"# ragtune report: {out.name} (a run from shards)", "", f"**{s['verdict']}**", ""]
    lines += [s["regression"]["message"], "", f"**{s['recommendation']}**", ""]
    if s["template_warning"]:
        lines += [f"> **Warning:** {s['template_warning']}", ""]
    if sets_table:
        lines += ["## Where users are: the eval sets", "", sets_table, ""]
    lines += [
        f"## Test split: {s['test_queries']} queries searched over the whole corpus of {s['corpus']} passages",
        "",
        table,
        "",
        comparisons,
        "",
        "## Data",
        "",
        f"- pairs: {s['split']['rows']} rows; split {s['split']['method']}: "
        + ", ".join(f"{k} {v['queries']} queries / {v['rows']} rows" for k, v in s["split"]["splits"].items()),
        "- corpus: "
        + "; ".join(
            f"{stage} model {v['passages']} passages ({v['reused_vectors']} vectors reused), index {v['index']}"
            for stage, v in s["shards"].items()
        ),
        "",
        "## Negatives",
        "",
        *[f"- {k}: {v}" for k, v in s["mining"].items()],
        "",
        "## Training",
        "",
        *[f"- {k}: {v}" for k, v in s["training"].items()],
        "",
    ]
    return "\n".join(lines)


def _html(title: str, md: str) -> str:
    """The Markdown report in a page (no charts: the run from shards keeps no per-pair scores to draw)."""
    return (
        f"<!doctype html><meta charset='utf-8'><title>ragtune: {html.escape(title)}</title>"
        f"<pre style='white-space:pre-wrap;font:14px/1.4 monospace;max-width:70em;margin:2em auto'>{html.escape(md)}"
        "</pre>\n"
    )
