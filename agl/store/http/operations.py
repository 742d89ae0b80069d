"""The store's HTTP operations, written once: one row per route, naming the `LightningStore` method it stands for.

`LightningStore`'s method signatures (agl/store/base.py) are the only place the store's parameters are written. From
them and the rows of `STORE_ROUTES` come the request models the app validates bodies and query strings with (one
field per parameter the route does not carry in its path), the app's store routes, the OpenAPI document's store
operations and the client's paths. A parameter added to a method appears on the wire without being written here.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from agl.store.base import LightningStore
from agl.store.http.limits import INT64_MAX
from agl.types.core import UNSET, Attempt, AttemptedRollout, Rollout, Worker
from agl.types.resources import ResourcesUpdate
from agl.types.tracer import Span

__all__ = [
    "STORE_ROUTES",
    "Answer",
    "SequenceId",
    "SequenceIds",
    "StoreRoute",
    "list_fields",
    "optional_parameters",
    "parameter_types",
    "path_parameters",
    "request_model",
    "route_of",
    "wire_parameters",
]


@dataclass(frozen=True)
class Answer:
    """A success answer: its status and what the body holds.

    `kind` is `one` (the type itself), `list` (a JSON array of it), `page` (`items` of it plus `limit`, `offset`,
    `total`), `nullable` (the type or null) or `object` (a JSON object described only in prose).
    """

    status: int
    kind: str
    type: Any = None
    also: tuple[Any, ...] = ()
    """Other shapes the same status may carry (e.g. the minimal answers asked for with `Prefer: return=minimal`)."""


class SequenceId(BaseModel):
    """Answer of `POST /spans/next`: the sequence id reserved."""

    sequence_id: int


class SequenceIds(BaseModel):
    """Answer of `POST /spans/next/batch`: one sequence id per pair asked for, in order."""

    sequence_ids: list[int]


Carries = Literal["body", "query", "raw", "path"]


@dataclass(frozen=True)
class StoreRoute:
    """One store route: the HTTP method and path, the store method it calls, and how its arguments travel.

    `carries` says where the parameters not in the path go: `body` (a JSON object, one field per parameter),
    `query` (the query string, one parameter each), `raw` (the body is the method's one remaining parameter itself,
    e.g. a span) or `path` (nowhere: every parameter is in the path).
    """

    http_method: str
    path: str
    store_method: str
    summary: str
    answer: Answer
    carries: Carries
    body_required: bool = True
    writes: bool = False
    """Changes state: takes an `Idempotency-Key`, may answer 409 and reads a body (413/415)."""
    prefer_minimal: bool = False
    not_found: bool = False
    """May answer 404: an id it names (in the path or the body) is unknown."""
    tags: tuple[str, ...] = field(default=())


def _page(item: Any) -> Answer:
    return Answer(200, "page", item)


STORE_ROUTES: tuple[StoreRoute, ...] = (
    StoreRoute(
        "POST",
        "/queues/rollouts/enqueue",
        "enqueue_many_rollouts",
        "Enqueue rollouts",
        Answer(201, "list", Rollout),
        "body",
        writes=True,
        tags=("rollouts",),
    ),
    StoreRoute(
        "POST",
        "/queues/rollouts/dequeue",
        "dequeue_many_rollouts",
        "Claim up to `limit` queued rollouts, each with a new attempt",
        Answer(200, "list", AttemptedRollout),
        "body",
        body_required=False,
        writes=True,
        tags=("rollouts",),
    ),
    StoreRoute(
        "POST",
        "/rollouts",
        "start_rollout",
        "Start a rollout with its first attempt running",
        Answer(201, "one", AttemptedRollout),
        "body",
        writes=True,
        tags=("rollouts",),
    ),
    StoreRoute("GET", "/rollouts", "query_rollouts", "Query rollouts", _page(Rollout), "query", tags=("rollouts",)),
    StoreRoute(
        "POST",
        "/rollouts/search",
        "query_rollouts",
        "Query rollouts (filters in the body)",
        _page(Rollout),
        "body",
        body_required=False,
        tags=("rollouts",),
    ),
    StoreRoute(
        "GET",
        "/rollouts/{rollout_id}",
        "get_rollout_by_id",
        "One rollout (404 when unknown)",
        Answer(200, "one", Rollout),
        "path",
        not_found=True,
        tags=("rollouts",),
    ),
    StoreRoute(
        "POST",
        "/rollouts/{rollout_id}",
        "update_rollout",
        "Update a rollout's fields",
        Answer(200, "one", Rollout),
        "body",
        writes=True,
        not_found=True,
        tags=("rollouts",),
    ),
    StoreRoute(
        "POST",
        "/rollouts/{rollout_id}/attempts",
        "start_attempt",
        "Start a new attempt of a rollout",
        Answer(201, "one", AttemptedRollout),
        "body",
        body_required=False,
        writes=True,
        not_found=True,
        tags=("attempts",),
    ),
    StoreRoute(
        "POST",
        "/rollouts/{rollout_id}/attempts/search",
        "query_attempts",
        "Query a rollout's attempts (paging in the body)",
        _page(Attempt),
        "body",
        body_required=False,
        tags=("attempts",),
    ),
    StoreRoute(
        "GET",
        "/rollouts/{rollout_id}/attempts",
        "query_attempts",
        "Query a rollout's attempts",
        _page(Attempt),
        "query",
        tags=("attempts",),
    ),
    StoreRoute(
        "GET",
        "/rollouts/{rollout_id}/attempts/latest",
        "get_latest_attempt",
        "A rollout's latest attempt (null when none)",
        Answer(200, "nullable", Attempt),
        "path",
        tags=("attempts",),
    ),
    StoreRoute(
        "POST",
        "/rollouts/{rollout_id}/attempts/{attempt_id}",
        "update_attempt",
        "Update an attempt (status, worker, heartbeat, metadata)",
        Answer(200, "one", Attempt),
        "body",
        writes=True,
        not_found=True,
        tags=("attempts",),
    ),
    StoreRoute(
        "GET",
        "/resources",
        "query_resources",
        "Query resource versions",
        _page(ResourcesUpdate),
        "query",
        tags=("resources",),
    ),
    StoreRoute(
        "POST",
        "/resources",
        "add_resources",
        "Add a resource version (the body maps names to resources)",
        Answer(201, "one", ResourcesUpdate),
        "raw",
        writes=True,
        tags=("resources",),
    ),
    StoreRoute(
        "GET",
        "/resources/latest",
        "get_latest_resources",
        "The latest resource version (null when none)",
        Answer(200, "nullable", ResourcesUpdate),
        "path",
        tags=("resources",),
    ),
    StoreRoute(
        "POST",
        "/resources/{resources_id}",
        "update_resources",
        "Set the resources of a version id",
        Answer(200, "one", ResourcesUpdate),
        "raw",
        writes=True,
        not_found=True,
        tags=("resources",),
    ),
    StoreRoute(
        "GET",
        "/resources/{resources_id}",
        "get_resources_by_id",
        "One resource version (null when unknown)",
        Answer(200, "nullable", ResourcesUpdate),
        "path",
        tags=("resources",),
    ),
    StoreRoute(
        "POST",
        "/spans",
        "add_span",
        "Add a span (null when it was already stored)",
        Answer(201, "nullable", Span, also=(bool,)),
        "raw",
        writes=True,
        prefer_minimal=True,
        not_found=True,
        tags=("spans",),
    ),
    StoreRoute(
        "POST",
        "/spans/batch",
        "add_many_spans",
        "Add spans in one call (the stored ones are answered)",
        Answer(201, "list", Span, also=(list[int],)),
        "body",
        writes=True,
        prefer_minimal=True,
        not_found=True,
        tags=("spans",),
    ),
    StoreRoute("GET", "/spans", "query_spans", "Query a rollout's spans", _page(Span), "query", tags=("spans",)),
    StoreRoute(
        "POST",
        "/spans/search",
        "query_spans",
        "Query a rollout's spans (filters in the body)",
        _page(Span),
        "body",
        tags=("spans",),
    ),
    StoreRoute(
        "POST",
        "/spans/next",
        "get_next_span_sequence_id",
        "Reserve the next span sequence id of an attempt",
        Answer(200, "one", SequenceId),
        "body",
        writes=True,
        not_found=True,
        tags=("spans",),
    ),
    StoreRoute(
        "POST",
        "/spans/next/batch",
        "get_many_span_sequence_ids",
        "Reserve one span sequence id for each (rollout, attempt)",
        Answer(200, "one", SequenceIds),
        "body",
        writes=True,
        not_found=True,
        tags=("spans",),
    ),
    StoreRoute(
        "POST",
        "/waits/rollouts",
        "wait_for_rollouts",
        "Wait up to `timeout` seconds for rollouts to finish; answers the finished ones",
        Answer(200, "list", Rollout),
        "body",
        tags=("rollouts",),
    ),
    StoreRoute("GET", "/workers", "query_workers", "Query workers", _page(Worker), "query", tags=("workers",)),
    StoreRoute(
        "POST",
        "/workers/search",
        "query_workers",
        "Query workers (filters in the body)",
        _page(Worker),
        "body",
        body_required=False,
        tags=("workers",),
    ),
    StoreRoute(
        "GET",
        "/workers/{worker_id}",
        "get_worker_by_id",
        "One worker (null when unknown)",
        Answer(200, "nullable", Worker),
        "path",
        tags=("workers",),
    ),
    StoreRoute(
        "POST",
        "/workers/{worker_id}",
        "update_worker",
        "Record a worker's heartbeat (and its stats)",
        Answer(200, "one", Worker),
        "body",
        body_required=False,
        writes=True,
        tags=("workers",),
    ),
    StoreRoute(
        "GET",
        "/statistics",
        "statistics",
        "Counters about the store's contents and resource use",
        Answer(200, "object"),
        "path",
        tags=("store",),
    ),
)
"""Every route that calls one `LightningStore` method, in the order the app registers them."""

_MODEL_NAMES = {
    "enqueue_many_rollouts": "EnqueueBody",
    "dequeue_many_rollouts": "DequeueBody",
    "start_rollout": "StartRolloutBody",
    "query_rollouts": "RolloutSearch",
    "update_rollout": "UpdateRolloutBody",
    "start_attempt": "StartAttemptBody",
    "query_attempts": "AttemptSearch",
    "update_attempt": "UpdateAttemptBody",
    "query_resources": "ResourcesSearch",
    "add_many_spans": "SpanBatchBody",
    "query_spans": "SpanSearch",
    "get_next_span_sequence_id": "NextSequenceBody",
    "get_many_span_sequence_ids": "NextSequenceBatchBody",
    "wait_for_rollouts": "WaitBody",
    "query_workers": "WorkerSearch",
    "update_worker": "WorkerBody",
}
"""The name of each method's request model (as the OpenAPI document and docs/http.md show it); a method not listed
gets `<MethodName>Body`."""

PYTHON_ONLY: dict[str, tuple[str, ...]] = {"query_rollouts": ("status", "rollout_ids")}
"""Parameters the wire does not carry: deprecated spellings the Python method still accepts."""


def _wire_pairs() -> Any:
    return types.GenericAlias(list, (request_model(route_of("get_next_span_sequence_id")),))


_WIRE_TYPES: dict[tuple[str, str], Any] = {("get_many_span_sequence_ids", "rollout_attempt_ids"): _wire_pairs}
"""Parameters whose JSON form is not their Python type: (rollout, attempt) pairs travel as objects."""


@functools.cache
def path_parameters(path: str) -> tuple[str, ...]:
    """The `{names}` of a path pattern, in order."""
    return tuple(s[1:-1] for s in path.strip("/").split("/") if s.startswith("{"))


def route_of(store_method: str, http_method: str | None = None) -> StoreRoute:
    """The route calling `store_method` (the one with `http_method` when the method has several)."""
    for route in STORE_ROUTES:
        if route.store_method == store_method and http_method in (None, route.http_method):
            return route
    raise KeyError(f"no store route calls {store_method}" + (f" with {http_method}" if http_method else ""))


@functools.cache
def parameter_types(store_method: str) -> dict[str, Any]:
    """The resolved annotations of a `LightningStore` method's parameters (and `return`)."""
    return typing.get_type_hints(getattr(LightningStore, store_method), include_extras=True)


