"""Where AGL's own event loops come from: uvloop's when it is installed (and wanted), else asyncio's."""

from __future__ import annotations

import asyncio

__all__ = ["new_event_loop"]


def new_event_loop(fast: bool = True) -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's when `fast` and uvloop is installed, else asyncio's."""
    if fast:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
