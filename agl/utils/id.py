"""`generate_id`: random identifiers."""

from __future__ import annotations

import secrets

__all__ = ["generate_id"]


def generate_id(length: int) -> str:
    """A random lowercase hexadecimal string of `length` characters.

    Raises:
        ValueError: `length` is negative.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return secrets.token_hex((length + 1) // 2)[:length]