@functools.cache
def wire_parameters(route: StoreRoute) -> tuple[inspect.Parameter, ...]:
    """The parameters of the route's store method that travel outside the path, in signature order."""
    signature = inspect.signature(getattr(LightningStore, route.store_method))
    skipped = {"self", *path_parameters(route.path), *PYTHON_ONLY.get(route.store_method, ())}
    return tuple(p for p in signature.parameters.values() if p.name not in skipped)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _wire_type(tp: Any) -> tuple[Any, bool]:
    """The JSON-side type of a parameter's annotation, and whether it holds a list (validated fail-fast)."""
    if _is_union(tp):
        parts = [_wire_type(arg) for arg in typing.get_args(tp)]
        return Union[tuple(t for t, _ in parts)], any(is_list for _, is_list in parts)  # noqa: UP007
    origin = typing.get_origin(tp)
    if origin in (list, collections.abc.Sequence):
        (item,) = typing.get_args(tp)
        return list[_wire_type(item)[0]], True  # type: ignore[misc]
    if tp is int:
        return Annotated[int, Field(le=INT64_MAX)], False
    return tp, False


def _field(route: StoreRoute, parameter: inspect.Parameter) -> tuple[Any, Any]:
    """`(type, FieldInfo)` of one parameter in the request model."""
    override = _WIRE_TYPES.get((route.store_method, parameter.name))
    hint = override() if override is not None else parameter_types(route.store_method)[parameter.name]
    tp, is_list = _wire_type(hint)
    default = parameter.default
    if default is UNSET:  # "leave it as it is" is an absent field; null is refused where the type has no None
        default = None
        if tp is not Any and not (_is_union(tp) and type(None) in typing.get_args(tp)):
            tp = tp | None
    if default is inspect.Parameter.empty:
        return tp, Field(fail_fast=True) if is_list else Field()
    return tp, Field(default=default, fail_fast=True) if is_list else Field(default=default)


