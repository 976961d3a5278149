"""What the CLI shows: log lines through rich, and one progress display per stage.

Library code only logs and opens `ragtune.progress` tasks; this module, used by `cli.py` alone, turns them into
output. A top-level task is a stage (`prepare`, `train`, or a single command's work): it shows a spinner, counts and
time left while it runs and leaves one "✓ stage (time)" line. Tasks opened inside it (encoding, training steps)
appear under it while they run and vanish when done, so a run's output stays a screen or two.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ragtune import progress

console = Console()


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """ragtune's log lines at INFO (WARNING with `quiet`, DEBUG with `verbose`); other libraries' at WARNING."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _Lines()
    logger = logging.getLogger("ragtune")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    if not verbose:
        # The libraries' own bars: ragtune's display counts the same work once, per stage.
        for variable in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(variable, "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _Lines(logging.Handler):
    """A log record as one plain line (wrapped by rich), warnings and errors marked in colour."""

    def emit(self, record: logging.LogRecord) -> None:
        mark = {logging.WARNING: "[yellow]warning:[/yellow] ", logging.ERROR: "[red]error:[/red] "}
        prefix = mark.get(record.levelno, "[dim]debug:[/dim] " if record.levelno < logging.INFO else "")
        console.print(prefix, end="")
        console.print(self.format(record), markup=False, highlight=False)


class _Display:
    def __init__(self) -> None:
        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.depth = 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[progress.Task]:
        if self.depth == 0 and console.is_terminal:  # a log file gets the ✓ lines only
            self.bars.start()
        label = description if self.depth == 0 else "  " + description
        task_id = self.bars.add_task(label, total=total)
        started = time.monotonic()
        self.depth += 1
        try:
            yield _Bar(self.bars, task_id)
        finally:
            self.depth -= 1
            self.bars.remove_task(task_id)
            if self.depth == 0:
                if self.bars.live.is_started:
                    self.bars.stop()
                console.print(f"[green]✓[/green] {description} [dim]({time.monotonic() - started:.1f} s)[/dim]")


class _Bar:
    def __init__(self, bars: Progress, task_id: TaskID):
        self.bars, self.task_id = bars, task_id

    def advance(self, n: int = 1) -> None:
        self.bars.advance(self.task_id, n)


@contextmanager
def shown(quiet: bool = False) -> Iterator[None]:
    """Draw progress for whatever runs inside (nothing with `quiet`)."""
    if quiet:
        yield
        return
    with progress.listen(_Display().task):
        yield
