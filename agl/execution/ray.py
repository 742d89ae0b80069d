"""`RayExecutionStrategy` (alias `ray`): the algorithm runs here, each runner is a Ray actor placed by Ray.

How a run goes:

1. Connect to Ray: `address=None` starts a local cluster (`ray.init(num_cpus=...)`), `"auto"` / `"ray://…"` /
   `"host:port"` joins one. A process already connected (`ray.init` called before) keeps its connection.
2. The store: served from this process by a `LightningStoreServer` (on 127.0.0.1 for a local cluster, else on this
   node's IP with a token, generated when none is given), or a store server elsewhere given by `store_url`.
3. `n_runners` actors are created with the resources asked for (CPUs, GPUs, custom resources, a placement group);
   each runs a runner against a `LightningStoreClient`. The algorithm runs in this thread meanwhile.
4. A runner actor whose process dies is restarted by Ray (`max_restarts`) and its `run` call is retried there; the
   rollout it held goes back to the queue by the store's claim timeout / unresponsive rules. A runner that fails
   for good (its bundle raised, or no restarts are left) stops the run.
5. When the algorithm returns: the stop event is set, the server drains and every actor is told to stop; runners
   finish their rollout and return. An actor still busy after `graceful_timeout + terminate_timeout` is killed
   (`ray.kill`). Then the actors are released, the server stops, and a cluster this strategy started is shut down.
6. Failures are raised from `execute` (so from `Trainer.fit`) as `RuntimeError("Ray runner actors failed: …")`.

Actors are not detached: when this process dies, Ray ends them with it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from agl.execution._loop import StopWatch, run_bundle
from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle
from agl.execution.drain import in_flight_rollouts, request_drain
from agl.execution.events import ThreadingEvent

if TYPE_CHECKING:
    from agl.store.base import LightningStore
    from agl.store.server import LightningStoreServer

__all__ = ["PLACEMENT_STRATEGIES", "RayExecutionStrategy"]

logger = logging.getLogger(__name__)

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""The placement-group strategies Ray knows; `placement_group=` takes one of them or a ready `PlacementGroup`."""


def _ray() -> Any:
    from agl.optional import import_optional

    return import_optional("ray", "ray", "RayExecutionStrategy")


def _check_seconds(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return float(value)


def _check_amount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_urls(store_url: str | Sequence[str] | None) -> tuple[str, ...]:
    if store_url is None:
        return ()
    urls = (store_url,) if isinstance(store_url, str) else tuple(store_url)
    if not urls:
        raise ValueError("store_url must be a URL or a non-empty list of URLs (http://HOST:PORT), got an empty list")
    urls = tuple(part.strip() for url in urls for part in (url.split(",") if isinstance(url, str) else [url]))
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"store_url must be http://HOST:PORT (the store server's base address), got {url!r}")
    from agl.store.http.servers import split_server_addresses

    return split_server_addresses(urls)


@dataclass
class _Runner:
    """The driver's record of one runner actor."""

    worker_id: int
    actor: Any
    ready_ref: Any = None
    run_ref: Any = None
    report: dict[str, Any] | None = None
    error: str | None = None
    done: bool = False
    killed: bool = False
    where: str = field(default="not started")

    @property
    def name(self) -> str:
        return f"runner-{self.worker_id}"

    def describe(self) -> str:
        return f"{self.name} ({self.where}): {self.error}" if self.error else f"{self.name} ({self.where})"


