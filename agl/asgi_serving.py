"""Serve one of AGL's ASGI apps on stock uvicorn, through its public `Config` and `Server` API only.

`AsgiServer` runs an app in a background thread with its own event loop (`start` / `stop`), as a task on the
caller's running loop (`start_async` / `stop_async`), or in the calling main thread until SIGINT/SIGTERM (`serve`);
`AsgiServerProcess` runs one in a child process. All bind a listening socket first (port 0 picks a free port, read
back from `port`), return once uvicorn accepts connections, and stop gracefully: requests in flight get up to
`timeout_graceful_shutdown` seconds, then are cancelled.

Every request runs in its own asyncio Task with a fresh, empty context (uvicorn's `reset_contextvars`), so
ContextVars set while answering one request are never seen by another. The store server, the model server and the
LLM proxy all serve through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from agl.asgi_connections import HeadGuard
from agl.event_loops import new_event_loop
from agl.sockets import bind_listening_socket

if TYPE_CHECKING:
    import uvicorn

__all__ = ["AsgiServer", "AsgiServerProcess"]

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_READY_POLL = 0.005
"""Seconds between looks at uvicorn's public `started` flag while waiting for start-up."""


def _http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol: httptools' when installed (as uvicorn's "auto" picks), else h11's."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


@contextlib.contextmanager
def _owner_keeps_signals(restore: bool) -> Iterator[Callable[[], None]]:
    """Yield a function that gives SIGINT/SIGTERM back to the handlers they had on entry.

    uvicorn's `Server.serve` takes both signals over when it runs in the main thread (and raises them again when it
    returns); a server embedded in a program must leave them to the program, so the caller calls the yielded
    function right after `serve` started. Off the main thread, or with `restore` false, it does nothing.
    """
    if not restore or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    saved = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}

    def give_back() -> None:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)

    yield give_back


