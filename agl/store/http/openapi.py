"""The OpenAPI 3.1 document of the store's HTTP API (served at `GET /v1/agl/openapi.json`).

The document is built from the app's own route table and from the pydantic models its handlers validate with, so a
route or a field cannot be added without appearing here: a registered route with no entry in `OPERATIONS` fails the
build, and the tests check the document against the route table both ways. The store's routes and their request
models come from `agl.store.http.operations` (the models from `LightningStore`'s signatures); only the app's own
routes (health, this document, the dashboard) are described here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from agl.store.http import app as _app
from agl.store.http.dashboard import _OverviewQuery, _RolloutsQuery
from agl.store.http.limits import INT64_MAX, INT64_MIN
from agl.store.http.operations import (
    STORE_ROUTES,
    Answer,
    StoreRoute,
    parameter_types,
    request_model,
    route_of,
    wire_parameters,
)
from agl.store.http.wire import API_PREFIX, IDEMPOTENCY_HEADER
from agl.types.tracer import Span

if TYPE_CHECKING:
    from agl.store.http.app import StoreApp

__all__ = ["OPERATIONS", "Answer", "ErrorBody", "Operation", "build_document", "markdown_routes", "route_rows"]

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"


class _HealthQuery(BaseModel):
    """Query of `GET /health`: a runner's drain watcher id (remembered so the server knows who was told)."""

    watcher: str | None = None


class _HealthAnswer(BaseModel):
    """Answer of `GET /health`."""

    model_config = ConfigDict(extra="allow")

    status: str
    server: str
    features: list[str]


class _ValidationItem(BaseModel):
    """One validation error: where (`loc`, starting with `body`, `query` or `store`), what and why."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `detail` is a message, or a list of validation errors; `error_type` names the store error."""

    model_config = ConfigDict(extra="allow")

    detail: str | list[_ValidationItem]
    error_type: str | None = None
    retryable: bool | None = None


@dataclass(frozen=True)
class Operation:
    """What one route takes and answers."""

    summary: str
    answer: Answer
    body: Any = None
    """The type its body is validated with (a pydantic model or any type pydantic can validate), or None."""
    body_required: bool = True
    query: type[BaseModel] | None = None
    writes: bool = False
    """Changes state: takes an `Idempotency-Key`, may answer 409 and reads a body (413/415)."""
    prefer_minimal: bool = False
    not_found: bool = False
    """May answer 404: an id it names (in the path or the body) is unknown."""
    extra_errors: tuple[int, ...] = ()
    """Error statuses beyond those its shape implies (e.g. health's 400 for an overlong watcher id)."""
    query_checked: bool = True
    """The query is validated (a bad one answers 422); false where parameters are only read when present."""
    tags: tuple[str, ...] = field(default=())


def _store_operation(route: StoreRoute) -> Operation:
    body: Any = None
    if route.carries == "body":
        body = request_model(route)
    elif route.carries == "raw":
        (parameter,) = wire_parameters(route)
        body = parameter_types(route.store_method)[parameter.name]
    return Operation(
        route.summary,
        route.answer,
        body,
        body_required=route.body_required,
        query=request_model(route) if route.carries == "query" else None,
        writes=route.writes,
        prefer_minimal=route.prefer_minimal,
        not_found=route.not_found,
        tags=route.tags,
    )


OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/health"): Operation(
        "Health, drain state and the AGL features this server offers",
        Answer(200, "one", _HealthAnswer),
        query=_HealthQuery,
        query_checked=False,
        extra_errors=(400,),
        tags=("health",),
    ),
    ("GET", "/openapi.json"): Operation("This document", Answer(200, "object"), tags=("health",)),
    **{(route.http_method, route.path): _store_operation(route) for route in STORE_ROUTES},
    ("GET", "/dashboard/overview"): Operation(
        "The dashboard's overview", Answer(200, "object"), query=_OverviewQuery, tags=("dashboard",)
    ),
    ("GET", "/dashboard/rollouts"): Operation(
        "The dashboard's rollout list (one page of summaries)",
        Answer(200, "object"),
        query=_RolloutsQuery,
        tags=("dashboard",),
    ),
    ("GET", "/dashboard/rollouts/{rollout_id}"): Operation(
        "One rollout in full: attempts, spans, reward (404 when unknown)",
        Answer(200, "object"),
        not_found=True,
        tags=("dashboard",),
    ),
    ("GET", "/dashboard/workers"): Operation(
        "Every worker with its heartbeat age and last error", Answer(200, "object"), tags=("dashboard",)
    ),
}
"""Every route of `StoreApp`'s route table (method, path under `/v1/agl`) and what it takes and answers: the store's
routes as `agl.store.http.operations.STORE_ROUTES` describes them, and the app's own (health, this document, the
dashboard)."""

