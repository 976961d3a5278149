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
from ragtune.config import RunConfig
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


def train_in_run(config: RunConfig, base: str, out: Path, key: str) -> None:
    """The run's training stage: the model from `out/data` into `out/model`, resuming the checkpoints of the same
    `key` only, and the trainer's outcome beside the model."""
    from ragtune.train import train

    # Checkpoints from a run with other settings or data must not be resumed.
    owner = out / "checkpoints" / "ragtune_key.txt"
    if owner.exists() and owner.read_text() != key:
        remove_own_folder(out / "checkpoints")
    claim_folder(out / "checkpoints", "checkpoints")
    write_text(owner, key)
    result = train(base, out / "data", out, config.train, resume=True)
    info = {
        "steps": result.steps,
        "best_validation_ndcg@10": result.best_metric,
        "best_checkpoint": result.best_checkpoint,
        "resumed_from": result.resumed_from,
    }
    write_json(out / "model" / "ragtune_train.json", info)