class AsgiServer:
    """One ASGI app served by uvicorn on a socket of its own (see the module docstring).

    Args:
        app: the ASGI 3 application.
        host, port: where to listen when `sock` is not given (port 0: a free one).
        sock: an already bound, listening socket to serve on instead (closed when the server stops).
        name: names the thread and the log lines ("store server", "model server", ...).
        log_level: uvicorn's log level.
        lifespan: "on" sends the app ASGI lifespan events (start-up before the first connection, shut-down after
            the last); "off" does not.
        backlog: the listening socket's backlog (when this class binds it).
        timeout_keep_alive: seconds an idle keep-alive connection stays open.
        timeout_graceful_shutdown: seconds requests in flight get at stop before they are cancelled.
        limit_concurrency: connections or requests in flight beyond which new requests get 503 (None: no limit).
        startup_timeout: seconds `start` waits for the server to accept connections.
        on_stop: called on the server's loop when a stop begins, before uvicorn stops accepting connections (e.g.
            to end long waits early).
        head_timeout: seconds a request head may take to arrive (from its first byte, or from the connection's
            opening); slower → 408 and the connection closes. None: no limit (see agl.asgi_connections).
        max_head_bytes: largest request head (request line and headers); larger → 431 and the connection closes.
            None: no limit beyond uvicorn's.
        options: more `uvicorn.Config` keyword arguments (they override the ones above).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        name: str = "server",
        log_level: str = "warning",
        lifespan: Literal["on", "off"] = "off",
        backlog: int = 2048,
        timeout_keep_alive: float = 75,
        timeout_graceful_shutdown: float = 5,
        limit_concurrency: int | None = None,
        startup_timeout: float = 60.0,
        on_stop: Callable[[], None] | None = None,
        head_timeout: float | None = 30.0,
        max_head_bytes: int | None = 1024 * 1024,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.head_timeout = head_timeout
        self.max_head_bytes = max_head_bytes
        self.host = host
        self.name = name
        self.backlog = backlog
        self.startup_timeout = startup_timeout
        self.on_stop = on_stop
        self._requested_port = port
        self._sock = sock
        self._port = int(sock.getsockname()[1]) if sock is not None else port
        self._settings: dict[str, Any] = {
            "ws": "none",
            "lifespan": lifespan,
            "interface": "asgi3",
            "log_config": None,
            "log_level": log_level,
            "access_log": False,
            "proxy_headers": False,
            "server_header": False,
            "date_header": False,
            "timeout_keep_alive": timeout_keep_alive,
            "timeout_graceful_shutdown": timeout_graceful_shutdown,
            "limit_concurrency": limit_concurrency,
            "backlog": backlog,
            "reset_contextvars": True,
            **dict(options or {}),
        }
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the chosen one once started with port 0)."""
        return self._port

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop serving requests while running."""
        return self._loop

    @property
    def is_running(self) -> bool:
        """Whether the server accepts connections and no stop has begun."""
        server = self._server
        return server is not None and server.started and not server.should_exit

    @property
    def error(self) -> BaseException | None:
        """Why the last run ended abnormally (None if it did not)."""
        return self._error

    def _take_socket(self) -> socket.socket:
        sock = self._sock
        if sock is None or sock.fileno() < 0:
            sock = bind_listening_socket(self.host, self._requested_port, what=self.name, backlog=self.backlog)
        self._sock = None  # a socket is served once: a restart binds again
        self._port = int(sock.getsockname()[1])
        self._requested_port = self._port  # a restart comes back on the same port
        return sock

    def _check_not_running(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"the {self.name} on port {self._port} is already running")

    def _new_server(self, sock: socket.socket) -> uvicorn.Server:
        import uvicorn

        settings = dict(self._settings)
        app = self.app
        if "http" not in settings:
            # One guard per run: its deadlines live on the loop that serves this run, and it accepts from `sock`.
            guard = HeadGuard(self.head_timeout, self.max_head_bytes, listener=sock)
            app, settings["http"] = guard.app(app), guard.protocol(_http_protocol())
        return uvicorn.Server(uvicorn.Config(app, **settings))

    async def _serve(self, server: uvicorn.Server, sock: socket.socket, keep_signals: bool) -> None:
        try:
            with _owner_keeps_signals(keep_signals) as give_back:
                serving = asyncio.ensure_future(server.serve(sockets=[sock]))
                await asyncio.sleep(0)  # serve() has taken the signals over by now (main thread only)
                give_back()
                await serving
        except BaseException as exc:  # SystemExit from a failed start-up included
            self._error = exc
            if not isinstance(exc, asyncio.CancelledError):
                logger.error("%s on port %s stopped with an error: %r", self.name, self._port, exc)
            raise
        finally:
            sock.close()

    # -- in a thread -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve from a background thread with its own event loop; return once it accepts connections.

        Raises `PortInUseError` if the port is taken, `RuntimeError` if start-up fails or times out.
        """
        self._check_not_running()
        sock = self._take_socket()
        server = self._new_server(sock)
        self._error = None
        started = threading.Event()

        def run() -> None:
            loop = new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(server, sock, keep_signals=False))
            except BaseException:
                pass
            finally:
                started.set()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._server = server
        thread = threading.Thread(target=run, name=f"agl-{self.name.replace(' ', '-')}-{self._port}", daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            started.wait(_READY_POLL)
        if not server.started:
            server.should_exit = True
            thread.join(10)
            self._reset()
            raise RuntimeError(
                f"the {self.name} on {self.host}:{self._port} did not start within {self.startup_timeout}s"
                + (f": {self._error!r}" if self._error else "")
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started by `start` (no-op if none): graceful first, forced after `timeout` seconds."""
        server, thread, loop = self._server, self._thread, self._loop
        if server is None:
            return
        if thread is None:
            raise RuntimeError(f"the {self.name} runs on an event loop: stop it with `await stop_async()`")
        if thread is threading.current_thread():
            raise RuntimeError(f"the {self.name} cannot be stopped from its own thread")
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to tell
                loop.call_soon_threadsafe(self._begin_stop, server)
        else:
            server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._reset()

    def _begin_stop(self, server: uvicorn.Server) -> None:
        if self.on_stop is not None and not server.should_exit:
            try:
                self.on_stop()
            except Exception:
                logger.exception("%s: the on_stop hook failed", self.name)
        server.should_exit = True

    def _reset(self) -> None:
        self._server = None
        self._thread = None
        self._task = None
        self._loop = None

    # -- on the running loop -----------------------------------------------------------------------------------

    async def start_async(self) -> None:
        """Serve as a task on the running event loop; return once it accepts connections.

        Raises `PortInUseError` if the port is taken, `RuntimeError` if start-up fails or times out.
        """
        self._check_not_running()
        sock = self._take_socket()
        server = self._new_server(sock)
        self._error = None
        self._server = server
        self._loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self._serve(server, sock, keep_signals=True))
        self._task = task
        deadline = time.monotonic() + self.startup_timeout
        try:
            while not server.started and not task.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {self.name} on {self.host}:{self._port} did not start within {self.startup_timeout}s"
                    )
                await asyncio.sleep(_READY_POLL)
            if not server.started:
                raise RuntimeError(f"the {self.name} on {self.host}:{self._port} did not start: {self._error!r}")
        except BaseException:
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            self._reset()
            raise

    async def stop_async(self, timeout: float = 10.0) -> None:
        """Stop the server (no-op if none; one in a thread is stopped without blocking this loop)."""
        server, task = self._server, self._task
        if server is None:
            return
        if self._thread is not None:
            await asyncio.to_thread(self.stop, timeout)
            return
        self._begin_stop(server)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                server.force_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, timeout)
            except BaseException as exc:
                if not isinstance(exc, (Exception, SystemExit)):  # our own cancellation goes on
                    raise
        self._reset()

    async def wait_stopped(self) -> None:
        """Return once a server started by `start_async` has stopped (by `stop_async` or a failure)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        elif self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # -- as the main job of a process --------------------------------------------------------------------------

    def serve(
        self,
        on_started: Callable[[], None] | None = None,
        on_signal: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    ) -> None:
        """Serve in the calling (main) thread until SIGINT or SIGTERM, then stop gracefully and return.

        `on_started` is called once the server accepts connections. `on_signal(again)`, if given, is awaited after
        the first signal, before stopping (e.g. to drain); `again` is set by a second signal.
        """
        loop = new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            # The program's handlers go in before uvicorn starts, so a signal during start-up stops it too.
            stop = asyncio.Event()
            for sig in _STOP_SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            try:
                await self.start_async()
                if on_started is not None:
                    on_started()
                waiter = asyncio.ensure_future(stop.wait())
                assert self._task is not None
                try:
                    await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if on_signal is not None and stop.is_set() and not self._task.done():
                        stop.clear()
                        await on_signal(stop)
                finally:
                    waiter.cancel()
                    await self.stop_async()
            finally:
                for sig in _STOP_SIGNALS:
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
            asyncio.set_event_loop(None)


def _serve_child(
    factory: Callable[..., Any], args: tuple[Any, ...], settings: dict[str, Any], ready: Any, stop: Any, port: Any
) -> None:
    """Entry point of an `AsgiServerProcess` child: build the app, serve it until the parent sets `stop`."""

    async def main() -> None:
        server = AsgiServer(factory(*args), **settings)
        await server.start_async()
        port.value = server.port
        ready.set()
        try:
            while not stop.is_set() and server.is_running:
                await asyncio.sleep(0.05)
        finally:
            await server.stop_async()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


class AsgiServerProcess:
    """An ASGI app served by `AsgiServer` in a child process (spawned: nothing is inherited but the arguments).

    `factory(*args)` builds the app in the child; both must be picklable (a module-level function). The other
    keyword arguments are `AsgiServer`'s (`host`, `port`, `name`, `lifespan`, `options`, ...; not `sock`).
    """

    def __init__(self, factory: Callable[..., Any], args: tuple[Any, ...] = (), **settings: Any) -> None:
        if "sock" in settings or "on_stop" in settings:
            raise ValueError("AsgiServerProcess binds in the child: pass host and port, not sock or on_stop")
        self.factory = factory
        self.args = args
        self.settings = settings
        self.name: str = settings.get("name", "server")
        self.startup_timeout = float(settings.get("startup_timeout", 60.0))
        self._port = int(settings.get("port", 0))
        self._process: Any = None
        self._stop: Any = None

    @property
    def port(self) -> int:
        """The bound port (the child's choice when started with port 0)."""
        return self._port

    @property
    def is_running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and bool(self._process.is_alive())

    def start(self) -> None:
        """Start the child; return once it accepts connections. `RuntimeError` if it does not within the timeout."""
        if self._process is not None:
            raise RuntimeError(f"the {self.name} process is already running")
        context = multiprocessing.get_context("spawn")
        ready, stop = context.Event(), context.Event()
        port = context.Value("i", 0)
        settings = {**self.settings, "port": self._port}
        process = context.Process(
            target=_serve_child,
            args=(self.factory, self.args, settings, ready, stop, port),
            name=f"agl-{self.name.replace(' ', '-')}",
            daemon=True,
        )
        process.start()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.05):
            if not process.is_alive() or time.monotonic() > deadline:
                stop.set()
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)
                raise RuntimeError(
                    f"the {self.name} process did not start within {self.startup_timeout}s "
                    f"(exit code {process.exitcode})"
                )
        self._port = int(port.value)
        self._process, self._stop = process, stop

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop gracefully; kill it after `timeout` seconds (no-op if not running)."""
        process, stop = self._process, self._stop
        if process is None:
            return
        stop.set()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(5)
        self._process = self._stop = None