_ERROR_MEANINGS = {
    400: "Bad request: a value the store refused (the message says which and why); or, as text/plain from the HTTP "
    "server, a request that is not valid HTTP/1.1 (e.g. bytes a URL may not hold)",
    401: "Missing or wrong bearer token (only when the server has a token)",
    404: "Unknown id",
    409: "Idempotency-Key reused with another body, or a stale attempt",
    413: "Body larger than the server's limit",
    414: "Path and query longer than the server's limit",
    408: "The request head or body did not arrive in time (the server's head or body timeout)",
    415: "Unsupported Content-Encoding",
    422: "The body or query does not match the schema (errors name the field)",
    431: "Header lines too many or too large for the server's limits",
    507: "No room for more spans right now; retry later",
}


@dataclass(frozen=True)
class _RouteInfo:
    method: str
    pattern: str
    public: bool


def _app_routes(app: StoreApp) -> list[_RouteInfo]:
    return [_RouteInfo(m, p, public) for m, p, public in app.route_table() if m != "HEAD"]


def _error_codes(route: _RouteInfo, op: Operation) -> list[int]:
    # For any request: 408 a head that arrives too slowly, 414 a path and query over max_url_bytes, 431 a head too
    # large, 400 (text/plain) from the HTTP server for a request that is not valid HTTP/1.1.
    codes: set[int] = {400, 408, 414, 431, *op.extra_errors}
    if not route.public:
        codes.add(401)
    if op.body is not None or (op.query is not None and op.query_checked):
        codes |= {400, 422}  # 400: a value the store refuses (a sort field, a negative offset, a null it forbids)
    if op.not_found:
        codes.add(404)
    if route.method == "POST":
        codes |= {400, 408, 413, 415}  # a bad Content-Length or Idempotency-Key, a slow or large body, an encoding
        if op.writes:
            codes.add(409)
    if op.prefer_minimal:
        codes.add(507)
    return sorted(codes)


class _Schemas:
    """Collects the JSON schemas of every type the document names, generated together so references resolve."""

    def __init__(self) -> None:
        self._inputs: list[tuple[Any, str, Any]] = []

    def ref(self, tp: Any, mode: str) -> dict[str, Any]:
        """A placeholder for `tp`'s schema in `mode` ("validation" or "serialization"), resolved by `resolve`."""
        key = (len(self._inputs), mode)
        self._inputs.append((key[0], mode, tp))
        return {"__schema__": key}

    def resolve(self, document: dict[str, Any]) -> dict[str, Any]:
        """Replace every placeholder in `document` and return the shared definitions."""
        inputs = [(key, mode, TypeAdapter(tp)) for key, mode, tp in self._inputs]
        schemas, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)  # type: ignore[arg-type]

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                placeholder = node.get("__schema__")
                if placeholder is not None:
                    return walk(schemas[placeholder])
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            return node

        resolved = walk(document)
        document.clear()
        document.update(resolved)
        return dict(defs.get("$defs", {}))


