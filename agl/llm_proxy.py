"""`LLMProxy` under Agent Lightning's module path; implemented in `agl.llm.proxy` (imported on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["LLMProxy"]


def __getattr__(name: str) -> Any:
    if name == "LLMProxy":
        return importlib.import_module("agl.llm.proxy").LLMProxy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from agl.llm.proxy import LLMProxy
