"""Small builders shared by tests: toy pairs, a prepared/mined/split folder on disk, the entry point in-process."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
from conftest import write_jsonl

from ragtune.config import MiningConfig, SplitConfig
from ragtune.pipeline import mine_stage, prepare_stage, split_stage


def toy_rows(n_queries: int = 40) -> list[dict]:
    topics = ["heart", "kidney", "lung", "liver", "bone", "skin", "brain", "blood", "eye", "ear"]
    rows = []
    for i in range(n_queries):
        t = topics[i % len(topics)]
        rows.append(
            {"query": f"what does the {t} do, case {i}?", "passage": f"The {t} has job number {i} in the body."}
        )
    return rows


def split_folder(tmp_path: Path, model: Path, n_queries: int = 40, strategy: str = "least-similar") -> Path:
    from ragtune.config import DataConfig

    src = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(n_queries))
    prepare_stage(DataConfig(path=str(src)), tmp_path / "prepared")
    mine_stage(
        tmp_path / "prepared", str(model), MiningConfig(strategy=strategy), tmp_path / "mined", tmp_path / "cache"
    )
    split_stage(tmp_path / "mined", SplitConfig(), tmp_path / "data", tmp_path / "cache")
    return tmp_path / "data"


def entry_point(*args) -> int:
    """The `ragtune` entry point (`ragtune.cli.main`) with these arguments, in this process: its exit status. A
    process per command would import torch and sentence-transformers again, ~6 s of CPU each; tests of the entry
    point's own one-line errors and exit codes run it as a process (test_cli.py)."""
    from ragtune.cli import main

    with mock.patch.object(sys, "argv", ["ragtune", *map(str, args)]), pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code or 0


def ragtune_here(*args) -> None:
    """`entry_point`, which must succeed."""
    code = entry_point(*args)
    assert code == 0, f"ragtune {' '.join(map(str, args))}: exit {code}"