_MODELS: dict[str, type[BaseModel]] = {}


def request_model(route: StoreRoute) -> type[BaseModel]:
    """The pydantic model of a `body` or `query` route's parameters: one field per parameter outside the path.

    Types are the method's annotations as JSON carries them (a sequence is a list, checked item by item until the
    first bad one; an int fits in 64 bits); a parameter defaulting to `UNSET` is an optional field (absent: leave
    as it is). Routes of one method share its model.
    """
    if route.carries not in ("body", "query"):
        raise ValueError(f"{route.http_method} {route.path} carries no request model ({route.carries})")
    model = _MODELS.get(route.store_method)
    if model is None:
        fields: dict[str, Any] = {p.name: _field(route, p) for p in wire_parameters(route)}
        default_name = "".join(part.title() for part in route.store_method.split("_")) + "Body"
        name = _MODEL_NAMES.get(route.store_method, default_name)
        model = create_model(name, __module__=__name__, **fields)
        _MODELS[route.store_method] = model
    return model


def optional_parameters(route: StoreRoute) -> dict[str, bool]:
    """The route's parameters that default to `UNSET` ("leave it as it is"), each with whether null is allowed."""
    hints = parameter_types(route.store_method)
    return {p.name: _admits_none(hints[p.name]) for p in wire_parameters(route) if p.default is UNSET}


def _admits_none(tp: Any) -> bool:
    if tp is Any or tp is None or tp is type(None):
        return True
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _holds_list(tp: Any) -> bool:
    if _is_union(tp) or typing.get_origin(tp) is Annotated:
        return any(_holds_list(arg) for arg in typing.get_args(tp))
    return typing.get_origin(tp) in (list, collections.abc.Sequence)


@functools.cache
def list_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a query model that take a list: a repeated query parameter fills them."""
    return frozenset(name for name, info in model.model_fields.items() if _holds_list(info.annotation))
