"""Errors a store raises that callers may want to tell apart (all keep the builtin base the spec names)."""

from __future__ import annotations

__all__ = ["StoreFullError"]


class StoreFullError(RuntimeError):
    """The store has no room for more spans (memory budget spent and the disk spill full). Retry later.

    Nothing already stored is lost; the call that raised stored nothing. Over HTTP this is status 507.
    """

    retryable = True
