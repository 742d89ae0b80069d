"""The Ray actor that hosts one runner of a `RayExecutionStrategy` run (internal; imported inside Ray workers).

Each actor is its own process on some node of the cluster. `run` connects a `LightningStoreClient` to the store
server and runs the runner bundle on a private event loop until the stop event is set: by `stop()` (the driver),
or by a `DrainWatcher` that sees the store server drain. The actor runs its methods on a small thread pool
(`max_concurrency`), so `stop()` and `ready()` are answered while `run` is busy.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

from agl.execution._loop import StopWatch, run_bundle
from agl.execution.base import RunnerBundle
from agl.execution.drain import DrainWatcher
from agl.execution.events import ThreadingEvent

__all__ = ["RunnerActor", "RunnerReport"]

logger = logging.getLogger(__name__)

RunnerReport = dict[str, Any]
"""What `RunnerActor.run` returns: `worker_id`, `pid`, `node` (IP) and `restarted` (whether Ray rebuilt it)."""


def _was_reconstructed() -> bool:
    import ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the property itself reads a deprecated attribute inside Ray
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _node_ip() -> str:
    import ray.util

    get_ip: Any = ray.util.get_node_ip_address  # untyped in Ray
    return str(get_ip())


async def _run_against_store(
    runner: RunnerBundle, address: str, token: str | None, worker_id: int, event: ThreadingEvent
) -> None:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(address, token=token)
    try:
        await runner(client, worker_id, event)
    finally:
        await client.close()


class RunnerActor:
    """One runner of a Ray run: `run(...)` until stopped; `stop()` asks it to finish its rollout and return."""

    def __init__(self, worker_id: int) -> None:
        from agl.env_var import LightningEnvVar

        self.worker_id = worker_id
        self.event = ThreadingEvent()
        self.restarted = _was_reconstructed()
        # A restarted actor is a new process: a new worker id keeps the claims of the dead one from looking alive
        # (the store counts a worker's heartbeats as signs of life of the attempts it holds).
        name = LightningEnvVar.AGL_WORKER_ID_PREFIX.value
        os.environ[name] = f"{os.environ.get(name, '')}{socket.gethostname()}-{os.getpid()}-"
        if self.restarted:
            logger.warning(
                "runner-%d was restarted by Ray (pid %d); rollouts its previous process held return to the queue by "
                "the store's claim timeout / unresponsive rules",
                worker_id, os.getpid(),
            )  # fmt: skip

    def ready(self) -> RunnerReport:
        """Where this actor runs; answering means Ray placed it and its process is up."""
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node": _node_ip(), "restarted": self.restarted}

    def stop(self) -> None:
        """Ask the runner to finish its current rollout and return."""
        self.event.set()

    def run(
        self,
        runner: RunnerBundle,
        address: str,
        token: str | None,
        graceful_timeout: float,
        cleanup_timeout: float,
        drain_poll_interval: float,
    ) -> RunnerReport:
        """Run the runner bundle against the store at `address` (several servers: separated by commas) until stopped;
        the bundle's exception propagates."""
        name = f"runner-{self.worker_id}"
        watcher = DrainWatcher(address, self.event, interval=drain_poll_interval)
        # A runner (re)started after the run began to drain must not claim anything: ask once before starting.
        if watcher.poll_once():
            logger.info("%s: the store server is draining; nothing to run", name)
            return self.ready()
        watcher.start()
        try:
            run_bundle(
                lambda: _run_against_store(runner, address, token, self.worker_id, self.event),
                name=name,
                watch=StopWatch(self.event, graceful_timeout, poll_interval=0.05),
                cleanup_timeout=cleanup_timeout,
                fast_loop=True,
            )
        finally:
            watcher.stop()
        return self.ready()
