"""Runner process lifecycle metrics of the process that launches runners (spawns, exits, restarts, stop steps).

`LauncherMetrics` is a prometheus_client collector that belongs to no registry of its own: the client-server strategy
hands it to the store server it starts, so the server's `/metrics` exposes it next to the store's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["SPAWN_BUCKETS", "STOP_STEP_BUCKETS", "LauncherMetrics", "launcher_metrics"]

logger = logging.getLogger(__name__)

SPAWN_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the spawn latency histogram."""
STOP_STEP_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the stop step histogram."""


class LauncherMetrics:
    """Counters and histograms of runner processes, filled by `ProcessSupervisor` and `stop_processes`."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.spawn_seconds = Histogram(
            "agl_runner_spawn_duration_seconds",
            "Time `Process.start()` took to create a runner process (fork, or spawn and hand over its arguments).",
            buckets=SPAWN_BUCKETS,
            registry=None,
        )
        self.exits = Counter(
            "agl_runner_exits", "Runner processes that ended, by exit code (negative: killed by that signal).",
            ["code"], registry=None,
        )  # fmt: skip
        self.restarts = Counter("agl_runner_restarts", "Runner processes started again after they died.", registry=None)
        self.stop_steps = Histogram(
            "agl_runner_stop_step_duration_seconds",
            "Time each step of the four-step stop (event, SIGINT, SIGTERM, SIGKILL) waited for runner processes.",
            ["step"],
            buckets=STOP_STEP_BUCKETS,
            registry=None,
        )

    def spawned(self, seconds: float) -> None:
        """A runner process was started in `seconds`."""
        self.spawn_seconds.observe(seconds)

    def exited(self, code: int | None) -> None:
        """A runner process ended with `code` (None: unknown, it could not be reaped)."""
        self.exits.labels("unknown" if code is None else str(code)).inc()

    def restarted(self) -> None:
        """A runner process was started again after it died."""
        self.restarts.inc()

    def stop_step(self, step: str, seconds: float) -> None:
        """A stop step waited `seconds` for the processes it was applied to."""
        self.stop_steps.labels(step).observe(seconds)

    def describe(self) -> Iterator[Any]:
        """The families this collector exposes (for duplicate-name checks of the registry it joins)."""
        for metric in (self.spawn_seconds, self.exits, self.restarts, self.stop_steps):
            yield from metric.describe()

    def collect(self) -> Iterator[Any]:
        """The current values."""
        for metric in (self.spawn_seconds, self.exits, self.restarts, self.stop_steps):
            yield from metric.collect()


def launcher_metrics() -> LauncherMetrics | None:
    """New launcher metrics, or None (logged at debug level) when prometheus_client is not installed."""
    try:
        return LauncherMetrics()
    except ImportError:
        logger.debug("prometheus_client is not installed: no runner lifecycle metrics")
        return None
