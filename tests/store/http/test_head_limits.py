"""Limits on what arrives before the app answers: header size and count (431), URL length (414), and the time to
receive a head or a body (408). Raw sockets against a real server on 127.0.0.1, so nothing in a client library hides them."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from agl.store.http.limits import RequestLimits
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer

BODY_TIMEOUT = 0.5
HEAD_TIMEOUT = 0.8
LIMITS = RequestLimits(
    max_header_bytes=4096,
    max_header_count=20,
    max_url_bytes=1024,
    body_timeout_seconds=BODY_TIMEOUT,
    head_timeout_seconds=HEAD_TIMEOUT,
)


@pytest.fixture
def limited() -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, limits=LIMITS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def defaults() -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """(status, whole answer) of one answer read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before an answer: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def _closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within 2 s) after its answer."""
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _answer(sock: socket.socket) -> tuple[int, bytes, bool]:
    """(status, whole answer, whether the server then closed the connection) of one answer read from `sock`."""
    status, answer = _read_answer(sock)
    return status, answer, _closed(sock)


def _exchange(port: int, raw: bytes, see_close: bool = True) -> tuple[int, bytes, bool, float]:
    """Send `raw` on a new connection: (status, answer, closed after it, seconds until the answer arrived).

    `see_close=False` skips the wait for the server to close (2 s on a kept-alive connection) for callers that do not
    look at it; "closed" is then False.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        start = time.perf_counter()
        sock.sendall(raw)
        status, answer = _read_answer(sock)
        seconds = time.perf_counter() - start
        return status, answer, _closed(sock) if see_close else False, seconds


