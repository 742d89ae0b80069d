"""Build a trainer component from whatever the user passed: an instance, a class, a factory, a string or a dict.

The function names and parameters are Agent Lightning's (`build_component(spec, expected_type=..., spec_name=...)`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["OptionalDefaults", "build_component", "instantiate_component", "instantiate_from_spec", "load_class"]


OptionalDefaults = dict[str, Callable[[], Any] | Any]
"""Constructor arguments filled in when the constructor accepts them and the spec does not set them; a callable
value is called to make the argument."""


def load_class(path: str, registry: Mapping[str, str] | None = None) -> Any:
    """A class from a registry alias or a dotted import path `package.module.Class`.

    Raises:
        ValueError: the path is not dotted, its module cannot be imported, or the module lacks the name.
    """
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


def instantiate_component(
    cls: type[Any],
    provided_kwargs: Mapping[str, Any] | None = None,
    optional_defaults: OptionalDefaults | None = None,
) -> Any:
    """`cls(**provided_kwargs)`, adding each optional default the constructor accepts by name and the kwargs do
    not set (a callable default is called first).
    """
    kwargs = dict(provided_kwargs or {})
    if optional_defaults:
        params = inspect.signature(cls).parameters
        for key, value in optional_defaults.items():
            if key not in kwargs and key in params:
                kwargs[key] = value() if callable(value) else value
    return cls(**kwargs)


def instantiate_from_spec(
    spec: str | Mapping[str, Any],
    *,
    spec_name: str,
    optional_defaults: OptionalDefaults | None = None,
    dict_requires_type: bool = True,
    dict_default_cls: type[Any] | None = None,
    registry: Mapping[str, str] | None = None,
) -> Any:
    """An instance from a class path / registry alias, or from `{"type": path, **kwargs}` (`"name"` may name a
    registry alias instead of `"type"`; without either, `dict_default_cls` is used unless `dict_requires_type`).

    Raises:
        ValueError: the class cannot be found, or a dict has no type and none may be assumed.
        TypeError: `spec` is neither a string nor a dict.
    """
    if isinstance(spec, str):
        return instantiate_component(load_class(spec, registry), optional_defaults=optional_defaults)
    if not isinstance(spec, Mapping):
        raise TypeError(f"{spec_name} spec must be a string or dict, got {type(spec).__name__}")
    kwargs = dict(spec)
    type_spec = kwargs.pop("type", None)
    if type_spec is None and registry and kwargs.get("name") in registry:
        type_spec = kwargs.pop("name")
    if type_spec is None:
        if dict_requires_type or dict_default_cls is None:
            raise ValueError(f"{spec_name} dict must have a 'type' key with the class full name")
        cls: Any = dict_default_cls
    else:
        cls = load_class(type_spec, registry) if isinstance(type_spec, str) else type_spec
    return instantiate_component(cls, kwargs, optional_defaults)


def _checked(value: Any, expected_type: type[Any], spec_name: str, type_error_fmt: str | None) -> Any:
    if not isinstance(value, expected_type):
        if type_error_fmt:
            raise TypeError(type_error_fmt.format(type_name=type(value).__name__, expected_type=expected_type.__name__))
        raise TypeError(f"{spec_name} factory returned {type(value).__name__}, expected a {expected_type.__name__}")
    return value


def build_component(
    spec: Any,
    *,
    expected_type: type[Any],
    spec_name: str,
    default_factory: Callable[[], Any] | None = None,
    allow_none: bool = False,
    optional_defaults: OptionalDefaults | None = None,
    dict_requires_type: bool = True,
    dict_default_cls: type[Any] | None = None,
    type_error_fmt: str | None = None,
    invalid_spec_error_fmt: str | None = None,
    registry: Mapping[str, str] | None = None,
) -> Any:
    """Resolve a component spec: an instance of `expected_type` (returned as is), None (`default_factory()`, or
    None when `allow_none`), a subclass (instantiated), a factory (called), a class path or registry alias, or a
    dict `{"type": ..., **kwargs}`. `optional_defaults` are passed to constructors that accept them.

    Raises:
        ValueError: the spec is None with no default and `allow_none` false, or of a form listed nowhere above,
            or names a class that cannot be found.
        TypeError: the built object is not an `expected_type` (`type_error_fmt` formats the message with
            `{type_name}` and `{expected_type}`).
    """
    if isinstance(spec, expected_type):
        return spec
    if spec is None:
        if default_factory is not None:
            return default_factory()
        if allow_none:
            return None
        raise ValueError(f"{spec_name} must be given: there is no default for it")
    if inspect.isclass(spec):
        if not issubclass(spec, expected_type):
            raise ValueError(f"Invalid {spec_name} type: {spec.__name__} is not a {expected_type.__name__}")
        return _checked(
            instantiate_component(spec, optional_defaults=optional_defaults), expected_type, spec_name, None
        )
    if isinstance(spec, (str, Mapping)):
        built = instantiate_from_spec(
            spec,
            spec_name=spec_name,
            optional_defaults=optional_defaults,
            dict_requires_type=dict_requires_type,
            dict_default_cls=dict_default_cls,
            registry=registry,
        )
        return _checked(built, expected_type, spec_name, type_error_fmt)
    if callable(spec):
        return _checked(spec(), expected_type, spec_name, type_error_fmt)
    if invalid_spec_error_fmt:
        raise ValueError(invalid_spec_error_fmt.format(actual_type=type(spec), expected_type=expected_type.__name__))
    raise ValueError(
        f"Invalid {spec_name} type: {type(spec).__name__} (pass a {expected_type.__name__} instance, class, factory, "
        "class path string or dict)"
    )
