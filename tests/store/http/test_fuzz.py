"""Schemathesis over every operation of the OpenAPI document, against a real server on 127.0.0.1.

Each operation gets valid requests (from the schemas) and invalid ones (schemathesis' negative mode: wrong types,
missing fields, values out of range), with random and known ids. Every answer must be below 500, conform to the
document (status, content type, body schema), reject invalid input with a 4xx, and the connection must not drop;
after each case the server must still answer its health route. The default run is a small subset; the slow run a
larger one. Both draw the same examples each time (AGL_FUZZ_RANDOM=1 draws new ones).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz suite needs schemathesis (pip install -e '.[dev]')")
import requests  # noqa: E402  (schemathesis' own HTTP client, present whenever schemathesis is)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from agl.store.http.app import StoreApp  # noqa: E402
from agl.store.http.openapi import build_document  # noqa: E402
from agl.store.memory import InMemoryLightningStore  # noqa: E402
from tests.store.http.fuzzing import AUTH, Seeded, assert_healthy, seeded_server  # noqa: E402

_DOCUMENT = build_document(StoreApp(InMemoryLightningStore(), metrics=False))
_CONFIG = schemathesis.Config.from_dict(
    {
        # The token is sent by the test itself (AUTH); test_auth.py covers requests without it.
        "generation": {"with-security-parameters": False, "allow-extra-parameters": False},
    }
)
_SCHEMA = schemathesis.openapi.from_dict(_DOCUMENT, config=_CONFIG)
_OPERATIONS = {op.label: op for op in (result.ok() for result in _SCHEMA.get_all_operations())}
_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_BOTH = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
_INVALID = (schemathesis.GenerationMode.NEGATIVE,)
_SUPPRESSED = list(HealthCheck)


# On Python 3.10 generating cases from the recursive JsonValue schema exceeds the interpreter's recursion limit inside
# schemathesis/hypothesis (a RecursionError while generating, before any request): the fuzz runs on 3.11+ only.
pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="schemathesis' case generation hits RecursionError on Python 3.10"
)

# The long runs draw the same examples every time, so CI's verdict is reproducible; AGL_FUZZ_RANDOM=1 draws new ones
# (to hunt for new failures by hand).
_FIXED = os.environ.get("AGL_FUZZ_RANDOM") != "1"


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    with seeded_server() as running:
        yield running


def _strategy(label: str, seeded: Seeded, modes: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    op = _OPERATIONS[label]
    known = {name: value for name, value in seeded.path_ids.items() if f"{{{name}}}" in op.path}
    strategies = [op.as_strategy(generation_mode=mode) for mode in modes]
    if known:  # the same, on ids that exist: reaches the store's own checks instead of stopping at "not found"
        strategies += [op.as_strategy(generation_mode=mode, path_parameters=known) for mode in modes]
    return st.one_of(strategies)


def _has_int_beyond_64_bits(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**63
    if isinstance(value, dict):
        return any(_has_int_beyond_64_bits(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_int_beyond_64_bits(v) for v in value)
    return False


def _check_valid_input_accepted(label: str, case: Any, response: Any) -> None:
    """A request valid by the document passes the app's own validation: the document and the handlers agree.

    One difference JSON Schema cannot state: a number beyond 64 bits is valid in an untyped value (JsonValue) as a
    float such as 1e19, while the app refuses it written as an integer; a body that has such an integer may get
    `int_out_of_range` for it (typed integer fields carry explicit bounds, so only untyped values can hold one).
    """
    if response.status_code != 422:
        return
    detail = response.json().get("detail")
    big = _has_int_beyond_64_bits(case.body)
    refused = [
        i
        for i in detail
        if isinstance(i, dict)
        and i.get("loc", [None])[0] in ("body", "query")
        and not (big and i.get("type") == "int_out_of_range")
    ]
    assert not refused, f"{label}: a request valid by the document was refused: {str(refused)[:2000]}"


def _fuzz(
    label: str, seeded: Seeded, *, examples: int, derandomize: bool, modes: tuple[Any, ...], checks: list[Any]
) -> None:
    session = requests.Session()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=_SUPPRESSED,
        print_blob=True,
    )
    @given(case=_strategy(label, seeded, modes))
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=seeded.base_url, session=session, headers=dict(AUTH), timeout=10)
        except requests.RequestException as exc:  # a dropped connection or a hang is a failure, not a skip
            raise AssertionError(f"{label}: no answer ({type(exc).__name__}: {exc})\n{case.as_curl_command()}") from exc
        case.validate_response(response, checks=checks, headers=dict(AUTH))
        if case.meta is not None and case.meta.generation.mode is schemathesis.GenerationMode.POSITIVE:
            _check_valid_input_accepted(label, case, response)
        assert_healthy(seeded.server.port)

    try:
        run()
    finally:
        session.close()


_LABELS = sorted(_OPERATIONS)


@pytest.mark.parametrize("label", _LABELS)
def test_fuzz_operation(label: str, seeded: Seeded) -> None:
    """Valid and invalid requests: no 5xx, answers as documented, connection kept, server healthy after each."""
    _fuzz(label, seeded, examples=8, derandomize=True, modes=_BOTH, checks=_CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("label", _LABELS)
def test_fuzz_operation_long(label: str, seeded: Seeded) -> None:
    _fuzz(label, seeded, examples=150, derandomize=_FIXED, modes=_BOTH, checks=_CHECKS)


def _types_in(node: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """Every JSON type a schema (following its references) can hold somewhere."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            found |= _types_in(_DOCUMENT["components"]["schemas"][ref.rpartition("/")[2]], seen | {ref})
        kind = node.get("type")
        found |= set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()
        for value in node.values():
            if isinstance(value, (dict, list)):
                found |= _types_in(value, seen)
    elif isinstance(node, list):
        for value in node:
            found |= _types_in(value, seen)
    return found


def _input_schemas(label: str) -> list[Any]:
    method, path = label.split(" ", 1)
    raw = _DOCUMENT["paths"][path][method.lower()]
    schemas = [p["schema"] for p in raw.get("parameters", ()) if p["in"] == "query"]
    if "requestBody" in raw:
        schemas.append(raw["requestBody"]["content"]["application/json"]["schema"])
    return schemas


def _validates(label: str) -> bool:
    method, path = label.split(" ", 1)
    return "422" in _DOCUMENT["paths"][path][method.lower()]["responses"]


_LAX = pytest.mark.xfail(
    strict=False,
    reason="KNOWN: numeric strings are still read as numbers (pydantic's lax mode: {'limit': '3'} is limit 3), which "
    "the document types as number; booleans are refused since the strict-boolean check (these cases now pass)",
)
_NEGATABLE = [
    pytest.param(label, marks=_LAX) if _types_in(_input_schemas(label)) & {"integer", "number", "boolean"} else label
    for label in _LABELS
    if _validates(label)  # health reads its query only when present; a path id alone cannot be sent broken
]


@pytest.mark.slow
@pytest.mark.parametrize("label", _NEGATABLE)
def test_fuzz_rejects_invalid_input(label: str, seeded: Seeded) -> None:
    """Requests that break the document are refused with a 4xx."""
    _fuzz(label, seeded, examples=100, derandomize=_FIXED, modes=_INVALID, checks=[negative_data_rejection])
