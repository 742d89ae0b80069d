"""`WeaveTracer`: Agent Lightning's tracer built on Weights & Biases Weave, which AGL does not ship.

The name exists so imports keep working; constructing it raises and names the replacement (`OtelTracer`). See
docs/compatibility.md.
"""

from __future__ import annotations

from typing import Any

from agl.tracer.base import Tracer

__all__ = ["WeaveTracer"]


class WeaveTracer(Tracer):
    """Not provided by AGL: raises `NotImplementedError` naming `agl.OtelTracer` as the replacement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "AGL does not ship WeaveTracer (it depends on Weights & Biases Weave). Use agl.OtelTracer, which records "
            "OpenTelemetry spans into the store. See docs/compatibility.md."
        )
