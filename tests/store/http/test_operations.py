"""The store's route table: each route's request model has exactly its `LightningStore` method's parameters."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel

from agl.store.base import LightningStore
from agl.store.http.operations import (
    PYTHON_ONLY,
    STORE_ROUTES,
    optional_parameters,
    path_parameters,
    request_model,
    wire_parameters,
)
from agl.types.core import UNSET


@pytest.mark.parametrize("route", STORE_ROUTES, ids=lambda r: f"{r.http_method} {r.path}")
def test_a_route_carries_exactly_its_methods_parameters(route: Any) -> None:
    signature = inspect.signature(getattr(LightningStore, route.store_method))
    parameters = {name: p for name, p in signature.parameters.items() if name != "self"}
    in_path = path_parameters(route.path)
    assert set(in_path) <= set(parameters), "a path names a parameter the method does not take"
    outside = [
        name for name in parameters if name not in in_path and name not in PYTHON_ONLY.get(route.store_method, ())
    ]
    assert [p.name for p in wire_parameters(route)] == outside
    if route.carries == "raw":
        assert len(outside) == 1, "a raw body is one parameter"
    elif route.carries == "path":
        assert all(parameters[name].default is not inspect.Parameter.empty for name in outside)
    else:
        model = request_model(route)
        assert list(model.model_fields) == outside
        for name, field in model.model_fields.items():
            default = parameters[name].default
            if default is inspect.Parameter.empty:
                assert field.is_required(), name
            else:
                assert field.get_default() == (None if default is UNSET else default), name
        assert set(optional_parameters(route)) == {n for n in outside if parameters[n].default is UNSET}


def test_request_models_validate_what_the_method_takes() -> None:
    """A value of the method's parameter type is accepted by the route's model and comes out unchanged."""
    search = request_model(next(r for r in STORE_ROUTES if r.path == "/rollouts/search"))
    parsed = search.model_validate_json(b'{"status_in": ["queuing"], "limit": 5, "start_time_from": 1.5}')
    assert (parsed.status_in, parsed.limit, parsed.start_time_from) == (["queuing"], 5, 1.5)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="status_in"):
        search.model_validate_json(b'{"status_in": ["nonsense"]}')
    with pytest.raises(ValueError, match="limit"):
        search.model_validate_json(b'{"limit": 9223372036854775808}')


def test_python_only_parameters_exist() -> None:
    for method, names in PYTHON_ONLY.items():
        assert set(names) <= set(inspect.signature(getattr(LightningStore, method)).parameters)


def test_request_model_names_are_unique() -> None:
    models: dict[str, type[BaseModel]] = {}
    for route in STORE_ROUTES:
        if route.carries in ("body", "query"):
            model = request_model(route)
            assert models.setdefault(model.__name__, model) is model
