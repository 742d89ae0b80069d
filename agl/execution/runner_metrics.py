"""A runner process's own Prometheus metrics, served on 127.0.0.1 by prometheus_client's HTTP server.

The client-server strategy's `metrics_port` (or `AGL_METRICS_PORT`) turns them on: runner `i` serves its metrics at
`http://127.0.0.1:<port + i>/metrics`. Everything is observed through `MeteredStore`, a pass-through around the store
the runner is given, so the runner, its tracer and its heartbeat are counted wherever they call the store.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from agl.store.base import LightningStore, LightningStoreCapabilities
from agl.types.core import UNSET, Attempt, AttemptedRollout, AttemptStatus
from agl.types.tracer import Span

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MeteredStore", "RunnerMetrics", "RunnerMetricsServer"]

logger = logging.getLogger(__name__)

_FINAL_ATTEMPT_STATUSES = frozenset({"succeeded", "failed"})


class RunnerMetrics:
    """The counters of one runner process, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry: CollectorRegistry = CollectorRegistry()
        self.claimed = Counter(
            "agl_runner_rollouts_claimed",
            "Rollouts this runner process claimed from the store.",
            registry=self.registry,
        )
        self.finished = Counter(
            "agl_runner_rollouts",
            "Rollouts this runner process ran to the end, by the result it reported (succeeded or failed).",
            ["result"],
            registry=self.registry,
        )
        self.spans_sent = Counter(
            "agl_runner_spans_sent",
            "Spans this runner process sent to the store (accepted calls).",
            registry=self.registry,
        )
        self.store_errors = Counter(
            "agl_runner_store_errors",
            "Store calls of this runner process that raised, by store method.",
            ["call"],
            registry=self.registry,
        )
        for result in sorted(_FINAL_ATTEMPT_STATUSES):
            self.finished.labels(result)  # present at 0 from the first scrape


def _store_methods() -> tuple[str, ...]:
    return tuple(
        name
        for name, value in vars(LightningStore).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    )


class MeteredStore(LightningStore):
    """Passes every call to `store` and counts claims, finished rollouts, spans sent and failed calls in `metrics`.

    Any other attribute is read from the wrapped store.
    """

    def __init__(self, store: LightningStore, metrics: RunnerMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        if name == "_store":  # not set yet (a half-built copy): no recursion
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """The wrapped store's capabilities."""
        return self._store.capabilities

    def otlp_traces_endpoint(self) -> str:
        """The wrapped store's OTLP traces endpoint."""
        return self._store.otlp_traces_endpoint()

    async def _counted(self, name: str, call: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await call
        except Exception:
            self._metrics.store_errors.labels(name).inc()
            raise

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Delegates; counts a claim."""
        claimed: AttemptedRollout | None = await self._counted(
            "dequeue_rollout", self._store.dequeue_rollout(worker_id=worker_id)
        )
        if claimed is not None:
            self._metrics.claimed.inc()
        return claimed

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Delegates; counts the claims."""
        claimed: Sequence[AttemptedRollout] = await self._counted(
            "dequeue_many_rollouts", self._store.dequeue_many_rollouts(limit=limit, worker_id=worker_id)
        )
        if claimed:
            self._metrics.claimed.inc(len(claimed))
        return claimed

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Delegates; a final status (succeeded / failed) counts a finished rollout."""
        attempt: Attempt = await self._counted(
            "update_attempt",
            self._store.update_attempt(rollout_id, attempt_id, status, worker_id, last_heartbeat_time, metadata),
        )
        if status is not UNSET and status in _FINAL_ATTEMPT_STATUSES:
            self._metrics.finished.labels(status).inc()
        return attempt

    async def add_span(self, span: Span) -> Span | None:
        """Delegates; counts the span as sent."""
        stored: Span | None = await self._counted("add_span", self._store.add_span(span))
        self._metrics.spans_sent.inc()
        return stored

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Delegates; counts the spans as sent."""
        stored: Sequence[Span] = await self._counted("add_many_spans", self._store.add_many_spans(spans))
        self._metrics.spans_sent.inc(len(spans))
        return stored

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        """Delegates; counts the span as sent."""
        stored: Span | None = await self._counted(
            "add_otel_span", self._store.add_otel_span(rollout_id, attempt_id, readable_span, sequence_id)
        )
        self._metrics.spans_sent.inc()
        return stored


def _pass_through(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(self: MeteredStore, *args: Any, **kwargs: Any) -> Any:
        return await self._counted(name, getattr(self._store, name)(*args, **kwargs))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Delegates `{name}` to the wrapped store (a failure is counted)."
    return method


for _name in _store_methods():
    if _name not in vars(MeteredStore):
        setattr(MeteredStore, _name, _pass_through(_name))


class RunnerMetricsServer:
    """prometheus_client's HTTP server for one runner process's `RunnerMetrics`, on `host:port`.

    `start()` raises OSError when the port cannot be bound.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be an integer in 0..65535, got {port!r}")
        self.host = host
        self.port = port
        self.metrics = RunnerMetrics()
        self._server: Any = None

    def start(self) -> RunnerMetricsServer:
        """Serve `/metrics` in a daemon thread; returns self."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(self.port, addr=self.host, registry=self.metrics.registry)
        self.port = int(self._server.server_address[1])
        logger.info("runner metrics at http://%s:%d/metrics", self.host, self.port)
        return self

    def wrap(self, store: LightningStore) -> MeteredStore:
        """`store` with this server's counters on it."""
        return MeteredStore(store, self.metrics)

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
