"""Start, stop, restart and port conflicts of the store server; the client riding out a restart."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import threading

import pytest

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer, PortInUseError


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_port_in_use_names_port_and_holder() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=port)
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use") as info:
            server.start()
        assert info.value.port == port
        assert f"pid {os.getpid()}" in str(info.value)
        assert not server.is_running
    finally:
        holder.close()


async def test_stop_releases_port_and_thread() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0)
    server.start()
    port = server.port
    assert server.is_running and not _port_is_free(port)
    threads_before = {t.name for t in threading.enumerate()}
    assert f"agl-store-server-{port}" in threads_before
    server.stop()
    assert not server.is_running
    assert f"agl-store-server-{port}" not in {t.name for t in threading.enumerate()}
    assert _port_is_free(port)


async def test_async_start_stop_on_the_running_loop() -> None:
    store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, port=0)
    await server.start_async()
    client = LightningStoreClient(server.endpoint)
    try:
        rollout = await client.enqueue_rollout({"q": 1})
        # The server is a LightningStore too, delegating to the wrapped store.
        assert (await server.get_rollout_by_id(rollout.rollout_id)) is not None
        assert server.capabilities == {"thread_safe": True, "async_safe": True, "zero_copy": True, "otlp_traces": True}
        assert server.otlp_traces_endpoint() == f"http://127.0.0.1:{server.port}/v1/traces"
    finally:
        await client.close()
        await server.stop_async()
    assert not server.is_running


async def test_client_recovers_from_a_server_restart() -> None:
    store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, port=0)
    server.start()
    client = LightningStoreClient(server.endpoint, retry_delays=(0.3, 0.5, 1.0), health_retry_delays=(0.1, 0.2))
    restarter: threading.Thread | None = None
    try:
        first = await client.enqueue_rollout({"n": 1})
        server.stop()

        def restart_later() -> None:
            threading.Event().wait(0.4)
            server.start()

        restarter = threading.Thread(target=restart_later)
        restarter.start()
        # Issued while the server is down: retried until it is back, and not duplicated.
        second = await client.enqueue_rollout({"n": 2})
        restarter.join()
        page = await client.query_rollouts()
        assert [r.rollout_id for r in page] == [first.rollout_id, second.rollout_id]
    finally:
        if restarter is not None:
            restarter.join()
        await client.close()
        server.stop()


async def test_client_gives_up_with_a_clear_error_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=(0.01,), health_retry_delays=())
    try:
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            await client.statistics()
    finally:
        await client.close()


async def test_client_pickles_and_works_from_another_loop_and_thread(client: LightningStoreClient) -> None:
    rollout = await client.enqueue_rollout({"q": 1})
    copy = pickle.loads(pickle.dumps(client))
    assert copy.server_address == client.server_address

    def in_thread() -> str | None:
        async def use() -> str | None:
            found = await copy.get_rollout_by_id(rollout.rollout_id)
            await copy.close()
            return found.rollout_id if found else None

        return asyncio.run(use())

    assert await asyncio.to_thread(in_thread) == rollout.rollout_id


def test_one_client_on_successive_loops_of_one_thread(server: LightningStoreServer) -> None:
    """Each `asyncio.run` gets a pool of its own: a pool whose loop has ended is never used again."""
    client = LightningStoreClient(server.endpoint, retry_delays=(), health_retry_delays=())

    async def enqueue() -> str:
        return (await client.enqueue_rollout({"q": 1})).rollout_id

    first, second = asyncio.run(enqueue()), asyncio.run(enqueue())
    assert first != second

    async def close() -> None:
        await client.close()

    asyncio.run(close())