class RayExecutionStrategy(ExecutionStrategy):
    """The algorithm runs in this process (the driver); each runner is a Ray actor somewhere on a Ray cluster.

    Args:
        n_runners: runner actors.
        address: None starts a local Ray cluster; `"auto"`, `"ray://HOST:10001"` or `"HOST:PORT"` connects to one.
            Ignored when this process is already connected to Ray.
        num_cpus: CPUs of a local cluster this strategy starts (None: Ray counts the machine's).
        runtime_env: Ray runtime environment for the job (e.g. `{"working_dir": "."}` so actors on other nodes can
            import the agent's module), passed to `ray.init`.
        ray_init_kwargs: further keyword arguments for `ray.init`.
        runner_num_cpus: CPUs each runner actor holds.
        runner_num_gpus: GPUs each runner actor holds.
        runner_resources: custom resources each runner actor holds (e.g. `{"sandbox": 1}`).
        actor_options: further Ray actor options for the runners (e.g. `{"memory": 2**30}`), applied last.
        placement_group: co-locate the runners: one of `PLACEMENT_STRATEGIES` (a group of `n_runners` bundles with
            the runner's resources is created and removed by the run) or a `PlacementGroup` you made (runner `i`
            takes bundle `i % bundles`).
        store_url: the store server's address, or several servers of one database (a list, or URLs separated by
            commas): every runner and the algorithm then spread their calls over them and fail over when one dies.
            None serves the store given to `execute` from this process.
        server_host: where this process serves the store; None: 127.0.0.1 for a local cluster, else this node's IP.
        server_port: the store server's port (0: a free one).
        token: the store's bearer token; None reads `AGL_STORE_TOKEN`, else one is generated when the server listens
            beyond loopback. Runners get it with their `run` call.
        graceful_timeout: seconds runners get to finish their rollout after the stop, before they are cancelled.
        terminate_timeout: seconds after that before a runner actor still busy is killed.
        max_restarts: how often Ray restarts a runner actor whose process died (-1: without limit).
        start_timeout: seconds every runner actor gets to be placed and started; past it the run stops with an
            error naming the resources asked for and those free.
        drain_poll_interval: how often runner actors ask the store server whether it drains.
    """

    alias: ClassVar[str | None] = "ray"

    def __init__(
        self,
        n_runners: int = 1,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        ray_init_kwargs: Mapping[str, Any] | None = None,
        runner_num_cpus: float = 1.0,
        runner_num_gpus: float = 0.0,
        runner_resources: Mapping[str, float] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        placement_group: Any = None,
        store_url: str | Sequence[str] | None = None,
        server_host: str | None = None,
        server_port: int = 0,
        token: str | None = None,
        graceful_timeout: float = 10.0,
        terminate_timeout: float = 10.0,
        max_restarts: int = 3,
        start_timeout: float = 120.0,
        drain_poll_interval: float = 0.5,
    ) -> None:
        if isinstance(n_runners, bool) or not isinstance(n_runners, int) or n_runners < 1:
            raise ValueError(f"n_runners must be a positive integer, got {n_runners!r}")
        self.n_runners = n_runners
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"address must be None (start a local cluster), 'auto', 'ray://HOST:PORT' or "
                             f"'HOST:PORT', got {address!r}")  # fmt: skip
        self.address = address
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"num_cpus must be a positive integer or None, got {num_cpus!r}")
        if num_cpus is not None and address is not None:
            raise ValueError("num_cpus sizes a local cluster this strategy starts; leave it out with address=")
        self.num_cpus = num_cpus
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.runner_num_cpus = _check_amount("runner_num_cpus", runner_num_cpus)
        self.runner_num_gpus = _check_amount("runner_num_gpus", runner_num_gpus)
        resources = dict(runner_resources or {})
        for key, amount in resources.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"runner_resources keys must be resource names, got {key!r}")
            if key in ("CPU", "GPU"):
                raise ValueError(f"runner_resources[{key!r}]: use runner_num_cpus / runner_num_gpus instead")
            _check_amount(f"runner_resources[{key!r}]", amount)
        self.runner_resources: dict[str, float] = {k: float(v) for k, v in resources.items()}
        self.actor_options = dict(actor_options or {})
        if isinstance(placement_group, str) and placement_group not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"placement_group must be one of {', '.join(PLACEMENT_STRATEGIES)} or a ray PlacementGroup, "
                f"got {placement_group!r}"
            )
        if placement_group is not None and not isinstance(placement_group, str):
            if not hasattr(placement_group, "bundle_specs"):
                raise ValueError(
                    f"placement_group must be one of {', '.join(PLACEMENT_STRATEGIES)} or a ray PlacementGroup, "
                    f"got {type(placement_group).__name__}"
                )
        if isinstance(placement_group, str) and not self._bundle():
            raise ValueError("placement_group needs runners that hold resources: set runner_num_cpus > 0 (or GPUs or "
                             "custom resources)")  # fmt: skip
        self.placement_group = placement_group
        self.store_urls = _check_urls(store_url)
        self.server_host = server_host
        if isinstance(server_port, bool) or not isinstance(server_port, int) or not 0 <= server_port <= 65535:
            raise ValueError(f"server_port must be an integer in 0..65535, got {server_port!r}")
        self.server_port = server_port
        if token is not None and not token.strip():
            raise ValueError("token is empty; give the store's token, or None to read AGL_STORE_TOKEN")
        self.token = token
        self.graceful_timeout = _check_seconds("graceful_timeout", graceful_timeout)
        self.terminate_timeout = _check_seconds("terminate_timeout", terminate_timeout)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"max_restarts must be an integer >= -1 (-1: without limit), got {max_restarts!r}")
        self.max_restarts = max_restarts
        self.start_timeout = _check_seconds("start_timeout", start_timeout)
        self.drain_poll_interval = _check_seconds("drain_poll_interval", drain_poll_interval)

    def _bundle(self) -> dict[str, float]:
        """The resources one runner holds, as a placement-group bundle (zero amounts left out)."""
        bundle = {"CPU": self.runner_num_cpus, "GPU": self.runner_num_gpus, **self.runner_resources}
        return {key: amount for key, amount in bundle.items() if amount > 0}

    # -- entry ---------------------------------------------------------------------------------------------------

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        """Run the algorithm here and the runners as Ray actors; return when everything has stopped.

        Ctrl+C stops everything and returns normally. The algorithm's exception is re-raised; runner failures are
        a `RuntimeError` naming each failed runner (a warning when another error is already being raised).
        """
        ray = _ray()
        started_ray = False
        if not ray.is_initialized():
            self._init_ray(ray)
            started_ray = True
        try:
            _RayRun(self, ray).run(algorithm, runner, store)
        except KeyboardInterrupt:
            logger.warning("interrupted (Ctrl+C): everything was stopped")
        finally:
            if started_ray:
                ray.shutdown()

    def _init_ray(self, ray: Any) -> None:
        kwargs: dict[str, Any] = dict(self.ray_init_kwargs)
        if self.address is not None:
            kwargs.setdefault("address", self.address)
        else:
            # Start a new local cluster, even if RAY_ADDRESS or a cluster started by `ray start` exists.
            kwargs.setdefault("address", "local")
            if self.num_cpus is not None:
                kwargs.setdefault("num_cpus", self.num_cpus)
        if self.runtime_env is not None:
            kwargs.setdefault("runtime_env", self.runtime_env)
        kwargs.setdefault("logging_level", logging.WARNING)
        ray.init(**kwargs)

    @property
    def local_cluster(self) -> bool:
        """Whether runners run on this machine only (a local cluster: `address=None`)."""
        return self.address is None