def _get(path: str, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n{lines}\r\n".encode()


def _healthy(port: int) -> bool:
    status, _, _, _ = _exchange(port, _get("/v1/agl/health", {}), see_close=False)
    return status == 200


def test_the_limits_are_checked_when_made() -> None:
    for bad in (
        {"max_header_bytes": 0},
        {"max_header_count": -1},
        {"body_timeout_seconds": 0},
        {"head_timeout_seconds": -1},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RequestLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="body_timeout_seconds"):
        RequestLimits(body_timeout_seconds=float("inf"))


def test_headers_over_the_size_limit_are_431_and_close(limited: LightningStoreServer) -> None:
    status, answer, closed, _ = _exchange(limited.port, _get("/v1/agl/statistics", {"x-big": "v" * 5000}))
    assert status == 431 and b"max_header_bytes" in answer and closed
    # Just within: the same request with a smaller header is served.
    status, _, _, _ = _exchange(limited.port, _get("/v1/agl/statistics", {"x-big": "v" * 3000}), see_close=False)
    assert status == 200
    assert _healthy(limited.port)


def test_too_many_headers_are_431(limited: LightningStoreServer) -> None:
    many = {f"x-h{i}": "1" for i in range(20)}  # 21 lines with host
    status, answer, closed, _ = _exchange(limited.port, _get("/v1/agl/statistics", many))
    assert status == 431 and b"max_header_count" in answer and closed
    status, _, _, _ = _exchange(
        limited.port, _get("/v1/agl/statistics", {f"x-h{i}": "1" for i in range(19)}), see_close=False
    )
    assert status == 200


def test_a_post_with_a_huge_header_is_refused_before_its_body(limited: LightningStoreServer) -> None:
    """The declared body is never read: the answer comes from the head, and the connection closes."""
    head = (
        "POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n"
        f"x-big: {'v' * 5000}\r\n\r\n"
    ).encode()
    status, _, closed, seconds = _exchange(limited.port, head)
    assert status == 431 and closed and seconds < 1


def test_a_one_mib_header_is_431_within_a_second(defaults: LightningStoreServer) -> None:
    """The issue's figure, with the default limits (64 KiB of headers)."""
    status, answer, closed, seconds = _exchange(defaults.port, _get("/v1/agl/statistics", {"x-big": "v" * 2**20}))
    assert status == 431 and closed, answer[:300]
    assert seconds <= 1.0
    assert _healthy(defaults.port)


def test_a_long_url_is_414(limited: LightningStoreServer) -> None:
    status, answer, _, _ = _exchange(
        limited.port, _get("/v1/agl/rollouts?rollout_id_contains=" + "x" * 1100, {}), see_close=False
    )
    assert status == 414 and b"max_url_bytes" in answer
    # A request line growing past the most a head may hold is refused before it ends: 414 and close.
    huge = _get("/v1/agl/rollouts?rollout_id_contains=" + "x" * 2**20, {})
    status, answer, closed, seconds = _exchange(limited.port, huge)
    assert status == 414 and b"shorter URL" in answer and closed and seconds <= 1.0
    assert _healthy(limited.port)


def test_a_stalled_body_is_cut_off_with_408(limited: LightningStoreServer) -> None:
    head = b"POST /v1/agl/rollouts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    status, answer, closed, seconds = _exchange(limited.port, head + b'{"input": ')
    assert status == 408 and b"body_timeout_seconds" in answer and closed
    assert BODY_TIMEOUT <= seconds < BODY_TIMEOUT + 1.5
    assert _healthy(limited.port)


def test_a_stalled_head_is_cut_off_with_408(limited: LightningStoreServer) -> None:
    """Slowloris: half a head, then nothing. The connection is answered 408 and closed at the head timeout."""
    status, answer, closed, seconds = _exchange(limited.port, b"GET /v1/agl/statistics HTTP/1.1\r\nhost: x\r\n")
    assert status == 408 and b"head_timeout_seconds" in answer and closed
    assert HEAD_TIMEOUT - 0.05 <= seconds < HEAD_TIMEOUT + 1.5
    assert _healthy(limited.port)


def test_a_head_larger_than_the_limits_allow_is_431_before_it_ends(limited: LightningStoreServer) -> None:
    """A header still growing past what the URL and header limits allow is refused without waiting for its end."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/agl/statistics HTTP/1.1\r\nx-big: " + b"v" * (LIMITS.max_head_bytes + 1))
        status, answer, closed = _answer(sock)
    assert status == 431 and closed, answer[:300]
    assert _healthy(limited.port)


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_seconds() -> None:
    limits = RequestLimits(keep_alive_seconds=0.5, head_timeout_seconds=30)
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, limits=limits)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_get("/v1/agl/health", {}))
            status, _ = _read_answer(sock)
            started = time.perf_counter()
            sock.settimeout(5)
            assert status == 200 and sock.recv(1) == b""  # closed by the server, not by the 5 s wait
            assert 0.4 <= time.perf_counter() - started < 2.5
    finally:
        server.stop()


def test_a_body_that_arrives_in_time_is_served(limited: LightningStoreServer) -> None:
    body = b'{"input": 1}'
    head = b"POST /v1/agl/rollouts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(head % len(body) + body[:5])
        time.sleep(BODY_TIMEOUT / 3)
        sock.sendall(body[5:])
        status, _, closed = _answer(sock)
    assert status == 201 and not closed


def test_without_the_token_a_stalled_body_is_401_at_once() -> None:
    """Auth is decided from the head: the body timeout never starts for a request without the token."""
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, limits=LIMITS, token="t0k")
    server.start()
    try:
        head = b"POST /v1/agl/rollouts HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
        status, _, _, seconds = _exchange(server.port, head)
        assert status == 401 and seconds < BODY_TIMEOUT
    finally:
        server.stop()


def test_agl_store_flags_set_the_head_limits() -> None:
    from agl.cli.store import build_parser
    from agl.cli.store_limits import limits_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["--max-header-bytes", "8KiB", "--max-headers", "30", "--body-timeout", "2.5", "--head-timeout", "7"]
    )
    _, limits = limits_from_args(parser, args)
    assert (limits.max_header_bytes, limits.max_header_count, limits.body_timeout_seconds) == (8192, 30, 2.5)
    assert limits.head_timeout_seconds == 7
    args = parser.parse_args(["--keep-alive", "3", "--limit-concurrency", "50"])
    assert limits_from_args(parser, args)[1].keep_alive_seconds == 3 and args.limit_concurrency == 50
    defaults = limits_from_args(parser, parser.parse_args([]))[1]
    assert defaults == RequestLimits()
