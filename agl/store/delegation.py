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
def _parameters(name: str) -> tuple[inspect.Signature, tuple[str, ...], dict[str, Any], dict[str, int]]:
    signature = inspect.signature(getattr(LightningStore, name))
    params = list(signature.parameters.values())[1:]  # without self
    positional = tuple(p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    # Each parameter's position (keyword-only ones past every position), to tell a keyword repeating a positional.
    order = {
        p.name: i if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else len(params) for i, p in enumerate(params)
    }
    return signature, positional, defaults, order


def bind_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of the protocol method `name` called with `args` and `kwargs`, defaults filled in.

    Raises TypeError as the call itself would for arguments that do not fit the signature.
    """
    signature, positional, defaults, order = _parameters(name)
    bound = defaults.copy()
    count = len(args)
    if count:
        if count > len(positional):
            signature.bind(None, *args, **kwargs)  # raises the TypeError the call deserves
        bound.update(zip(positional, args, strict=False))
    for key, value in kwargs.items():
        if order.get(key, -1) < count:  # unknown, or given positionally too
            signature.bind(None, *args, **kwargs)
        bound[key] = value
    if len(bound) != len(order):  # a required parameter is missing
        signature.bind(None, *args, **kwargs)
    return bound
