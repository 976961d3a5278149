"""Progress of long work (encoding, mining, training), told to whoever listens.

Library code opens a `task` and advances it; nobody listens by default, so `import ragtune` users see nothing. The
CLI listens (`listen`) and draws one display per stage, folding nested work (an encode inside mining) into it.
Written by hand because the libraries ragtune calls each draw their own tqdm bar per call, which is what made a demo
run hundreds of lines long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Protocol, TypeVar

T = TypeVar("T")


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


Listener = Callable[[str, int | None], AbstractContextManager[Task]]
_listener: ContextVar[Listener | None] = ContextVar("ragtune_progress", default=None)


def task(description: str, total: int | None = None) -> AbstractContextManager[Task]:
    """A unit of work of `total` steps (None: unknown), shown while it runs if anyone listens."""
    listener = _listener.get()
    return listener(description, total) if listener else nullcontext(_Silent())


def track(items: Iterable[T], description: str, total: int | None = None, every: int = 1) -> Iterator[T]:
    """`items`, telling progress as they are consumed (every `every` items, for loops too tight to tell each)."""
    with task(description, total) as shown:
        pending = 0
        for item in items:
            yield item
            pending += 1
            if pending >= every:
                shown.advance(pending)
                pending = 0
        shown.advance(pending)


def listening() -> bool:
    return _listener.get() is not None


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Route every `task` opened inside this block (in this thread) to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
