"""The store protocol is written once (agl/store/base.py): every implementation and wrapper has its signatures, and
the HTTP routes' request models have exactly its parameters.

A failure here names the class, the method and what differs from `LightningStore`'s signature.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest

from agl.store.base import LightningStore
from agl.store.client import LightningStoreClient
from agl.store.delegation import PROTOCOL_METHODS
from agl.store.engine import StoreEngine
from agl.store.http.operations import (
    STORE_ROUTES,
    parameter_types,
)
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.store.sqlite import SqliteLightningStore
from agl.store.threading import LightningStoreThreaded
from agl.types.core import EnqueueRolloutRequest

IMPLEMENTATIONS: tuple[type[LightningStore], ...] = (
    StoreEngine,
    InMemoryLightningStore,
    SqliteLightningStore,
    LightningStoreClient,
    LightningStoreServer,
    LightningStoreThreaded,
)

NARROWED_RETURNS = {("SqliteLightningStore", "statistics")}
"""Methods whose return type is a subtype of the protocol's (SQLite's statistics add keys to the TypedDict)."""

LOCAL_ONLY = {
    "enqueue_rollout": "sent on the enqueue route as a batch of one",
    "dequeue_rollout": "sent on the dequeue route with limit 1",
    "add_span_json": "the server's side of POST /spans",
    "add_otel_span": "converted to a span by the caller, then sent as add_span",
    "run_health_checks": "run by the server itself on a timer",
    "close": "releases what the local object holds",
}
"""Protocol methods with no route of their own, and why."""


def _hints(function: Any) -> dict[str, Any]:
    return typing.get_type_hints(function, include_extras=True)


def signature_drift(cls: type[LightningStore], name: str) -> list[str]:
    """How `cls.<name>` differs from `LightningStore.<name>`: parameter names, kinds, defaults and annotations."""
    expected_function = getattr(LightningStore, name)
    actual_function = getattr(cls, name)
    expected = inspect.signature(expected_function)
    actual = inspect.signature(actual_function)
    problems: list[str] = []
    expected_params = list(expected.parameters.values())
    actual_params = list(actual.parameters.values())
    if [p.name for p in actual_params] != [p.name for p in expected_params]:
        problems.append(f"parameters {[p.name for p in actual_params]} != {[p.name for p in expected_params]}")
        return problems
    expected_hints = _hints(expected_function)
    actual_hints = _hints(inspect.unwrap(actual_function))
    for want, have in zip(expected_params, actual_params, strict=True):
        if have.kind != want.kind:
            problems.append(f"{want.name}: kind {have.kind.description} != {want.kind.description}")
        if have.default is not want.default and have.default != want.default:
            problems.append(f"{want.name}: default {have.default!r} != {want.default!r}")
        if want.name != "self" and actual_hints.get(want.name) != expected_hints.get(want.name):
            problems.append(f"{want.name}: annotation {actual_hints.get(want.name)} != {expected_hints.get(want.name)}")
    if (cls.__name__, name) not in NARROWED_RETURNS and actual_hints.get("return") != expected_hints.get("return"):
        problems.append(f"return {actual_hints.get('return')} != {expected_hints.get('return')}")
    return problems


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_every_implementation_has_the_protocol_signatures(cls: type[LightningStore]) -> None:
    drift = {name: signature_drift(cls, name) for name in PROTOCOL_METHODS}
    assert not {name: problems for name, problems in drift.items() if problems}, f"{cls.__name__} drifted"


def test_the_drift_check_notices_a_changed_parameter() -> None:
    """The check above fails for a wrapper whose signature differs from the protocol's in any one way."""

    class Renamed(LightningStore):
        async def get_worker_by_id(self, worker: str) -> Any:  # type: ignore[override]
            return None

    class NewDefault(LightningStore):
        async def query_workers(self, *, limit: int = 10, **rest: Any) -> Any:  # type: ignore[override]
            return None

    class OtherDefault(LightningStore):
        async def query_attempts(  # type: ignore[override]
            self,
            rollout_id: str,
            *,
            sort_by: str | None = None,
            sort_order: typing.Literal["asc", "desc"] = "asc",
            limit: int = -1,
            offset: int = 0,
        ) -> Any:
            return None

    class OtherType(LightningStore):
        async def get_worker_by_id(self, worker_id: int) -> Any:  # type: ignore[override]
            return None

    class OtherKind(LightningStore):
        async def dequeue_many_rollouts(self, limit: int = 1, worker_id: str | None = None) -> Any:  # type: ignore[override]
            return None

    assert signature_drift(Renamed, "get_worker_by_id")
    assert signature_drift(NewDefault, "query_workers")
    assert any("sort_by: default" in p for p in signature_drift(OtherDefault, "query_attempts"))
    assert any("annotation" in p for p in signature_drift(OtherType, "get_worker_by_id"))
    assert any("kind" in p for p in signature_drift(OtherKind, "dequeue_many_rollouts"))
    assert not signature_drift(StoreEngine, "query_attempts")


def test_every_protocol_method_has_a_route_or_a_reason() -> None:
    routed = {route.store_method for route in STORE_ROUTES}
    assert routed <= set(PROTOCOL_METHODS)
    assert set(PROTOCOL_METHODS) == routed | set(LOCAL_ONLY), "a new protocol method needs a route (or a reason)"
    assert not routed & set(LOCAL_ONLY)


def test_enqueue_request_items_are_enqueue_rollouts_parameters() -> None:
    """A batch enqueue's item (EnqueueRolloutRequest) has `enqueue_rollout`'s parameters, types and defaults."""
    signature = inspect.signature(LightningStore.enqueue_rollout)
    hints = parameter_types("enqueue_rollout")
    fields = EnqueueRolloutRequest.model_fields
    assert list(fields) == [name for name in signature.parameters if name != "self"]
    for name, field in fields.items():
        default = signature.parameters[name].default
        assert field.is_required() == (default is inspect.Parameter.empty), name
        if default is not inspect.Parameter.empty:
            assert field.get_default() == default, name
        assert field.annotation == _strip(hints[name]), name


def _strip(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
