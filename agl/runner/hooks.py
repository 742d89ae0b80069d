"""`Hook` for runners; defined in `agl.types.hook` (Agent Lightning keeps it with the core types)."""

from agl.types.hook import Hook

__all__ = ["Hook"]