def _rename_private(node: Any, names: dict[str, str]) -> Any:
    """`_EnqueueBody` → `EnqueueBody` in definition names and references (the leading underscore is Python's)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("$ref",) and isinstance(value, str):
                prefix, _, name = value.rpartition("/")
                value = f"{prefix}/{names.get(name, name)}"
            elif key == "mapping" and isinstance(value, dict):
                value = {k: _rename_private({"$ref": v}, names)["$ref"] for k, v in value.items()}
                out[key] = value
                continue
            out[key] = _rename_private(value, names)
        return out
    if isinstance(node, list):
        return [_rename_private(v, names) for v in node]
    return node


def _require_discriminators(*nodes: Any) -> None:
    """Mark each discriminator property required in the schemas it tells apart.

    pydantic leaves it optional when the field has a default, but its validator needs it to pick the kind (a body
    without `resource_type` is refused), and every answer carries it.
    """
    defs: dict[str, Any] = nodes[-1]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            discriminator = node.get("discriminator")
            if isinstance(discriminator, dict):
                name = discriminator["propertyName"]
                for ref in discriminator.get("mapping", {}).values():
                    target = defs[ref.rpartition("/")[2]]
                    if name not in target.setdefault("required", []):
                        target["required"].append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for node in nodes:
        walk(node)


_JSON_VALUE = "JsonValue"
_ANNOTATIONS = frozenset({"title", "description", "default", "examples"})


def _bound_untyped_values(document: dict[str, Any], defs: dict[str, Any]) -> None:
    """Point untyped values (`Any`, extra fields) at a JSON value whose integers fit in 64 bits.

    The app refuses an integer outside the signed 64-bit range anywhere in a body, also where the model takes any
    value; pydantic describes those places as `{}`, which would allow it.
    """
    ref = {"$ref": _REF.format(model=_JSON_VALUE)}
    defs[_JSON_VALUE] = {
        "description": "Any JSON value; integers written as such within the signed 64-bit range (JSON Schema cannot "
        "tell 1e19 from 10000000000000000000, the app does), nested at most max_json_depth deep",
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "string"},
            {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
            {"type": "number", "not": {"type": "integer"}},
            {
                "type": "number",
                "not": {"minimum": INT64_MIN, "maximum": INT64_MAX},
                "description": "Only as a float (1e19): an integer literal outside the signed 64-bit range is refused",
            },
            {"type": "array", "items": ref},
            {"type": "object", "additionalProperties": ref},
        ],
    }

    def untyped(node: Any) -> bool:
        return isinstance(node, dict) and set(node) <= _ANNOTATIONS

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = ref  # unknown fields are ignored, but still checked as JSON values
            for key, value in node.items():
                if key in ("properties", "$defs", "patternProperties"):
                    for name, sub in value.items():
                        if untyped(sub):
                            value[name] = {**sub, **ref}
                        else:
                            walk(sub)
                elif key in ("items", "additionalProperties", "schema") and (value is True or untyped(value)):
                    node[key] = ref if value is True else {**value, **ref}
                else:
                    walk(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if untyped(value):
                    node[index] = {**value, **ref}
                else:
                    walk(value)

    walk({name: schema for name, schema in defs.items() if name != _JSON_VALUE})
    walk(document["paths"])


_BATCH_FIELDS = (
    ("enqueue_many_rollouts", "rollouts"),
    ("add_many_spans", "spans"),
    ("get_many_span_sequence_ids", "rollout_attempt_ids"),
    ("wait_for_rollouts", "rollout_ids"),
    ("query_rollouts", "rollout_id_in"),
)
"""The request lists the app caps at `max_batch_items` (besides a resources snapshot and a dequeue's `limit`), by
store method and parameter."""


def _apply_app_rules(document: dict[str, Any], defs: dict[str, Any], app: StoreApp) -> None:
    """Add the rules the app checks beyond its models: 64-bit integers, span sequence ids, batch sizes."""

    def integers(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                node["minimum"] = max(node.get("minimum", INT64_MIN), INT64_MIN)
                node["maximum"] = min(node.get("maximum", INT64_MAX), INT64_MAX)
            for value in node.values():
                integers(value)
        elif isinstance(node, list):
            for value in node:
                integers(value)

    integers(defs)
    integers(document["paths"])
    _bound_untyped_values(document, defs)
    sequence_id = defs[Span.__name__]["properties"]["sequence_id"]
    sequence_id["minimum"], sequence_id["maximum"] = 0, _app.MAX_SEQUENCE_ID
    most = app.limits.max_batch_items
    for method, name in _BATCH_FIELDS:
        field_schema = defs[request_model(route_of(method)).__name__]["properties"][name]
        for option in field_schema.get("anyOf", [field_schema]):
            if option.get("type") == "array":
                option["maxItems"] = most
    defs[request_model(route_of("dequeue_many_rollouts")).__name__]["properties"]["limit"]["maximum"] = most
    for item in document["paths"].values():
        for op in item.values():
            for param in op.get("parameters", ()):
                if param["name"] == "rollout_id_in" and param["in"] == "query":
                    param["schema"]["maxItems"] = most
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("type") == "object" and "additionalProperties" in body:  # a resources snapshot
                body["maxProperties"] = most


def _answer_schema(answer: Answer, schemas: _Schemas) -> dict[str, Any] | None:
    if answer.kind == "object":
        return {"type": "object"}
    one = schemas.ref(answer.type, "serialization")
    if answer.kind == "one":
        shape: dict[str, Any] = one
    elif answer.kind == "nullable":
        shape = {"anyOf": [one, {"type": "null"}]}
    elif answer.kind == "list":
        shape = {"type": "array", "items": one}
    elif answer.kind == "page":
        shape = {
            "type": "object",
            "required": ["items", "limit", "offset", "total"],
            "properties": {
                "items": {"type": "array", "items": one},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
                "total": {"type": "integer"},
            },
        }
    else:
        raise ValueError(f"unknown answer kind {answer.kind!r}")
    if answer.also:
        shape = {"anyOf": [shape, *(schemas.ref(tp, "serialization") for tp in answer.also)]}
    return shape


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent rather than null: drop the `null` branch of an optional field."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(kept) == 1:
        return {**rest, **kept[0]}
    return {**rest, "anyOf": kept}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=_REF)
    if "$defs" in schema:
        raise ValueError(f"{model.__name__}: query parameters must be plain values, not models")
    required = set(schema.get("required", ()))
    params: list[dict[str, Any]] = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(prop)
        prop.pop("title", None)
        if "default" in prop and prop["default"] is None:
            del prop["default"]  # absent, not null: a query string has no null
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array":
            param["style"] = "form"
            param["explode"] = True
        params.append(param)
    return params


def _path_parameters(pattern: str) -> list[dict[str, Any]]:
    names = [s[1:-1] for s in pattern.strip("/").split("/") if s.startswith("{")]
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for n in names]


def _operation(route: _RouteInfo, op: Operation, schemas: _Schemas, *, head: bool = False) -> dict[str, Any]:
    params = _path_parameters(route.pattern)
    if op.query is not None:
        params += _query_parameters(op.query)
    if op.writes and route.method == "POST":
        params.append(
            {
                "name": IDEMPOTENCY_HEADER.title(),
                "in": "header",
                "required": False,
                "description": "A retry with the same key gets the first answer instead of running again "
                "(an empty value is no key)",
                "schema": {"type": "string", "maxLength": 255},
            }
        )
    if op.prefer_minimal:
        params.append(
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`return=minimal`: answer `true`/`null` (or the stored indices) instead of the spans",
                "schema": {"type": "string"},
            }
        )
    error_ref = {"$ref": _REF.format(model="ErrorBody")}
    answer = op.answer
    ok: dict[str, Any] = {"description": "OK" if answer.status == 200 else "Created"}
    if not head:
        schema = _answer_schema(answer, schemas)
        if schema is not None:
            ok["content"] = {"application/json": {"schema": schema}}
    responses: dict[str, Any] = {str(answer.status): ok}
    for code in _error_codes(route, op):
        error: dict[str, Any] = {"description": _ERROR_MEANINGS[code]}
        if not head:
            error["content"] = {"application/json": {"schema": error_ref}}
            if code == 400:
                error["content"]["text/plain"] = {"schema": {"type": "string"}}
        responses[str(code)] = error
    method = "head" if head else route.method.lower()
    out: dict[str, Any] = {
        "operationId": f"{method}_{route.pattern.strip('/').replace('/', '_').replace('{', '').replace('}', '')}"
        or method,
        "summary": ("Headers of: " if head else "") + op.summary,
        "tags": list(op.tags),
        "parameters": params,
        "responses": responses,
    }
    if route.public:
        out["security"] = []
    if op.body is not None and not head:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schemas.ref(op.body, "validation")}},
        }
    return out


def build_document(app: StoreApp) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route `app` serves under `/v1/agl` (HEAD included wherever GET is).

    Raises ValueError when a route has no entry in `OPERATIONS` or an entry names a route the app does not serve.
    """
    routes = _app_routes(app)
    served = {(r.method, r.pattern) for r in routes}
    missing = sorted(served - set(OPERATIONS))
    unknown = sorted(set(OPERATIONS) - served)
    if missing or unknown:
        raise ValueError(f"route table and OPERATIONS differ: undocumented {missing}, not served {unknown}")
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.pattern, r.method)):
        op = OPERATIONS[(route.method, route.pattern)]
        item = paths.setdefault(API_PREFIX + route.pattern, {})
        item[route.method.lower()] = _operation(route, op, schemas)
        if route.method == "GET":
            item["head"] = _operation(route, op, schemas, head=True)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "AGL store",
            "version": "0.3",
            "description": "The LightningStore over HTTP (Agent Lightning 0.3's REST API plus AGL's extensions). "
            "Every route but health and this document needs `Authorization: Bearer <token>` when the server has a "
            "token. Every error answer is JSON with a `detail`.",
        },
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "x-error-body": schemas.ref(ErrorBody, "serialization"),  # makes ErrorBody one of the definitions
    }
    defs = schemas.resolve(document)
    del document["x-error-body"]
    _require_discriminators(document, defs)
    _apply_app_rules(document, defs, app)
    names = {name: name.lstrip("_") for name in defs if name.startswith("_")}
    clashes = set(names.values()) & (set(defs) - set(names))
    if clashes:
        raise ValueError(f"schema names clash once their underscore is dropped: {sorted(clashes)}")
    document["components"]["schemas"] = {names.get(k, k): v for k, v in sorted(defs.items())}
    renamed: dict[str, Any] = _rename_private(document, names)
    return renamed


