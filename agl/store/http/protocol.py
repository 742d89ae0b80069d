"""uvicorn's httptools protocol, made to send each response with one `send(2)` instead of two.

uvicorn writes a response's head and body with separate transport writes; on small JSON answers the second
system call costs as much as the rest of the request. `CoalescingTransport` holds the head back until the body
arrives and writes both at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "protocol_class"]

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 "


class CoalescingTransport:
    """Wraps a transport: a response head is held until the next write (its body) or until close."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        """Write `data`, prefixed by a held head; hold `data` itself if it is a bare response head."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.endswith(_HEAD_END) and data.startswith(_HEAD_START) and not data.startswith(_CONTINUE):
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        """Flush, then close the underlying transport."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_PROTOCOL: type[asyncio.Protocol] | None = None


def protocol_class() -> type[asyncio.Protocol]:
    """A subclass of uvicorn's `HttpToolsProtocol` whose responses (except to HEAD) go out in one write."""
    global _PROTOCOL
    if _PROTOCOL is None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class _Protocol(HttpToolsProtocol):
            def on_headers_complete(self) -> None:
                super().on_headers_complete()
                cycle = self.cycle
                if cycle is not None and self.scope["method"] != "HEAD":
                    cycle.transport = CoalescingTransport(self.transport)  # type: ignore[assignment]

        _PROTOCOL = _Protocol
    return _PROTOCOL
