"""Importing modules that need an optional dependency, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`; if one of its dependencies is missing, raise ImportError naming `pip install 'agl[extra]'`.

    `what` names the feature in the message (e.g. "LightningStoreClient").
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == "agl" or exc.name.startswith("agl.")):
            raise
        raise ImportError(
            f"{what} needs the optional dependency {exc.name!r}: install it with pip install 'agl[{extra}]'"
        ) from exc
