"""Stop events: the one signal an execution strategy gives its algorithm and runners to finish.

A bundle polls `event.is_set()` (or blocks in `event.wait(timeout)`) and returns once it is set. Threads share a
`ThreadingEvent`; processes share a `MultiprocessingEvent`, created before the processes start so each inherits it.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.context import BaseContext
from typing import Any, Protocol, runtime_checkable

__all__ = ["ExecutionEvent", "MultiprocessingEvent", "ThreadingEvent"]


@runtime_checkable
class ExecutionEvent(Protocol):
    """The stop signal handed to every bundle: `set`, `clear`, `is_set` and `wait`, as `threading.Event`."""

    def set(self) -> None:
        """Ask everyone holding the event to stop."""

    def clear(self) -> None:
        """Withdraw the request."""

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set or `timeout` seconds pass; returns whether it is set."""
        ...


class ThreadingEvent:
    """A stop event shared by threads of one process (wraps `threading.Event`)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Ask everyone holding the event to stop."""
        self._event.set()

    def clear(self) -> None:
        """Withdraw the request."""
        self._event.clear()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set or `timeout` seconds pass; returns whether it is set."""
        return self._event.wait(timeout)

    def __repr__(self) -> str:
        return f"ThreadingEvent(is_set={self.is_set()})"


class MultiprocessingEvent:
    """A stop event shared by processes (wraps `ctx.Event()`, the default context's when `ctx` is None).

    Pass it to a child process as an argument when the process is created (any start method); it cannot be sent
    through a queue or pipe afterwards.
    """

    def __init__(self, ctx: BaseContext | None = None) -> None:
        context: Any = ctx if ctx is not None else multiprocessing
        self._event = context.Event()

    def set(self) -> None:
        """Ask everyone holding the event to stop."""
        self._event.set()

    def clear(self) -> None:
        """Withdraw the request."""
        self._event.clear()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return bool(self._event.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set or `timeout` seconds pass; returns whether it is set."""
        return bool(self._event.wait(timeout))

    def __repr__(self) -> str:
        return f"MultiprocessingEvent(is_set={self.is_set()})"
