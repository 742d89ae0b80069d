"""`ClientServerExecutionStrategy` (alias `cs`): the algorithm serves the store over HTTP, runners are processes.

Roles: `algorithm` hosts the store server and runs the algorithm; `runner` runs runner processes that talk to a
server elsewhere (another process or machine); `both` does both on this machine.

How a run goes (role `both`, main process `algorithm`):

1. The runner processes are created first, while this process has no server thread yet (safe for `fork`), and
   wait at a gate before their first poll.
2. The store server starts; once it accepts connections the gate opens (with the bound port, so port 0 works):
   no runner ever polls a server that is not up, and none sleeps after a failed first poll.
3. The algorithm runs here. A supervisor thread watches the runner processes: a runner that dies is reported
   with its name, pid and exit code at once, and restarted if `restart_failed_runners` allows.
4. When the algorithm returns, the stop event is set and the server starts draining (remote runners see it on
   the health route). Runners finish their rollout and exit; those that do not are escalated SIGINT → SIGTERM →
   SIGKILL, each step bounded. Only then does the server stop, so no final update is lost.
5. Exit codes are checked. Runners that had to be escalated at a normal end are a warning that lists the
   interrupted rollouts, not an error; a runner that crashed is an error naming it, its pid and code.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from agl.execution._loop import StopWatch, run_bundle
from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle, resolve_managed_store_flag
from agl.execution.drain import DRAINING_STATUS, DrainWatcher, in_flight_rollouts, probe_status, request_drain
from agl.execution.events import ExecutionEvent, MultiprocessingEvent
from agl.execution.parent_watch import ParentWatch, watch_parent
from agl.execution.supervisor import ProcessRecord, ProcessSupervisor, describe_process, stop_processes

if TYPE_CHECKING:
    from agl.execution.metrics import LauncherMetrics
    from agl.execution.runner_metrics import RunnerMetricsServer
    from agl.store.base import LightningStore
    from agl.store.server import LightningStoreServer

__all__ = ["ClientServerExecutionStrategy"]

logger = logging.getLogger(__name__)

Role = Literal["algorithm", "runner", "both"]
MainProcess = Literal["algorithm", "runner"]

_INTERRUPTED_EXIT_CODE = 130


class _Gate:
    """Holds runner processes back until the store server accepts connections, and tells them its port."""

    def __init__(self, ctx: BaseContext) -> None:
        self.ready = ctx.Event()
        self.port = ctx.Value("i", 0, lock=False)

    def open(self, port: int) -> None:
        self.port.value = port
        self.ready.set()

    def pass_through(self, stop_evt: ExecutionEvent, poll: float = 0.05) -> int | None:
        """Wait for the gate; the server's port, or None if a stop came first."""
        while not self.ready.wait(poll):
            if stop_evt.is_set():
                return None
        return int(self.port.value)


def _connect_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _server_address(host: str, port: int) -> str:
    host = _connect_host(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _flush_streams() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _exit_child(code: int, linger: float | None = None) -> None:
    """End a child process with `code`; skip the interpreter's wait for threads a stuck bundle left behind.

    Non-daemon threads (an executor's workers winding down) get `linger` seconds to end by themselves first.
    """
    _flush_streams()
    if linger is None:
        linger = 1.0 if code == 0 else 0.1
    deadline = time.monotonic() + linger
    lingering = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in lingering:
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t for t in lingering if t.is_alive()]
    if lingering:
        logging.getLogger(__name__).warning(
            "%s: leaving %d thread(s) behind: %s",
            multiprocessing.current_process().name, len(lingering), ", ".join(t.name for t in lingering),
        )  # fmt: skip
        _flush_streams()
        os._exit(code)
    if code:
        sys.exit(code)


def _preload_for_forked_runners(ctx: BaseContext) -> None:
    """Import what runner processes need to reach the store before forking them, so each starts with it loaded.

    A forked child inherits the parent's modules; without this every runner imports the HTTP client (and uvloop)
    itself, all at once, which on a small machine delays the first claim by a tenth of a second or more.
    """
    if ctx.get_start_method() != "fork":
        return
    import agl.store.client  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass


