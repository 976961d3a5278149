"""A run's stages as folders: each stage's key (a hash of its settings and its inputs' keys) in
`<stage>/.stage.json`, so a stage whose key matches is skipped and a rerun after a crash resumes where it stopped.
Shared by the run in memory (`pipeline`) and the run from shards (`shard_run`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune import progress
from ragtune.config import EvalSetConfig, RunConfig
from ragtune.data import PairData, load_pairs
from ragtune.outputs import claim_folder, remove_own_folder, write_json, write_text

log = logging.getLogger(__name__)
STAGE_FILE = ".stage.json"


def stage_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_key(path: Path) -> str:
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return stage_key(sorted(file_key(p) for p in path.rglob("*") if p.is_file()))


def stage_done(folder: Path, key: str) -> bool:
    marker = folder / STAGE_FILE
    return marker.exists() and json.loads(marker.read_text()).get("key") == key


def mark_done(folder: Path, key: str) -> None:
    write_json(folder / STAGE_FILE, {"key": key}, indent=None)


def mark_stale(folder: Path) -> None:
    """Forget that a stage finished, before it starts again: a crash mid-stage must not leave the old marker over
    new, half-written outputs."""
    (folder / STAGE_FILE).unlink(missing_ok=True)


def run_stage(name: str, folder: Path, key: str, work: Callable[[], Any]) -> bool:
    """Run `work` under a progress display unless `folder` is marked done with `key`; then mark it. Returns
    whether it ran."""
    if stage_done(folder, key):
        log.info("✓ %s (up to date, skipped)", name)
        return False
    with progress.task(name):
        mark_stale(folder)
        work()
        folder.mkdir(parents=True, exist_ok=True)
        mark_done(folder, key)
    return True


def train_in_run(
    config: RunConfig,
    base: str,
    out: Path,
    key: str,
    chooser_queries: Callable[[EvalSetConfig], PairData] | None = None,
) -> None:
    """The run's training stage: the model from `out/data` into `out/model`, resuming the checkpoints of the same
    `key` only, and the trainer's outcome beside the model. `chooser_queries`: the queries (with the passages to
    search) of the eval set that picks the checkpoint, when `checkpoint_on:` names one; default, its own file's."""
    from ragtune.train import train

    # Checkpoints from a run with other settings or data must not be resumed.
    owner = out / "checkpoints" / "ragtune_key.txt"
    if owner.exists() and owner.read_text() != key:
        remove_own_folder(out / "checkpoints")
    claim_folder(out / "checkpoints", "checkpoints")
    write_text(owner, key)
    chooser = checkpoint_set(config)
    if chooser:
        select_on = (chooser.name, chooser_queries(chooser) if chooser_queries else eval_set_data(chooser)[1])
    else:
        select_on = None
    result = train(base, out / "data", out, config.train, resume=True, select_on=select_on)
    info = {
        "steps": result.steps,
        f"best_{config.checkpoint_on}_ndcg@10": result.best_metric,
        "best_checkpoint": result.best_checkpoint,
        "resumed_from": result.resumed_from,
    }
    if chooser:
        info["checkpoint_chosen_on"] = chooser.name
    write_json(out / "model" / "ragtune_train.json", info)


def checkpoint_set(config: RunConfig) -> EvalSetConfig | None:
    """The eval set that picks the checkpoint kept (`checkpoint_on:`), or None for the validation split."""
    return next((s for s in config.eval_sets if s.name == config.checkpoint_on), None)


def checkpoint_key(config: RunConfig) -> list[str]:
    """What the training stage's key adds when an eval set picks the checkpoint: its settings and its files. Empty
    otherwise, so the runs that choose on validation keep the keys they had."""
    chooser = checkpoint_set(config)
    return [stage_key(chooser.model_dump(), file_key(Path(chooser.path)))] if chooser else []


def eval_set_data(eval_set: EvalSetConfig) -> tuple[PairData, PairData]:
    """An eval set's file or BEIR folder (`PairData`), and its queries to evaluate: those of its split, if named."""
    data = load_pairs(Path(eval_set.path), "auto", eval_set.query_column, eval_set.passage_column)
    queries = data.subset(data.splits[eval_set.split]) if eval_set.split and data.splits else data
    return data, queries
