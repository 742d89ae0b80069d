"""Listening sockets for AGL's servers (store, model server, LLM proxy): bind a port, or say who holds it."""

from __future__ import annotations

import errno
import socket

__all__ = ["PortInUseError", "bind_listening_socket", "port_holder"]


class PortInUseError(OSError, RuntimeError):
    """A server's port is already taken; the message names the port and, when the OS tells, the holding process.

    Both an `OSError` (errno `EADDRINUSE`, as a failed bind is) and a `RuntimeError` (what Agent Lightning 0.3
    raises for a port conflict), so callers written for either catch it.
    """

    def __init__(self, what: str, host: str, port: int, holder: str | None) -> None:
        self.host = host
        self.port = port
        self.holder = holder
        who = f" by {holder}" if holder else ""
        super().__init__(errno.EADDRINUSE, f"Cannot start the {what}: port {port} on {host} is already in use{who}")


def port_holder(port: int) -> str | None:
    """`pid N (name)` of the process listening on `port`, when psutil may see it."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except Exception:  # no permission to see other users' sockets
        return None
    return None


def bind_listening_socket(host: str, port: int, *, what: str, backlog: int = 2048) -> socket.socket:
    """A non-blocking socket listening on exactly `host:port` (0 picks a free port).

    Raises `PortInUseError` naming the port (and its holder) when it is taken, OSError naming `what` otherwise.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(what, host, port, port_holder(port)) from None
            raise OSError(exc.errno, f"Cannot bind the {what} to {host}:{port}: {exc.strerror}") from None
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
