"""Attribute helpers Agent Lightning keeps in `agentlightning.utils.otel`, over AGL's own implementations
(`agl.adapter._attrs` for unflattening, `agl.tracer.dummy` for exception attributes).

Only the helpers that need no OpenTelemetry SDK are here; docs/compatibility.md lists the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl.adapter._attrs import unflatten
from agl.tracer.dummy import exception_attributes

__all__ = [
    "filter_and_unflatten_attributes",
    "filter_attributes",
    "format_exception_attributes",
    "full_qualified_name",
    "unflatten_attributes",
]

_ROOT = "_"


def full_qualified_name(obj: type) -> str:
    """`module.QualifiedName` of a class (just the name for builtins)."""
    module = obj.__module__
    return obj.__qualname__ if module == "builtins" else f"{module}.{obj.__qualname__}"


def filter_attributes(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The attributes whose key is `prefix` or starts with `prefix.`."""
    return {k: v for k, v in attributes.items() if k == prefix or k.startswith(prefix + ".")}


def unflatten_attributes(flat_data: Mapping[str, Any]) -> dict[str, Any] | list[Any]:
    """Dotted keys rebuilt into nested dicts; levels keyed 0, 1, 2, ... become lists."""
    return unflatten({f"{_ROOT}.{k}": v for k, v in flat_data.items()}, _ROOT) or {}


def filter_and_unflatten_attributes(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any] | list[Any]:
    """The attributes under `prefix.`, with the prefix removed, rebuilt by `unflatten_attributes`.

    Raises:
        ValueError: an attribute key equals `prefix` itself (it has no place in the nested result).
    """
    if prefix in attributes:
        raise ValueError(f"Cannot unflatten an attribute whose key equals the prefix {prefix!r}")
    return unflatten(attributes, prefix) or {}


def format_exception_attributes(exception: BaseException) -> dict[str, Any]:
    """The OpenTelemetry `exception.*` attributes of `exception` (type, message, escaped, stack trace)."""
    return exception_attributes(exception)
