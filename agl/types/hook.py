"""`Hook`: callbacks a runner invokes around each rollout and its trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agl.types.core import Rollout
from agl.types.tracer import Span

__all__ = ["Hook"]


class Hook:
    """Override any of these to observe rollouts; per rollout they run in the order
    `on_rollout_start`, `on_trace_start`, `on_trace_end`, `on_rollout_end`. An exception in a hook is logged and
    does not fail the rollout.
    """

    async def on_rollout_start(self, *, agent: Any, runner: Any, rollout: Rollout) -> None:
        """Before the rollout's resources are handed to the agent."""

    async def on_trace_start(self, *, agent: Any, runner: Any, tracer: Any, rollout: Rollout) -> None:
        """Inside the trace context, just before the agent runs."""

    async def on_trace_end(self, *, agent: Any, runner: Any, tracer: Any, rollout: Rollout) -> None:
        """Inside the trace context, just after the agent returned (skipped when it raised)."""

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Rollout, spans: Sequence[Span]) -> None:
        """After the rollout, with the spans it produced; runs even when the rollout failed."""
