"""What uvicorn's connections lack: limits on a request head (the time to receive it, its size), eager accept, and
one write per answer.

uvicorn (httptools or h11) reads a request head for as long as the client keeps sending it: a client that trickles
a header a byte at a time, or connects and sends nothing, holds its connection indefinitely (slowloris), and a huge
header costs the parser time that grows with the square of its size before any app sees it. `HeadGuard` closes both
gaps through uvicorn's public `Config(http=...)` option: its protocol wraps uvicorn's own (composition: every event
is passed through unchanged) and watches the bytes of each request head, and an ASGI middleware tells it when the
app has received a request (its head is complete) and when the answer is done (the next bytes start a new head).

Eager accept: libuv (under uvloop) accepts one connection per turn of the event loop, so a busy server, whose turns
take tens of milliseconds, takes a burst of new connections (1 000 runners starting) at a few dozen per second while
the rest wait in the listening socket's backlog. Given the `listener`, each connection the loop accepts also
accepts every other connection already waiting (`socket.accept` and `loop.connect_accepted_socket`).

One write per answer: uvicorn writes an answer's head and body separately, and uvloop sends each at once; the
connection's transport is wrapped so that head and body leave in one system call.

A head not complete `timeout` seconds after its first byte (or after the connection opened) is answered 408 and
the connection closed; one that grows past `max_bytes` without ending is answered 431 (414 while still on the
request line) and closed. Deadlines are kept in a dict and checked by one timer per server every `tick` seconds, so
a request costs no timer of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

__all__ = ["HeadGuard"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEAD_END = b"\r\n\r\n"
_ACCEPT_BURST = 512
"""Most connections taken from the backlog at once, beside the one the loop accepted."""

# What a connection is doing, as far as the guard is concerned.
_IDLE = 0  # between requests: uvicorn's keep-alive timer watches it
_HEAD = 1  # receiving a request head: deadline armed, bytes counted
_REQUEST = 2  # the head is complete: the app has the request
_CLOSED = 3


def _answer(status: int, reason: str, error_type: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail, "error_type": error_type}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HeadGuard:
    """Cuts off connections whose request head takes over `timeout` seconds to arrive or grows past `max_bytes`.

    Either limit may be None (not enforced). With `listener` (the socket uvicorn serves), waiting connections are
    accepted eagerly (see the module docstring). Serve with
    `uvicorn.Config(guard.app(app), http=guard.protocol(uvicorn_protocol_class), ...)`, one guard per server.
    `tick` (default: a quarter of `timeout`, at most 1 s) is how late after its deadline a head is cut off.
    """

    def __init__(
        self,
        timeout: float | None,
        max_bytes: int | None,
        tick: float | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        if timeout is not None and not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes!r}")
        self.timeout = timeout
        self.max_bytes = max_bytes if max_bytes is not None else 2**62
        self.listener = listener
        self.tick = tick if tick is not None else min(1.0, (timeout or 4.0) / 4)
        self._connections: dict[Any, _GuardedConnection] = {}
        self._deadlines: dict[_GuardedConnection, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._adopting: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        self._timeout_answer = _answer(
            408,
            "Request Timeout",
            "RequestTimeout",
            f"The request head did not arrive within {timeout or 0:g} s (head_timeout_seconds): send the whole head "
            "at once",
        )
        self._size_answer = _answer(
            431,
            "Request Header Fields Too Large",
            "RequestHeaderFieldsTooLarge",
            f"The request head is larger than {self.max_bytes} bytes (request line and headers): send fewer or "
            "shorter headers",
        )
        self._url_answer = _answer(
            414,
            "URI Too Long",
            "URITooLong",
            f"The request line is longer than {self.max_bytes} bytes: send a shorter URL (put large queries in a body)",
        )

    def protocol(self, inner: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """A protocol class for `uvicorn.Config(http=...)` that runs `inner` (uvicorn's) under this guard."""
        return type("GuardedConnection", (_GuardedConnection,), {"guard": self, "inner_class": inner})

    def app(self, app: AsgiApp) -> AsgiApp:
        """`app` wrapped so the guard learns when each request's head is complete and its answer done."""
        connections = self._connections

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            # Lifespan scopes have no "client"; neither do connections the guard does not watch (Unix sockets).
            connection = connections.get(scope.get("client"))
            if connection is None:
                await app(scope, receive, send)
                return
            if connection._state == _HEAD:  # the head ended in a way the byte scan did not see (e.g. pipelined)
                connection.request_started()
            try:
                await app(scope, receive, send)
            finally:
                if connection._state == _REQUEST:  # answered: the next bytes begin a new head
                    connection._state = _IDLE

        return guarded

    @property
    def open_connections(self) -> int:
        """Connections being watched."""
        return len(self._connections)

    # -- eager accept ------------------------------------------------------------------------------------------

    def _accept_waiting(self, make: Callable[[], asyncio.Protocol], loop: asyncio.AbstractEventLoop) -> None:
        listener = self.listener
        assert listener is not None
        for _ in range(_ACCEPT_BURST):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing more waiting: the usual case, one system call
            except OSError as exc:  # out of file descriptors and the like: the loop's own accept retries later
                logger.debug("accepting a waiting connection failed: %r", exc)
                return
            sock.setblocking(False)
            task = loop.create_task(self._adopt(sock, make, loop))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(
        self, sock: socket.socket, make: Callable[[], asyncio.Protocol], loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            await loop.connect_accepted_socket(make, sock)
        except Exception as exc:  # the client left already
            logger.debug("serving an accepted connection failed: %r", exc)
            sock.close()

    # -- deadlines ---------------------------------------------------------------------------------------------

    def _arm(self, connection: _GuardedConnection, loop: asyncio.AbstractEventLoop) -> None:
        if self.timeout is None:
            return
        self._deadlines[connection] = loop.time() + self.timeout
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._check, loop)

    def _disarm(self, connection: _GuardedConnection) -> None:
        self._deadlines.pop(connection, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        late = [connection for connection, deadline in self._deadlines.items() if deadline <= now]
        for connection in late:
            connection.refuse(self._timeout_answer)
        if self._deadlines:
            self._timer = loop.call_later(self.tick, self._check, loop)


class _CoalescingTransport:
    """A transport that sends an answer's head and body with one system call.

    uvicorn writes an answer's head and its body with two `write` calls, and uvloop sends each at once: two system
    calls, each waking the client. Here a write is held until the next one (the body), and both leave together
    (`writelines`: one `writev`) at once; a write that nothing follows in the same loop turn leaves at the turn's
    end (`call_soon`). Everything else is the wrapped transport's.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        pending = self._pending
        if not pending:
            self._pending = [data]
            self._loop.call_soon(self._flush)  # a head alone (no body follows in this turn) still leaves this turn
            return
        pending.append(data)
        self._flush()  # head and body: the answer is complete, send it now rather than at the end of the turn

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(len(chunk) for chunk in self._pending)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _GuardedConnection(asyncio.Protocol):
    """One connection: uvicorn's protocol (`inner_class`) doing the HTTP, with `guard` watching its heads."""

    guard: ClassVar[HeadGuard]
    inner_class: ClassVar[type[asyncio.Protocol]]

    def __init__(self, **settings: Any) -> None:
        # uvicorn builds its protocol with keyword arguments (config, server_state, app_state, _loop): passed on.
        self._inner = self.inner_class(**settings)
        self._settings = settings
        self._state = _HEAD
        self._head_bytes = 0
        self._line_ended = False
        self._tail = b""
        self._key: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = _CoalescingTransport(transport, self._loop)
        peer = transport.get_extra_info("peername")
        # The key uvicorn puts in the ASGI scope as "client" for this connection (host, port).
        if isinstance(peer, (tuple, list)) and len(peer) >= 2:
            self._key = (str(peer[0]), int(peer[1]))
            self.guard._connections[self._key] = self
        self.guard._arm(self, self._loop)
        self._inner.connection_made(self._transport)
        if self.guard.listener is not None:
            self.guard._accept_waiting(self._another, self._loop)

    def _another(self) -> asyncio.Protocol:
        """A protocol for another connection of the same server, made as uvicorn made this one."""
        return type(self)(**self._settings)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self.guard._disarm(self)
        if self._key is not None and self.guard._connections.get(self._key) is self:
            del self.guard._connections[self._key]
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _IDLE:
            if _HEAD_END in data:  # a whole head at once, the usual case: nothing to time
                self._state = _REQUEST
                self._inner.data_received(data)
                return
            state = self._state = _HEAD
            self._head_bytes = 0
            self._line_ended = False
            self._tail = b""
            assert self._loop is not None
            self.guard._arm(self, self._loop)
        if state == _HEAD and not self._head_ends(data):
            self._head_bytes += len(data)
            self._line_ended = self._line_ended or b"\n" in data
            if self._head_bytes > self.guard.max_bytes:
                self.refuse(self.guard._size_answer if self._line_ended else self.guard._url_answer)
                return
        if self._state != _CLOSED:
            self._inner.data_received(data)

    def _head_ends(self, data: bytes) -> bool:
        """Whether `data` (after the bytes seen so far) ends the head; if so the deadline is lifted."""
        if _HEAD_END in data or (self._tail and _HEAD_END in self._tail + data[:3]):
            self._state = _REQUEST
            self.guard._disarm(self)
            return True
        self._tail = (self._tail + data)[-3:]
        return False

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- told by the guard's middleware ------------------------------------------------------------------------

    def request_started(self) -> None:
        """The app has received a request: its head is complete."""
        if self._state != _CLOSED:
            self._state = _REQUEST
            self.guard._disarm(self)

    def refuse(self, answer: bytes) -> None:
        """Answer `answer` and close the connection (the head took too long or grew too large)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self.guard._disarm(self)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            logger.debug("closing a connection from %s: %s", self._key, answer.split(b"\r\n", 1)[0].decode())
            transport.write(answer)
            transport.close()
