"""Build a trainer component from whatever the user passed: an instance, a class, a factory, a string or a dict."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["build_component", "instantiate", "load_class"]

T = TypeVar("T")


def load_class(path: str, registry: Mapping[str, str] | None = None) -> Any:
    """A class from a registry alias or a dotted import path `package.module.Class`."""
    if registry and path in registry:
        path = registry[path]
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        aliases = f" or one of the aliases {sorted(registry)}" if registry else ""
        raise ValueError(f"{path!r} is not a dotted import path (package.module.Class){aliases}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Cannot import {module_name!r} (from {path!r}): {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"Module {module_name!r} has no attribute {attr!r} (from {path!r})") from exc


def instantiate(cls: type[T], kwargs: Mapping[str, Any], optional_defaults: Mapping[str, Any]) -> T:
    """`cls(**kwargs)`, adding each optional default the constructor accepts and `kwargs` does not set."""
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    merged = dict(kwargs)
    for key, value in optional_defaults.items():
        if key not in merged and (key in params or accepts_any):
            merged[key] = value
    return cls(**merged)


def build_component(
    spec: Any,
    expected: type[Any],
    *,
    name: str,
    default: Callable[[], Any] | None = None,
    optional_defaults: Mapping[str, Any] | None = None,
    registry: Mapping[str, str] | None = None,
    dict_default_type: type[Any] | None = None,
) -> Any:
    """Resolve a component spec (instance, None, subclass, factory, alias/path string, or `{"type": ..., **kwargs}`)."""
    defaults = optional_defaults or {}
    if isinstance(spec, expected):
        return spec
    if spec is None:
        return default() if default is not None else None
    if inspect.isclass(spec):
        if not issubclass(spec, expected):
            raise ValueError(f"Invalid {name} type: {spec.__name__} is not a {expected.__name__}")
        return instantiate(spec, {}, defaults)
    if isinstance(spec, str):
        cls = load_class(spec, registry)
        return _checked(instantiate(cls, {}, defaults), expected, name)
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        type_spec = kwargs.pop("type", None)
        if type_spec is None and "name" in kwargs and registry and kwargs["name"] in registry:
            type_spec = kwargs.pop("name")
        if type_spec is None:
            if dict_default_type is None:
                raise ValueError(f"{name} dict must have a 'type' key with the class full name")
            return instantiate(dict_default_type, kwargs, defaults)
        cls = load_class(type_spec, registry) if isinstance(type_spec, str) else type_spec
        return _checked(instantiate(cls, kwargs, defaults), expected, name)
    if callable(spec):
        return _checked(spec(), expected, name)
    raise ValueError(f"Invalid {name} type: {type(spec).__name__} (pass an instance, class, factory, string or dict)")


def _checked(value: Any, expected: type[Any], name: str) -> Any:
    if not isinstance(value, expected):
        raise TypeError(f"{name} factory returned {type(value).__name__}, expected a {expected.__name__}")
    return value
