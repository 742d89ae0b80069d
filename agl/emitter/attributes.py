"""Turning arbitrary Python values into flat OpenTelemetry span attributes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["AttributeValue", "flatten_attributes", "to_json"]

AttributeValue = str | bool | int | float | list[str] | list[bool] | list[int] | list[float]
"""A value OpenTelemetry accepts as a span attribute."""

_PRIMITIVES = (str, bool, int, float)


def to_json(value: Any) -> str:
    """JSON text of `value`; objects JSON cannot encode are written as their `str()`."""
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        return str(dump())
    return json.dumps(value, default=str, ensure_ascii=False)


def _homogeneous(items: list[Any]) -> list[Any] | None:
    """`items` as an OpenTelemetry-compatible list, or None when the element types are mixed/non-primitive."""
    if all(isinstance(v, str) for v in items) or all(isinstance(v, bool) for v in items):
        return list(items)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        return None
    if all(isinstance(v, int) for v in items):
        return list(items)
    return [float(v) for v in items]


def _flatten_into(out: dict[str, AttributeValue], key: str, value: Any, strict: bool) -> None:
    if isinstance(value, _PRIMITIVES):
        out[key] = value
    elif isinstance(value, Mapping):
        if not value:
            out[key] = "{}"
        for sub_key, sub_value in value.items():
            _flatten_into(out, f"{key}.{sub_key}", sub_value, strict)
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(v, Mapping) for v in items):
            for index, item in enumerate(items):
                _flatten_into(out, f"{key}.{index}", item, strict)
            return
        as_list = _homogeneous(items)
        if as_list is not None:
            out[key] = as_list
        elif strict:
            kinds = sorted({type(v).__name__ for v in items})
            raise ValueError(
                f"Attribute {key!r}: a list must hold only dicts or only values of one primitive type "
                f"(str, bool, int/float), got {kinds}"
            )
        else:
            out[key] = to_json(items)
    else:
        out[key] = to_json(value)


def flatten_attributes(data: Mapping[str, Any], *, strict: bool = False) -> dict[str, AttributeValue]:
    """Flatten nested values into dotted attribute keys.

    Nested dicts become `a.b`, lists of dicts `a.0.b`; lists of one primitive type stay lists (ints mixed with
    floats become floats); any other value is JSON-encoded. With `strict=True` a list of mixed or non-primitive
    values raises ValueError instead of being JSON-encoded.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"attributes must be a dict, got {type(data).__name__}")
    out: dict[str, AttributeValue] = {}
    for key, value in data.items():
        _flatten_into(out, str(key), value, strict)
    return out
