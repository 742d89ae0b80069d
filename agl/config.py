"""`lightning_cli`: build objects from command-line flags derived from their constructors' parameters.

Each parameter `p` of `Cls.__init__` becomes the flag `--cls.p` (class name lower-cased, `_` in `p` written `-`).
Types follow the annotations: `int`, `float`, `str`, `bool` (true/false, yes/no, 1/0), `Optional[...]` (also
accepts none/null), `list[...]` (zero or more values). A parameter without a default that is not Optional is
required.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin

__all__ = ["lightning_cli"]

_NONE_WORDS = frozenset({"none", "null", "nil", "~"})
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "on"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "off"})


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {text!r}")


def _nullable(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in _NONE_WORDS else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `None`, whether `None` was allowed)."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) < len(get_args(annotation)):
            return (members[0] if len(members) == 1 else Union[tuple(members)]), True  # noqa: UP007 - built at runtime
    return annotation, False


def _scalar_parser(annotation: Any) -> Callable[[str], Any]:
    if annotation is bool:
        return _parse_bool
    if annotation in (int, float, str):
        return typing.cast(Callable[[str], Any], annotation)
    return str


def _add_flag(parser: argparse.ArgumentParser, cls: type, param: inspect.Parameter, hint: Any, dest: str) -> None:
    core, optional = _unwrap_optional(hint)
    kwargs: dict[str, Any] = {"dest": dest}
    if get_origin(core) in (list, typing.List):  # noqa: UP006 - `typing.List[...]` annotations have this origin too
        item_args = get_args(core)
        item, item_optional = _unwrap_optional(item_args[0]) if item_args else (str, False)
        parse = _scalar_parser(item)
        kwargs.update(nargs="*", type=_nullable(parse) if item_optional else parse)
    else:
        parse = _scalar_parser(core)
        kwargs["type"] = _nullable(parse) if optional else parse
    has_default = param.default is not inspect.Parameter.empty
    if has_default:
        kwargs["default"] = param.default
    elif optional:
        kwargs["default"] = None
    else:
        kwargs["required"] = True
    kwargs["help"] = f"{cls.__name__}({param.name}=...)"
    parser.add_argument(f"--{cls.__name__.lower()}.{param.name.replace('_', '-')}", **kwargs)


def _constructor_params(cls: type) -> list[tuple[inspect.Parameter, Any]]:
    init = cls.__init__  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations (e.g. names imported under TYPE_CHECKING): treat as strings
        hints = {}
    params = []
    for name, param in inspect.signature(init).parameters.items():
        if name == "self" or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        params.append((param, hints.get(name, str)))
    return params


def lightning_cli(*classes: type) -> Any:
    """Parse `sys.argv` into constructor arguments for each class and return the instance (one class) or a tuple
    of instances in the order given (`()` for no classes). Bad or missing flags exit with argparse's usage error.
    """
    if not classes:
        return ()
    parser = argparse.ArgumentParser(
        description="Configure components from the command line.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plans: list[tuple[type, dict[str, str]]] = []
    for cls in classes:
        dests: dict[str, str] = {}
        for param, hint in _constructor_params(cls):
            dest = f"{cls.__name__.lower()}_{param.name}"
            _add_flag(parser, cls, param, hint, dest)
            dests[param.name] = dest
        plans.append((cls, dests))
    args = parser.parse_args()
    instances = tuple(cls(**{name: getattr(args, dest) for name, dest in dests.items()}) for cls, dests in plans)
    return instances[0] if len(instances) == 1 else instances
