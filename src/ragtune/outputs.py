"""Where ragtune writes: folders it may replace, and files that are written whole or not at all.

ragtune removes or replaces only folders it made itself: those holding its marker file (`.ragtune`), or the files
only ragtune writes (`.stage.json`, `ragtune_data.json`, an index's three files: made before the marker existed).
Any other non-empty folder is refused with a one-line error that names it, and an output never overlaps an input.

Every artifact is written to a temporary name beside its destination and moved into place with `os.replace`, so a
crash leaves either the old file or the new one, never half of one. A folder is built beside the old one and swapped
in; the old one is removed only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ragtune.errors import RagtuneError

MARKER = ".ragtune"
LEGACY_MARKERS = (".stage.json", "ragtune_data.json", "ragtune_key.txt")
INDEX_FILES = ("index.json", "docs.jsonl", "index.faiss")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it is flushed to disk and replaces `path`."""
    path = Path(path)
    _check_writable_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def _make_folder(folder: Path) -> None:
    """Create `folder` (and its parents) and check that files can be written in it; one-line errors otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RagtuneError(f"{folder}: it, or a folder above it, is a file") from None
    except PermissionError:
        raise RagtuneError(f"{folder}: permission denied; cannot create it") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RagtuneError(f"{folder}: not writable")


def _check_writable_parent(path: Path) -> None:
    _make_folder(path.parent)
    if path.is_dir():
        raise RagtuneError(f"{path}: is a folder; name a file to write")


def check_file_output(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Fail before any work if `path` cannot be written or is one of the inputs (so a finished job is never lost)."""
    path = Path(path)
    _check_writable_parent(path)
    if path.exists() and not os.access(path, os.W_OK):
        raise RagtuneError(f"{path}: not writable")
    check_no_overlap(path, inputs)
    return path


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_no_overlap(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """An output may neither be an input, hold one, nor lie inside one."""
    target = Path(out).resolve()
    for source in inputs:
        if source is None or str(source) == "":
            continue
        src = Path(source).resolve()
        if _inside(src, target):
            raise RagtuneError(f"{out}: this output would overwrite the input {source}; choose another output")
        if src.is_dir() and _inside(target, src):
            raise RagtuneError(f"{out}: this output lies inside the input folder {source}; choose another output")


def made_by_ragtune(folder: Path) -> bool:
    if any((folder / name).exists() for name in (MARKER, *LEGACY_MARKERS)):
        return True
    if any(folder.glob(f".{MARKER}.*.tmp")):  # killed while writing its marker (`atomic_open`'s temporary name)
        return True
    if all((folder / name).is_file() for name in INDEX_FILES):  # an index made before the marker existed
        return True
    # A run folder made before the marker existed: its resolved config beside stage folders with stage markers.
    return (folder / "config.yaml").is_file() and any(folder.glob(f"*/{LEGACY_MARKERS[0]}"))


def claim_folder(folder: str | Path, kind: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check that ragtune may write (and later replace) `folder`, and mark it as ragtune's.

    Allowed: a missing or empty folder, or one ragtune made. Anything else is a one-line error and left untouched.
    """
    folder = Path(folder)
    check_no_overlap(folder, inputs)
    if folder.exists() and not folder.is_dir():
        raise RagtuneError(f"{folder}: is a file, not a folder; choose another output folder")
    if folder.is_dir():
        try:
            empty = not any(folder.iterdir())
        except PermissionError:
            raise RagtuneError(f"{folder}: permission denied") from None
        if not empty and not made_by_ragtune(folder):
            raise RagtuneError(
                f"{folder}: exists, is not empty and was not made by ragtune; ragtune only replaces its own "
                "folders: choose another output folder or empty this one"
            )
    _make_folder(folder)
    if not (folder / MARKER).exists():
        write_json(folder / MARKER, {"kind": kind})
    for cut_off in folder.glob(f".{MARKER}.*.tmp"):
        cut_off.unlink(missing_ok=True)
    return folder


@contextlib.contextmanager
def replace_folder(folder: str | Path, kind: str, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Build a folder's new version beside it (yielded) and swap it in on success; on failure the old one stays.

    `folder` must be claimable (see `claim_folder`): a user's own folder is never removed.
    """
    folder = Path(folder)
    recover_folder(folder)
    existed = folder.exists()
    claim_folder(folder, kind, inputs)
    for stale in [*folder.parent.glob(f".{folder.name}.new-*"), *folder.parent.glob(f".{folder.name}.old-*")]:
        if (stale / MARKER).exists():  # left by a crash between the two renames below
            shutil.rmtree(stale, ignore_errors=True)
    tag = uuid.uuid4().hex[:8]
    tmp = folder.parent / f".{folder.name}.new-{tag}"
    tmp.mkdir()
    write_json(tmp / MARKER, {"kind": kind})
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not existed:  # made just now by claim_folder: remove it again, but only while it holds nothing else
            with contextlib.suppress(OSError):
                (folder / MARKER).unlink()
                folder.rmdir()
        raise
    old = folder.parent / f".{folder.name}.old-{tag}"
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(folder: str | Path) -> None:
    """After a crash between the two renames of `replace_folder`, put the previous version back in place."""
    folder = Path(folder)
    if folder.exists():
        return
    olds = [p for p in folder.parent.glob(f".{folder.name}.old-*") if (p / MARKER).exists() or made_by_ragtune(p)]
    if olds:
        os.rename(max(olds, key=lambda p: p.stat().st_mtime_ns), folder)


def remove_own_folder(folder: str | Path) -> None:
    """Remove `folder` if ragtune made it; refuse (one-line error) otherwise."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir() or not made_by_ragtune(folder):
        raise RagtuneError(f"{folder}: was not made by ragtune, so ragtune will not remove it; move it away")
    shutil.rmtree(folder)
