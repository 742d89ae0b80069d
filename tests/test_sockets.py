"""Listening sockets: a taken port is reported so that callers catching OSError or RuntimeError both see it."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from agl.sockets import PortInUseError, bind_listening_socket


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])
    finally:
        holder.close()


def test_port_in_use_is_an_oserror_and_a_runtimeerror(taken_port: int) -> None:
    # Agent Lightning 0.3 raises RuntimeError for a port conflict; code written for it must catch ours too.
    with pytest.raises(RuntimeError, match=f"port {taken_port} on 127.0.0.1 is already in use") as info:
        bind_listening_socket("127.0.0.1", taken_port, what="test server")
    error = info.value
    assert isinstance(error, PortInUseError) and isinstance(error, OSError)
    assert error.errno == errno.EADDRINUSE and error.port == taken_port and error.host == "127.0.0.1"
    with pytest.raises(OSError):
        bind_listening_socket("127.0.0.1", taken_port, what="test server")


def test_free_port_binds(taken_port: int) -> None:
    sock = bind_listening_socket("127.0.0.1", 0, what="test server")
    try:
        assert sock.getsockname()[1] not in (0, taken_port)
    finally:
        sock.close()
