"""A controllable clock for store tests."""

from __future__ import annotations

import threading


class FakeClock:
    """Returns a time that only moves when `advance` is called (thread-safe)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` and return the new time."""
        with self._lock:
            self._now += seconds
            return self._now