async def _runner_coroutine(
    runner: RunnerBundle,
    store: LightningStore | None,
    address: str | None,
    worker_id: int,
    stop_evt: ExecutionEvent,
    metrics_port: int | None = None,
) -> None:
    exporter = _start_runner_metrics(metrics_port, worker_id)
    try:
        if store is not None:
            await runner(exporter.wrap(store) if exporter is not None else store, worker_id, stop_evt)
            return
        assert address is not None
        from agl.store.client import LightningStoreClient

        client = LightningStoreClient(address)
        try:
            await runner(exporter.wrap(client) if exporter is not None else client, worker_id, stop_evt)
        finally:
            await client.close()
    finally:
        if exporter is not None:
            exporter.stop()


def _start_runner_metrics(metrics_port: int | None, worker_id: int) -> RunnerMetricsServer | None:
    """Runner `worker_id`'s metrics server on 127.0.0.1:metrics_port + worker_id (None: metrics off or failed)."""
    if metrics_port is None:
        return None
    try:
        from agl.execution.runner_metrics import RunnerMetricsServer

        return RunnerMetricsServer(metrics_port + worker_id).start()
    except ImportError:
        logger.error(
            "metrics_port is set but prometheus_client is not installed; runner-%d serves no metrics", worker_id
        )
    except OSError as exc:
        logger.error(
            "runner-%d could not serve its metrics on 127.0.0.1:%d (%s); it runs without them (choose another "
            "metrics_port / AGL_METRICS_PORT)",
            worker_id, metrics_port + worker_id, exc,
        )  # fmt: skip
    return None


def _runner_process_main(
    runner: RunnerBundle,
    store: LightningStore | None,
    worker_id: int,
    stop_evt: ExecutionEvent,
    gate: _Gate | None,
    host: str,
    port: int,
    cleanup_timeout: float,
    metrics_port: int | None = None,
    store_url: str | None = None,
) -> None:
    """Entry point of a runner process (module level, so it pickles for `spawn`); `store_url` (the servers, separated
    by commas) replaces `host`/`port` when given. The process stops soon after the process that started it dies,
    instead of retrying a store that went with it."""
    name = multiprocessing.current_process().name
    code = 0
    try:
        watch_parent(name)
        address: str | None = None
        if store is None:
            if gate is not None:
                opened = gate.pass_through(stop_evt)
                if opened is None:
                    logger.debug("%s: stopped before the store server was ready", name)
                    return
                port = opened
            address = store_url or _server_address(host, port)
        run_bundle(
            lambda: _runner_coroutine(runner, store, address, worker_id, stop_evt, metrics_port),
            name=name,
            cleanup_timeout=cleanup_timeout,
            # SIGINT is step 2 of the stop: a runner stuck on its loop must end well within terminate_timeout.
            force_interrupt_after=min(0.5, cleanup_timeout / 4),
            fast_loop=True,
        )
    except KeyboardInterrupt:
        logger.info("%s interrupted", name)
        code = _INTERRUPTED_EXIT_CODE
    except BaseException as exc:
        logger.exception("%s failed: %r", name, exc)
        code = 1
    finally:
        _exit_child(code)


