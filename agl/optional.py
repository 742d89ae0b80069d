"""Importing modules that need an optional dependency, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRA_OF_MODULE", "import_module", "import_optional"]

EXTRA_OF_MODULE: dict[str, str] = {
    "agl.tracer.otel": "tracing",
    "agl.tracer.otel_capture": "tracing",
}
"""AGL modules that need an optional dependency, and the extra that brings it."""


def import_module(module: str, what: str) -> ModuleType:
    """Import one of AGL's modules; for one in `EXTRA_OF_MODULE`, a missing dependency names its extra."""
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return importlib.import_module(module)
    return import_optional(module, extra, what)


def import_optional(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`; if one of its dependencies is missing, raise ImportError naming `pip install 'agl[extra]'`.

    `what` names the feature in the message (e.g. "LightningStoreClient").
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # A missing package (ModuleNotFoundError), or a name missing from a namespace package that another
        # distribution half-provides (`from opentelemetry import context` with only opentelemetry-proto installed).
        if exc.name is None or exc.name == "agl" or exc.name.startswith("agl."):
            raise
        raise ImportError(
            f"{what} needs the optional dependency {exc.name!r}: install it with pip install 'agl[{extra}]'"
        ) from exc