def route_rows(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """One row per operation but HEAD: (method, path, body, answers), as docs/http.md's route table shows them."""
    rows: list[tuple[str, str, str, str]] = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method == "head":
                continue
            body = "—"
            if "requestBody" in op:
                body = _schema_name(op["requestBody"]["content"]["application/json"]["schema"])
                if not op["requestBody"]["required"]:
                    body += " (optional)"
            answers = ", ".join(
                f"{code} {_schema_name(r['content']['application/json']['schema'])}"
                if code[0] == "2" and "content" in r
                else code
                for code, r in op["responses"].items()
            )
            rows.append((method.upper(), path, body, answers))
    return rows


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rpartition("/")[2]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_schema_name(s) for s in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"[{_schema_name(schema.get('items', {}))}]"
    if kind == "object" and "properties" in schema and "items" in schema["properties"]:
        return f"page of {_schema_name(schema['properties']['items']['items'])}"
    if kind == "object" and "additionalProperties" in schema:
        return f"{{name: {_schema_name(schema['additionalProperties'])}}}"
    return str(kind or "any")


def markdown_routes(document: dict[str, Any]) -> str:
    """docs/http.md's route table: one row per operation but HEAD (every GET route also answers HEAD)."""
    lines = ["| method | path | body | answers |", "|---|---|---|---|"]
    for method, path, body, answers in route_rows(document):
        lines.append(f"| {method} | `{path}` | {body} | {answers} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m agl.store.http.openapi [--markdown]: print the document (or docs' table)
    import sys

    import orjson

    from agl.store.http.app import StoreApp
    from agl.store.memory import InMemoryLightningStore

    built = build_document(StoreApp(InMemoryLightningStore(), metrics=False))
    if "--markdown" in sys.argv[1:]:
        sys.stdout.write(markdown_routes(built))
    else:
        sys.stdout.write(orjson.dumps(built, option=orjson.OPT_INDENT_2).decode() + "\n")
