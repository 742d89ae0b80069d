"""Span memory budget: machine capacity and the eviction / safe thresholds derived from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["MemoryBudget", "detect_memory_capacity", "resolve_threshold"]

logger = logging.getLogger(__name__)

_FALLBACK_CAPACITY = 8 * 1024**3


def detect_memory_capacity() -> int:
    """Total physical memory in bytes (8 GiB, with an error logged, when psutil cannot tell)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception as exc:  # psutil missing or unsupported platform
        logger.error("Cannot read total memory (%s); assuming 8 GiB for the span budget.", exc)
        return _FALLBACK_CAPACITY


def resolve_threshold(name: str, value: float | int, capacity: int, *, zero_ratio_ok: bool, minimum: int) -> int:
    """Turn a threshold given as a ratio of `capacity` (float) or a byte count (int) into bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a ratio (float) or a byte count (int), not a bool")
    if isinstance(value, float):
        if zero_ratio_ok:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} ratio must be between 0 and 1 inclusive (got {value})")
        elif not 0.0 < value <= 1.0:
            raise ValueError(f"{name} ratio must be greater than 0 and at most 1 (got {value})")
        result = int(capacity * value)
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must be non-negative (got {value})")
        result = value
    else:
        raise ValueError(f"{name} must be a ratio (float) or a byte count (int), got {type(value).__name__}")
    if result < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes (got {result})")
    return result


@dataclass(frozen=True)
class MemoryBudget:
    """How many span bytes a store may hold: above `eviction_bytes` it sheds spans down to `safe_bytes`."""

    capacity_bytes: int
    eviction_bytes: int
    safe_bytes: int

    @classmethod
    def resolve(
        cls,
        eviction_memory_threshold: float | int | None = None,
        safe_memory_threshold: float | int | None = None,
        capacity_bytes: int | None = None,
    ) -> MemoryBudget:
        """Build a budget: eviction defaults to 0.7 of capacity, safe to 0.8 of the eviction threshold."""
        capacity = detect_memory_capacity() if capacity_bytes is None else capacity_bytes
        if capacity <= 0:
            raise ValueError(f"memory capacity must be positive (got {capacity} bytes)")
        eviction = resolve_threshold(
            "eviction_memory_threshold",
            0.7 if eviction_memory_threshold is None else eviction_memory_threshold,
            capacity,
            zero_ratio_ok=False,
            minimum=1,
        )
        if safe_memory_threshold is None:
            safe = int(0.8 * eviction)
        else:
            safe = resolve_threshold(
                "safe_memory_threshold", safe_memory_threshold, capacity, zero_ratio_ok=True, minimum=0
            )
        if not 0 <= safe < eviction:
            raise ValueError(
                "safe_memory_threshold must be smaller than eviction_memory_threshold "
                f"(safe={safe} bytes, eviction={eviction} bytes)"
            )
        return cls(capacity_bytes=capacity, eviction_bytes=eviction, safe_bytes=safe)
