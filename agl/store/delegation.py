"""Stores that wrap another store: their pass-through methods are generated from the `LightningStore` protocol.

A wrapper (the HTTP server delegating to the store it serves, the thread-safe wrapper) defines how one call is
forwarded; `forwards_protocol` gives it every protocol method it does not write itself, each with
`LightningStore`'s signature and docstring, so no wrapper restates a parameter.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from agl.store.base import LightningStore

__all__ = ["PROTOCOL_METHODS", "bind_arguments", "forward_methods", "forwards_protocol"]

W = TypeVar("W", bound=LightningStore)

PROTOCOL_METHODS: tuple[str, ...] = tuple(
    name
    for name, value in vars(LightningStore).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(value)
)
"""The names of `LightningStore`'s coroutine methods: the calls a wrapper forwards."""


def _forwarder(owner: type[LightningStore], name: str) -> Callable[..., Awaitable[Any]]:
    async def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._forward(name, args, kwargs)

    functools.update_wrapper(forward, getattr(LightningStore, name))  # signature (via __wrapped__), name, docstring
    forward.__qualname__ = f"{owner.__qualname__}.{name}"
    return forward


def forward_methods(cls: type[W], names: Iterable[str]) -> type[W]:
    """Give `cls` a generated method for each of `names` it does not define, calling `self._forward(...)`."""
    if not callable(getattr(cls, "_forward", None)):
        raise TypeError(f"{cls.__name__} must define `async def _forward(self, name, args, kwargs)`")
    for name in names:
        if name not in PROTOCOL_METHODS:
            raise ValueError(f"{name} is not a LightningStore protocol method")
        if name not in cls.__dict__:
            setattr(cls, name, _forwarder(cls, name))
    return cls


def forwards_protocol(cls: type[W]) -> type[W]:
    """Class decorator: each protocol method `cls` does not define itself calls `self._forward(name, args, kwargs)`.

    `_forward` is an async method of `cls` that makes the call `name(*args, **kwargs)` on whatever it wraps. The
    generated methods report `LightningStore`'s signature (`inspect.signature`) and docstring; type checkers see
    the inherited ones.
    """
    return forward_methods(cls, PROTOCOL_METHODS)


@functools.cache
def _parameters(name: str) -> tuple[inspect.Signature, tuple[str, ...], dict[str, Any], frozenset[str]]:
    signature = inspect.signature(getattr(LightningStore, name))
    params = list(signature.parameters.values())[1:]  # without self
    positional = tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return signature, positional, defaults, frozenset(p.name for p in params)


def bind_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of the protocol method `name` called with `args` and `kwargs`, defaults filled in.

    Raises TypeError as the call itself would for arguments that do not fit the signature.
    """
    signature, positional, defaults, names = _parameters(name)
    bound = {**defaults, **dict(zip(positional, args, strict=False)), **kwargs}
    if (
        len(args) > len(positional)
        or len(bound) != len(names)
        or not kwargs.keys() <= names
        or (kwargs.keys() & set(positional[: len(args)]))
    ):
        signature.bind(None, *args, **kwargs)  # raises the TypeError the call deserves
    return bound