def _algorithm_process_main(
    algorithm: AlgorithmBundle,
    store: LightningStore,
    stop_evt: ExecutionEvent,
    gate: _Gate,
    runners_done: ExecutionEvent,
    host: str,
    port: int,
    managed: bool,
    graceful_timeout: float,
    terminate_timeout: float,
) -> None:
    """Entry point of the algorithm process when the runner is the main process (`main_process="runner"`). It stops
    soon after that process dies: nothing would be left to run its rollouts or to stop it."""
    code = 0
    server: LightningStoreServer | None = None
    parent: ParentWatch | None = None
    try:
        parent = watch_parent("algorithm")
        if managed:
            from agl.store.server import LightningStoreServer

            server = LightningStoreServer(store, host=host, port=port)
            server.start()
            server.announce()
            gate.open(server.port)
        else:
            gate.open(port)
        watch = StopWatch(stop_evt, graceful_timeout, poll_interval=0.1)
        run_bundle(lambda: _call_algorithm(algorithm, server or store, stop_evt), name="algorithm", watch=watch)
    except KeyboardInterrupt:
        logger.info("algorithm interrupted")
        code = _INTERRUPTED_EXIT_CODE
    except BaseException as exc:
        logger.exception("algorithm failed: %r", exc)
        code = 1
    finally:
        stop_evt.set()
        if server is not None:
            try:
                request_drain(server)

                # Keep serving until the runner (in the main process) has finished its last rollout, unless that
                # process is gone.
                def runner_alive() -> bool:
                    return parent is None or parent.parent_alive()

                deadline = time.monotonic() + graceful_timeout + terminate_timeout
                while not runners_done.wait(0.1) and time.monotonic() < deadline and runner_alive():
                    pass
                if not runners_done.is_set() and runner_alive():
                    logger.warning(
                        "the runner did not finish within %.3gs; stopping the store server", graceful_timeout
                    )
                server.stop()
            except BaseException:
                logger.exception("error stopping the store server")
        _exit_child(code)


async def _call_algorithm(algorithm: AlgorithmBundle, store: LightningStore, stop_evt: ExecutionEvent) -> None:
    await algorithm(store, stop_evt)


