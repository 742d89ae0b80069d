"""Readers for the flat, dotted span attributes the adapters interpret (private to `agl.adapter`)."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "as_float_list",
    "as_int_list",
    "first_float_list",
    "first_int_list",
    "first_str",
    "parse_literal",
    "unflatten",
    "unflatten_first",
]


def parse_literal(value: Any) -> Any:
    """`value` decoded from a Python/JSON literal string when it is one; otherwise `value` unchanged."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{(":
        return value
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return value


def as_int_list(value: Any) -> list[int] | None:
    """`value` as a list of ints (decoding literal strings), or None if it is not one."""
    value = parse_literal(value)
    if isinstance(value, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return list(value)
    return None


def as_float_list(value: Any) -> list[float] | None:
    """`value` as a list of floats (decoding literal strings), or None if it is not one."""
    value = parse_literal(value)
    if isinstance(value, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return [float(x) for x in value]
    return None


def first_int_list(attributes: Mapping[str, Any], keys: Iterable[str]) -> list[int] | None:
    """The first of `keys` present in `attributes` whose value is a list of ints."""
    for key in keys:
        if key in attributes:
            ids = as_int_list(attributes[key])
            if ids is not None:
                return ids
            logger.warning("Attribute %r is not a list of integers; ignored", key)
    return None


def first_float_list(attributes: Mapping[str, Any], keys: Iterable[str]) -> list[float] | None:
    """The first of `keys` present in `attributes` whose value is a list of numbers."""
    for key in keys:
        if key in attributes:
            values = as_float_list(attributes[key])
            if values is not None:
                return values
            logger.warning("Attribute %r is not a list of numbers; ignored", key)
    return None


def first_str(attributes: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """The first of `keys` present in `attributes` with a non-empty string value."""
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _listify(node: Any) -> Any:
    """Turn every dict whose keys are all decimal indices into a list ordered by index."""
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def unflatten(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any] | list[Any] | None:
    """The attributes under `prefix.` rebuilt into nested dicts and lists, or None when there are none.

    `gen_ai.prompt.0.role` and `gen_ai.prompt.0.content` under prefix `gen_ai.prompt` become
    `[{"role": ..., "content": ...}]`: levels whose keys are all indices become lists. A value at a path that
    also has deeper keys is dropped in favour of the deeper structure.
    """
    start = prefix + "."
    tree: dict[str, Any] = {}
    for key in sorted(k for k in attributes if k.startswith(start)):
        parts = key[len(start) :].split(".")
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = attributes[key]
    if not tree:
        return None
    result = _listify(tree)
    return result if isinstance(result, (dict, list)) else None


def unflatten_first(attributes: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any] | list[Any] | None:
    """`unflatten` under the first of `prefixes` that has any attributes."""
    for prefix in prefixes:
        result = unflatten(attributes, prefix)
        if result:
            return result
    return None
