"""Typed errors end to end: one table maps store error classes to statuses and back; the client re-raises them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from agl.store.client import LightningStoreClient
from agl.store.errors import NotFoundError, StaleAttemptError, StoreFullError
from agl.store.http.app import error_response
from agl.store.http.wire import (
    ERROR_TABLE,
    NotFoundHTTPError,
    StoreAuthError,
    StoreNotImplementedError,
    StoreRequestError,
    StoreServerError,
    StoreUnavailableError,
    kind_of_answer,
    kind_of_exception,
)
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types.core import Rollout


def test_every_row_round_trips_through_an_answer() -> None:
    samples: list[BaseException] = [
        StaleAttemptError("ro-1", "at-1", "succeeded", "at-2"),
        NotFoundError("attempt", "at-9", "ro-1"),
        StoreFullError("no room"),
        ValueError("bad value"),
        NotImplementedError("not here"),
    ]
    for exc in samples:
        kind = kind_of_exception(exc)
        assert kind is not None and kind in ERROR_TABLE
        answer = error_response(exc)  # type: ignore[arg-type]
        assert answer.status == kind.status
        body = orjson.loads(answer.body)
        assert body["error_type"] == kind.code and body["detail"] == str(exc)
        back = kind_of_answer(answer.status, body)
        assert back is kind
        raised = kind.client_class(answer.status, body["detail"], "POST", "http://x", body)
        assert isinstance(raised, kind.store_class) and str(raised) == str(exc)
        for name in kind.fields:
            assert getattr(raised, name) == getattr(exc, name)
    assert kind_of_exception(RuntimeError("boom")) is None
    assert error_response(RuntimeError("boom")).status == 500


def test_a_code_that_disagrees_with_the_status_is_not_trusted() -> None:
    assert kind_of_answer(500, {"error_type": "NotFoundError"}) is None
    assert kind_of_answer(404, {"detail": "Not Found", "error_type": "NotFound"}) is None  # an unknown route
    assert kind_of_answer(404, {"detail": "Not Found"}) is None


class _FaultyStore(InMemoryLightningStore):
    """A real in-memory store whose getters fail like a broken backend (to see the client raise, not answer None)."""

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        raise RuntimeError("disk on fire")


@pytest.fixture
def faulty_server() -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(_FaultyStore(thread_safe=True), port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def quick_client(server: LightningStoreServer) -> AsyncIterator[LightningStoreClient]:
    client = LightningStoreClient(server.endpoint, retry_delays=(), health_retry_delays=())
    try:
        yield client
    finally:
        await client.close()


async def test_unknown_ids_raise_not_found_with_its_fields(quick_client: LightningStoreClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await quick_client.update_rollout("ro-nope", status="failed")
    error = info.value
    assert isinstance(error, NotFoundHTTPError) and isinstance(error, StoreRequestError)
    assert (error.status, error.kind, error.id, error.rollout_id) == (404, "rollout", "ro-nope", None)
    rollout = await quick_client.start_rollout({"q": 1})  # it has an attempt, just not this one
    with pytest.raises(NotFoundError) as attempt_info:
        await quick_client.update_attempt(rollout.rollout_id, "at-nope", status="failed")
    assert (attempt_info.value.kind, attempt_info.value.id) == ("attempt", "at-nope")
    assert attempt_info.value.rollout_id == rollout.rollout_id


async def test_stale_attempt_comes_back_as_its_class(quick_client: LightningStoreClient) -> None:
    await quick_client.enqueue_rollout({"q": 1})
    claimed = await quick_client.dequeue_rollout()
    assert claimed is not None
    await quick_client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    with pytest.raises(StaleAttemptError) as info:
        await quick_client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="running")
    assert (info.value.rollout_id, info.value.attempt_id) == (claimed.rollout_id, claimed.attempt.attempt_id)
    assert info.value.rollout_status == "succeeded"


async def test_getters_answer_none_only_for_unknown_ids(quick_client: LightningStoreClient) -> None:
    assert await quick_client.get_rollout_by_id("ro-nope") is None
    assert await quick_client.get_latest_attempt("ro-nope") is None
    assert await quick_client.get_resources_by_id("rs-nope") is None
    assert await quick_client.get_latest_resources() is None
    assert await quick_client.get_worker_by_id("w-nope") is None


async def test_getters_raise_on_a_server_fault(faulty_server: LightningStoreServer) -> None:
    client = LightningStoreClient(faulty_server.endpoint, retry_delays=(), health_retry_delays=())
    try:
        with pytest.raises(StoreServerError, match="disk on fire") as info:
            await client.get_rollout_by_id("ro-1")
        assert info.value.status == 500
    finally:
        await client.close()


async def test_getters_raise_on_auth_failure() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, token="s3cret")
    server.start()
    client = LightningStoreClient(server.endpoint, token="wrong", retry_delays=())
    try:
        for call in (
            client.get_rollout_by_id("ro-1"),
            client.get_latest_attempt("ro-1"),
            client.get_resources_by_id("rs-1"),
            client.get_latest_resources(),
            client.get_worker_by_id("w-1"),
        ):
            with pytest.raises(StoreAuthError):
                await call
    finally:
        await client.close()
        server.stop()


async def test_getters_raise_when_the_server_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=(), health_retry_delays=())
    try:
        with pytest.raises(StoreUnavailableError):
            await client.get_rollout_by_id("ro-1")
        with pytest.raises(StoreUnavailableError):
            await client.get_latest_resources()
    finally:
        await client.close()


async def test_answers_carry_error_type_and_501_is_not_retried(server: LightningStoreServer) -> None:
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        unknown = await http.get(f"{base}/rollouts/ro-nope")
        assert unknown.status_code == 404
        assert unknown.json() == {
            "detail": "Rollout ro-nope not found",
            "error_type": "NotFoundError",
            "kind": "rollout",
            "id": "ro-nope",
            "rollout_id": None,
        }
        route = await http.get(f"{base}/no/such/route")
        assert route.status_code == 404 and route.json()["error_type"] == "NotFound"
        invalid = await http.post(f"{base}/rollouts", json={"mode": "train"})
        assert invalid.status_code == 422 and invalid.json()["error_type"] == "RequestValidationError"
    row = next(kind for kind in ERROR_TABLE if kind.status == 501)
    assert row.client_class is StoreNotImplementedError and not row.retry