class ClientServerExecutionStrategy(ExecutionStrategy):
    """The algorithm process serves the store over HTTP; runners are processes (or machines) using a client.

    Args:
        role: `"algorithm"`, `"runner"` or `"both"`; None reads `AGL_CURRENT_ROLE` (default `both`).
        server_host: the address the server binds and runners connect to; None reads `AGL_SERVER_HOST`
            (default `localhost`).
        server_port: None reads `AGL_SERVER_PORT` (default 4747); 0 picks a free port (role `both` only, where
            the runners are told the port).
        n_runners: runner processes on this machine (roles `runner` and `both`).
        graceful_timeout: seconds runners get to stop after the stop event, before SIGINT.
        terminate_timeout: seconds each later step (SIGINT, SIGTERM, SIGKILL) is given.
        main_process: with role `both`, which side runs in this process: `"algorithm"` (default) or `"runner"`
            (requires `n_runners == 1`; the algorithm and the store then live in a child process).
        managed_store: wrap the store in a server / use a client for runners; None reads `AGL_MANAGED_STORE`
            (default true). Unmanaged, every side uses the given store as it is.
        allowed_exit_codes: runner exit codes that are not failures.
        restart_failed_runners: how many times each runner process is restarted after it dies (0 = never; a runner
            that dies for good then stops the run, as upstream does).
        start_method: the multiprocessing start method; None uses the platform default.
        drain_poll_interval: how often a `runner`-role process asks the server whether it is draining.
        metrics_port: runner `i` serves its own Prometheus metrics at `http://127.0.0.1:<metrics_port + i>/metrics`
            (`--metrics-port` where a command starts runners); None reads `AGL_METRICS_PORT` (default: off).
        metrics: record runner process lifecycle metrics (spawns, exits, restarts, stop steps) and serve them, with
            the store's, from the store server this process starts (`/metrics`).
        server_wait_timeout: with role `runner`, seconds to wait for the store server to answer before failing with
            a `ConnectionError` naming its address (runners may start before the server); None waits without limit.
        store_url: with role `runner`, the store server(s) to use instead of `server_host`/`server_port`: a URL
            (`http://HOST:PORT`), or several servers of one database as a list or separated by commas; each runner's
            client spreads its calls over them and fails over when one dies.

    After `execute()`, `launcher_metrics` holds the lifecycle metrics of the run (None when off).
    """

    alias: ClassVar[str | None] = "cs"

    def __init__(
        self,
        role: Role | None = None,
        server_host: str | None = None,
        server_port: int | None = None,
        n_runners: int = 1,
        graceful_timeout: float = 10.0,
        terminate_timeout: float = 10.0,
        main_process: MainProcess = "algorithm",
        managed_store: bool | None = None,
        allowed_exit_codes: Sequence[int] = (0, -15),
        restart_failed_runners: int = 0,
        start_method: str | None = None,
        drain_poll_interval: float = 0.5,
        metrics_port: int | None = None,
        metrics: bool = True,
        server_wait_timeout: float | None = 60.0,
        store_url: str | Sequence[str] | None = None,
    ) -> None:
        from agl.env_var import LightningEnvVar, resolve_current_role, resolve_int_env_var, resolve_str_env_var

        self.role: Role = resolve_current_role(role)
        self.server_host: str = resolve_str_env_var(LightningEnvVar.AGL_SERVER_HOST, server_host, fallback="localhost")
        port = resolve_int_env_var(LightningEnvVar.AGL_SERVER_PORT, server_port, fallback=4747)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            source = "server_port" if server_port is not None else LightningEnvVar.AGL_SERVER_PORT.value
            raise ValueError(f"{source} must be an integer in 0..65535, got {port!r}")
        self.server_port: int = port
        if isinstance(n_runners, bool) or not isinstance(n_runners, int) or n_runners < 1:
            raise ValueError(f"n_runners must be a positive integer, got {n_runners!r}")
        self.n_runners = n_runners
        if main_process not in ("algorithm", "runner"):
            raise ValueError(f"main_process must be 'algorithm' or 'runner', got {main_process!r}")
        if main_process == "runner" and (self.role != "both" or n_runners != 1):
            raise ValueError(
                "main_process='runner' requires role='both' and n_runners=1, "
                f"got role={self.role!r} and n_runners={n_runners}"
            )
        self.main_process: MainProcess = main_process
        for label, value in (("graceful_timeout", graceful_timeout), ("terminate_timeout", terminate_timeout)):
            if value < 0:
                raise ValueError(f"{label} must be non-negative, got {value!r}")
        self.graceful_timeout = float(graceful_timeout)
        self.terminate_timeout = float(terminate_timeout)
        self.managed_store = resolve_managed_store_flag(managed_store)
        self.allowed_exit_codes = tuple(int(code) for code in allowed_exit_codes)
        if isinstance(restart_failed_runners, bool) or restart_failed_runners < 0:
            raise ValueError(f"restart_failed_runners must be a non-negative integer, got {restart_failed_runners!r}")
        self.restart_failed_runners = int(restart_failed_runners)
        if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, got {start_method!r}"
            )
        self.start_method = start_method
        if drain_poll_interval <= 0:
            raise ValueError(f"drain_poll_interval must be positive, got {drain_poll_interval!r}")
        self.drain_poll_interval = float(drain_poll_interval)
        source = "metrics_port" if metrics_port is not None else LightningEnvVar.AGL_METRICS_PORT.value
        metrics_port = resolve_int_env_var(LightningEnvVar.AGL_METRICS_PORT, metrics_port)
        if metrics_port is not None and (
            isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 1 <= metrics_port <= 65535
        ):
            raise ValueError(f"{source} must be an integer in 1..65535 (runner i uses port + i), got {metrics_port!r}")
        self.metrics_port: int | None = metrics_port
        self.metrics = bool(metrics)
        if server_wait_timeout is not None and not server_wait_timeout >= 0:
            raise ValueError(
                f"server_wait_timeout must be None or a non-negative number of seconds, got {server_wait_timeout!r}"
            )
        self.server_wait_timeout = None if server_wait_timeout is None else float(server_wait_timeout)
        self.store_urls: tuple[str, ...] = ()
        """The servers runners use (role `runner`), when given by `store_url`."""
        if store_url is not None:
            if self.role != "runner":
                raise ValueError(
                    f"store_url is for role='runner' (runners of a store served elsewhere), got role={self.role!r}: "
                    "the algorithm side serves the store itself at server_host:server_port"
                )
            from agl.store.http.servers import split_server_addresses

            self.store_urls = split_server_addresses(store_url)
        self.launcher_metrics: LauncherMetrics | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(role={self.role!r}, server_host={self.server_host!r}, "
            f"server_port={self.server_port}, n_runners={self.n_runners}, main_process={self.main_process!r}, "
            f"managed_store={self.managed_store})"
        )

    @property
    def server_address(self) -> str:
        """The URL runners use to reach the store server (with several `store_url`s: all, separated by commas)."""
        if self.store_urls:
            return ",".join(self.store_urls)
        return _server_address(self.server_host, self.server_port)

    # -- entry ---------------------------------------------------------------------------------------------------

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        """Run this machine's part of the run (per `role`); return when it is over.

        Ctrl+C stops everything cleanly and returns normally. Other exceptions are re-raised after every process
        this call started has stopped.
        """
        ctx = multiprocessing.get_context(self.start_method)
        stop_evt = MultiprocessingEvent(ctx)
        if self.metrics:
            from agl.execution.metrics import launcher_metrics

            self.launcher_metrics = launcher_metrics()
        try:
            if self.role == "algorithm":
                self._execute_algorithm_only(algorithm, store, stop_evt)
            elif self.role == "runner":
                self._execute_runners_only(runner, store, stop_evt, ctx)
            elif self.role == "both" and self.main_process == "algorithm":
                self._execute_both(algorithm, runner, store, stop_evt, ctx)
            elif self.role == "both":
                self._execute_both_main_runner(algorithm, runner, store, stop_evt, ctx)
            else:  # pragma: no cover - rejected by the constructor
                raise ValueError(f"unknown role {self.role!r}")
        except KeyboardInterrupt:
            logger.warning("interrupted (Ctrl+C): everything was stopped")

    # -- pieces --------------------------------------------------------------------------------------------------

    def _start_server(self, store: LightningStore) -> LightningStoreServer:
        from agl.store.server import LightningStoreServer

        collectors = [self.launcher_metrics] if self.launcher_metrics is not None else []
        server = LightningStoreServer(
            store, host=self.server_host, port=self.server_port, metrics=self.metrics, metrics_collectors=collectors
        )
        server.start()
        logger.info("store server ready at %s", server.endpoint)
        server.announce()
        return server

    def _run_algorithm(self, algorithm: AlgorithmBundle, store: LightningStore, stop_evt: ExecutionEvent) -> None:
        # Nothing but a failure elsewhere or Ctrl+C sets the event while the algorithm runs; the algorithm then gets
        # graceful_timeout to return before it is cancelled, so a run whose runners are all gone cannot hang.
        watch = StopWatch(stop_evt, self.graceful_timeout, poll_interval=0.1)
        run_bundle(
            lambda: _call_algorithm(algorithm, store, stop_evt),
            name="algorithm",
            watch=watch,
            cleanup_timeout=self.terminate_timeout,
        )

    def _run_runner_here(
        self, runner: RunnerBundle, store: LightningStore | None, address: str | None, stop_evt: ExecutionEvent
    ) -> None:
        watch = StopWatch(stop_evt, self.graceful_timeout, poll_interval=0.1)
        run_bundle(
            lambda: _runner_coroutine(runner, store, address, 0, stop_evt, self.metrics_port),
            name="runner-0",
            watch=watch,
            cleanup_timeout=self.terminate_timeout,
        )

    def _supervisor(
        self,
        ctx: BaseContext,
        runner: RunnerBundle,
        store: LightningStore | None,
        stop_evt: ExecutionEvent,
        gate: _Gate | None,
        port: int,
    ) -> ProcessSupervisor:
        host = self.server_host
        cleanup = self.terminate_timeout / 2  # a child must be done cleaning up before the next step comes

        metrics_port = self.metrics_port
        store_url = ",".join(self.store_urls) or None

        def make_args(worker_id: int) -> tuple[Any, ...]:
            return (runner, store, worker_id, stop_evt, gate, host, port, cleanup, metrics_port, store_url)

        return ProcessSupervisor(
            ctx,
            _runner_process_main,
            make_args,
            range(self.n_runners),
            stop_evt,
            allowed_exit_codes=self.allowed_exit_codes,
            restart_failed_runners=self.restart_failed_runners,
            metrics=self.launcher_metrics,
        )

    def _in_flight_rollouts(self, store: LightningStore) -> list[str]:
        return in_flight_rollouts(store)

    def _report(self, supervisor: ProcessSupervisor, records: list[ProcessRecord], store: LightningStore | None,
                handling_error: bool) -> None:  # fmt: skip
        escalated = supervisor.escalated(records)
        if escalated:
            interrupted = self._in_flight_rollouts(store) if store is not None else []
            who = ", ".join(
                f"{r.name} (pid {r.pid}, stopped by {r.stop_step}, exitcode={r.exitcode})" for r in escalated
            )
            logger.warning(
                "runners did not stop within %.3gs of the stop event and had to be interrupted: %s; "
                "interrupted rollouts: %s",
                self.graceful_timeout, who, ", ".join(interrupted) if interrupted else "none",
            )  # fmt: skip
        self._check_failures(supervisor.failures(records), handling_error)

    @staticmethod
    def _check_failures(failed: Sequence[ProcessRecord], handling_error: bool) -> None:
        if not failed:
            return
        message = "Subprocesses failed: " + ", ".join(record.describe() for record in failed)
        if handling_error:
            logger.warning(message)
        else:
            raise RuntimeError(message)

    # -- roles ---------------------------------------------------------------------------------------------------

    def _execute_algorithm_only(
        self, algorithm: AlgorithmBundle, store: LightningStore, stop_evt: ExecutionEvent
    ) -> None:
        server = self._start_server(store) if self.managed_store else None
        try:
            self._run_algorithm(algorithm, server or store, stop_evt)
        finally:
            stop_evt.set()
            if server is not None:
                try:
                    if request_drain(server):
                        self._wait_for_remote_runners(server)
                finally:
                    server.stop()

    def _wait_for_remote_runners(self, server: LightningStoreServer) -> None:
        """Give runners elsewhere up to `graceful_timeout` to finish their rollouts and to hear that the server drains.

        Runner-role processes poll the health route (each with its own watcher id); the server stays up until each
        watcher seen in the last seconds has been answered "draining", so none is left polling a server that is gone.
        """
        deadline = time.monotonic() + self.graceful_timeout
        remaining = self._in_flight_rollouts(server)
        untold = server.untold_drain_watchers()
        while (remaining or untold) and time.monotonic() < deadline:
            time.sleep(0.05)
            remaining = self._in_flight_rollouts(server)
            untold = server.untold_drain_watchers()
        if untold:
            logger.warning("stopping the store server before %d runner process(es) heard that it drains", len(untold))
        if remaining:
            logger.warning(
                "stopping the store server with %d rollout(s) still in flight: %s", len(remaining), ", ".join(remaining)
            )

    def _execute_both(
        self,
        algorithm: AlgorithmBundle,
        runner: RunnerBundle,
        store: LightningStore,
        stop_evt: ExecutionEvent,
        ctx: BaseContext,
    ) -> None:
        gate = _Gate(ctx) if self.managed_store else None
        # Runner processes first, before this process has any server thread (fork-safe); they wait at the gate.
        if self.managed_store:
            _preload_for_forked_runners(ctx)
        supervisor = self._supervisor(
            ctx, runner, None if self.managed_store else store, stop_evt, gate, self.server_port
        )
        supervisor.start()
        server: LightningStoreServer | None = None
        handling_error = False
        try:
            if gate is not None:
                server = self._start_server(store)
                gate.open(server.port)
            self._run_algorithm(algorithm, server or store, stop_evt)
        except BaseException:
            handling_error = True
            raise
        finally:
            stop_evt.set()
            try:
                if server is not None:
                    request_drain(server)
                records = supervisor.stop(self.graceful_timeout, self.terminate_timeout)
                self._report(supervisor, records, server or store, handling_error)
            finally:
                if server is not None:
                    server.stop()

    def _execute_runners_only(
        self, runner: RunnerBundle, store: LightningStore, stop_evt: ExecutionEvent, ctx: BaseContext
    ) -> None:
        watcher: DrainWatcher | None = None
        address = self.server_address
        if self.managed_store:
            if self.server_port == 0 and not self.store_urls:
                raise ValueError("role='runner' needs the server's port; server_port=0 only works with role='both'")
            if not self._await_server(address, stop_evt):
                logger.info("the store server at %s is draining; nothing to run", address)
                return
            watcher = DrainWatcher(address, stop_evt, interval=self.drain_poll_interval).start()
        handling_error = False
        try:
            if self.n_runners == 1:
                self._run_runner_here(runner, None if self.managed_store else store, address, stop_evt)
                return
            if self.managed_store:
                _preload_for_forked_runners(ctx)
            supervisor = self._supervisor(
                ctx, runner, None if self.managed_store else store, stop_evt, None, self.server_port
            )
            supervisor.start()
            try:
                supervisor.wait()
            except BaseException:
                handling_error = True
                raise
            finally:
                records = supervisor.stop(self.graceful_timeout, self.terminate_timeout)
                self._report(supervisor, records, None, handling_error)
        finally:
            if watcher is not None:
                watcher.stop()

    def _await_server(self, address: str, stop_evt: ExecutionEvent) -> bool:
        """Wait until a store server at `address` (several: separated by commas) answers its health route; False if
        one is already draining.

        Raises `ConnectionError` when none has answered within `server_wait_timeout`.
        """
        from agl.execution.drain import health_url

        urls = [health_url(a) for a in address.split(",")]
        url = ", ".join(urls)
        limit = self.server_wait_timeout
        started = last_log = time.monotonic()
        while not stop_evt.is_set():
            timeout = 2.0 if limit is None else max(0.1, min(2.0, limit))
            statuses = [probe_status(u, timeout=timeout) for u in urls]
            if DRAINING_STATUS in statuses:
                return False
            if any(status is not None for status in statuses):
                return True
            now = time.monotonic()
            if limit is not None and now - started >= limit:
                raise ConnectionError(
                    f"role='runner': no store server answered at {url} within {limit:g}s. Start the algorithm side "
                    f"first (role 'algorithm' or 'both', or `agl store`), or point server_host/server_port "
                    f"(AGL_SERVER_HOST/AGL_SERVER_PORT) at the running server; server_wait_timeout=None waits "
                    f"without limit"
                )
            if now - last_log >= 5.0:
                logger.info("waiting for the store server at %s (%.0fs so far)", address, now - started)
                last_log = now
            time.sleep(0.1)
        return False

    def _execute_both_main_runner(
        self,
        algorithm: AlgorithmBundle,
        runner: RunnerBundle,
        store: LightningStore,
        stop_evt: ExecutionEvent,
        ctx: BaseContext,
    ) -> None:
        gate = _Gate(ctx)
        runners_done = MultiprocessingEvent(ctx)
        process: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_algorithm_process_main,
            args=(
                algorithm, store, stop_evt, gate, runners_done, self.server_host, self.server_port,
                self.managed_store, self.graceful_timeout, self.terminate_timeout,
            ),
            name="algorithm",
        )  # fmt: skip
        process.start()
        handling_error = False
        try:
            port = gate.pass_through(_ProcessEndedEvent(process, stop_evt))
            if port is None:
                if not process.is_alive():
                    process.join(0)
                    raise RuntimeError(
                        f"the algorithm process ended before the store server was ready: {describe_process(process)}"
                    )
                return
            if self.managed_store:
                self._run_runner_here(runner, None, _server_address(self.server_host, port), stop_evt)
            else:
                self._run_runner_here(runner, store, None, stop_evt)
            runners_done.set()
            # The algorithm decides when the run is over: join it, do not stop it.
            while process.is_alive():
                process.join(0.1)
        except BaseException:
            handling_error = True
            raise
        finally:
            runners_done.set()
            steps = stop_processes([process], stop_evt, self.graceful_timeout, self.terminate_timeout)
            if process.pid in steps and steps[process.pid] != "event":
                logger.warning("the algorithm process had to be stopped with %s", steps[process.pid])
            process.join(0)
            if process.exitcode not in self.allowed_exit_codes and steps.get(process.pid or -1, "event") == "event":
                record = ProcessRecord(process.name, process.pid, process.exitcode)
                self._check_failures([record], handling_error)


class _ProcessEndedEvent:
    """Reads as set once `process` has ended or `event` is set (to stop waiting at the gate)."""

    def __init__(self, process: BaseProcess, event: ExecutionEvent) -> None:
        self.process = process
        self.event = event

    def is_set(self) -> bool:
        return self.event.is_set() or not self.process.is_alive()

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        self.event.clear()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)