class _RayRun:
    """One `execute` call: the server, the actors, the monitor, and the stop."""

    def __init__(self, strategy: RayExecutionStrategy, ray: Any) -> None:
        self.s = strategy
        self.ray = ray
        self.stop_evt = ThreadingEvent()
        self.runners: list[_Runner] = []
        self.server: LightningStoreServer | None = None
        self.token: str | None = None
        self.created_group: Any = None
        self.lock = threading.Lock()
        self.monitor_halt = threading.Event()
        self.monitor: threading.Thread | None = None

    # -- the store -----------------------------------------------------------------------------------------------

    def _serve(self, store: LightningStore) -> str:
        from agl.store.exposure import is_loopback
        from agl.store.http.wire import TOKEN_ENV
        from agl.store.server import LightningStoreServer

        host = self.s.server_host
        if host is None:
            host = "127.0.0.1" if self.s.local_cluster else str(self.ray.util.get_node_ip_address())
        token = self.s.token or os.environ.get(TOKEN_ENV) or None
        if token is None and not is_loopback(host):
            token = secrets.token_hex(32)
            logger.info("serving the store on %s for the Ray cluster with a token generated for this run", host)
        self.token = token
        server = LightningStoreServer(store, host=host, port=self.s.server_port, token=token)
        server.start()
        self.server = server
        logger.info("store server for the Ray runners at %s", server.endpoint)
        server.announce()
        return server.endpoint

    # -- the actors ----------------------------------------------------------------------------------------------

    def _actor_options(self, worker_id: int) -> dict[str, Any]:
        s = self.s
        options: dict[str, Any] = {
            "num_cpus": s.runner_num_cpus,
            "num_gpus": s.runner_num_gpus,
            "max_restarts": s.max_restarts,
            # Retry `run` on the restarted actor; an exception raised by the runner bundle is not retried.
            "max_task_retries": s.max_restarts,
            # `stop()` and `ready()` must be answered while `run` is busy.
            "max_concurrency": 4,
        }
        if s.runner_resources:
            options["resources"] = dict(s.runner_resources)
        group = self.created_group if self.created_group is not None else s.placement_group
        if group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundles = max(1, len(group.bundle_specs))
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=worker_id % bundles
            )
        options.update(s.actor_options)
        return options

    def _make_placement_group(self) -> None:
        if not isinstance(self.s.placement_group, str):
            return
        from ray.util import placement_group

        group = placement_group([self.s._bundle()] * self.s.n_runners, strategy=self.s.placement_group)
        self.created_group = group
        ready, _ = self.ray.wait([group.ready()], timeout=self.s.start_timeout)
        if not ready:
            raise RuntimeError(
                f"the placement group ({self.s.placement_group}, {self.s.n_runners} x {self.s._bundle()}) was not "
                f"ready within {self.s.start_timeout:g}s; the cluster has {self._available()} free. Lower "
                "n_runners or the runner resources, or add nodes"
            )

    def _available(self) -> dict[str, float]:
        try:
            return {k: v for k, v in self.ray.available_resources().items() if not k.startswith("node:")}
        except Exception:  # pragma: no cover - only for the message
            return {}

    def _start_actors(self, runner: RunnerBundle, addresses: Sequence[str]) -> None:
        from agl.execution.ray_actor import RunnerActor

        actor_class = self.ray.remote(RunnerActor)
        runner_ref = self.ray.put(runner)  # one copy in the object store, not one per actor
        cleanup = self.s.terminate_timeout / 2
        for worker_id in range(self.s.n_runners):
            actor = actor_class.options(**self._actor_options(worker_id)).remote(worker_id)
            record = _Runner(worker_id, actor)
            record.ready_ref = actor.ready.remote()
            record.run_ref = actor.run.remote(
                runner_ref, ",".join(addresses), self.token, self.s.graceful_timeout, cleanup,
                self.s.drain_poll_interval,
            )  # fmt: skip
            self.runners.append(record)

    # -- watching ------------------------------------------------------------------------------------------------

    def _collect(self, record: _Runner) -> None:
        """Record the outcome of a finished `run` call."""
        exceptions = self.ray.exceptions
        record.done = True
        try:
            record.report = self.ray.get(record.run_ref)
            assert record.report is not None
            record.where = f"pid {record.report['pid']} on {record.report['node']}"
            if record.report.get("restarted"):
                logger.warning("%s finished after Ray restarted it (%s)", record.name, record.where)
        except exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            record.error = f"{type(cause).__name__}: {cause}"
        except exceptions.RayActorError as exc:
            if record.killed:
                return
            record.error = f"the actor died and was not restarted: {exc.__class__.__name__}: {_first_line(exc)}"
        except Exception as exc:  # e.g. an object lost with its node
            record.error = f"{type(exc).__name__}: {_first_line(exc)}"

    def _watch(self) -> None:
        deadline = time.monotonic() + self.s.start_timeout
        while not self.monitor_halt.is_set():
            with self.lock:
                pending_ready = [r for r in self.runners if r.ready_ref is not None]
                pending_run = {r.run_ref: r for r in self.runners if not r.done}
            if not pending_run:
                return
            for record in pending_ready:
                ready, _ = self.ray.wait([record.ready_ref], timeout=0)
                if ready:
                    try:
                        report = self.ray.get(record.ready_ref)
                        record.where = f"pid {report['pid']} on {report['node']}"
                    except Exception:  # the actor died before answering: its `run` outcome says more
                        pass
                    record.ready_ref = None
                elif time.monotonic() > deadline:
                    record.ready_ref = None
                    record.done = True
                    record.error = (
                        f"not started within start_timeout={self.s.start_timeout:g}s: each runner needs "
                        f"{self.s._bundle() or 'no resources'}, the cluster has {self._available()} free; lower "
                        "n_runners or the runner resources, or add nodes"
                    )
                    logger.error("%s", record.describe())
                    self.stop_evt.set()
            done, _ = self.ray.wait(list(pending_run), num_returns=1, timeout=0.1)
            for ref in done:
                record = pending_run[ref]
                with self.lock:
                    self._collect(record)
                if record.error is not None:
                    logger.error("%s failed; stopping the run: %s", record.name, record.describe())
                    self.stop_evt.set()

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        handling_error = False
        try:
            if self.s.store_urls:
                addresses: Sequence[str] = self.s.store_urls
                from agl.store.http.wire import TOKEN_ENV

                self.token = self.s.token or os.environ.get(TOKEN_ENV) or None
            else:
                addresses = [self._serve(store)]
            self._make_placement_group()
            self._start_actors(runner, addresses)
            self.monitor = threading.Thread(target=self._watch, name="agl-ray-monitor", daemon=True)
            self.monitor.start()
            self._run_algorithm(algorithm, ",".join(addresses))
        except BaseException:
            handling_error = True
            raise
        finally:
            try:
                self._stop()
                self._report(handling_error)
            finally:
                self._release()

    def _run_algorithm(self, algorithm: AlgorithmBundle, address: str) -> None:
        server = self.server

        async def call() -> None:
            if server is not None:
                await algorithm(server, self.stop_evt)
                return
            from agl.store.client import LightningStoreClient

            client = LightningStoreClient(address, token=self.token)
            try:
                await algorithm(client, self.stop_evt)
            finally:
                await client.close()

        # A failure elsewhere (a runner that failed for good) sets the event; the algorithm then gets
        # graceful_timeout to return before it is cancelled.
        watch = StopWatch(self.stop_evt, self.s.graceful_timeout, poll_interval=0.1)
        run_bundle(call, name="algorithm", watch=watch, cleanup_timeout=self.s.terminate_timeout)

    def _stop(self) -> None:
        """Stop event, drain, tell every actor; kill those still busy after graceful + terminate timeouts."""
        self.stop_evt.set()
        if self.server is not None:
            request_drain(self.server)
        for record in self.runners:
            if not record.done:
                record.actor.stop.remote()
        deadline = time.monotonic() + self.s.graceful_timeout + self.s.terminate_timeout
        if self.monitor is not None:
            while self.monitor.is_alive() and time.monotonic() < deadline:
                self.monitor.join(0.1)
        self.monitor_halt.set()
        if self.monitor is not None:
            self.monitor.join(1.0)
        with self.lock:
            busy = [r for r in self.runners if not r.done]
        if not busy:
            return
        in_flight = self._in_flight()
        for record in busy:
            record.killed = True
            self.ray.kill(record.actor, no_restart=True)
        logger.warning(
            "runner actors did not stop within %.3gs of the stop and were killed: %s; interrupted rollouts: %s",
            self.s.graceful_timeout + self.s.terminate_timeout, ", ".join(r.describe() for r in busy),
            ", ".join(in_flight) if in_flight else "none",
        )  # fmt: skip
        ready, _ = self.ray.wait([r.run_ref for r in busy], num_returns=len(busy), timeout=self.s.terminate_timeout)
        for record in busy:
            if record.run_ref in ready:
                with self.lock:
                    self._collect(record)

    def _in_flight(self) -> list[str]:
        return [] if self.server is None else in_flight_rollouts(self.server)

    def _report(self, handling_error: bool) -> None:
        failed = [r for r in self.runners if r.error is not None]
        if not failed:
            return
        message = "Ray runner actors failed: " + "; ".join(r.describe() for r in failed)
        if handling_error:
            logger.warning(message)
        else:
            raise RuntimeError(message)

    def _release(self) -> None:
        """Free the actors' resources and the placement group; stop the server last."""
        try:
            for record in self.runners:
                try:
                    self.ray.kill(record.actor, no_restart=True)
                except Exception:  # already gone
                    logger.debug("%s: kill failed", record.name, exc_info=True)
            if self.created_group is not None:
                try:
                    self.ray.util.remove_placement_group(self.created_group)
                except Exception:
                    logger.warning("could not remove the run's placement group", exc_info=True)
        finally:
            if self.server is not None:
                self.server.stop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
