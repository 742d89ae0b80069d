"""Sizes on the command line: bytes with optional units (`512M`, `2GiB`, `1.5 GB`) or a share of memory (`70%`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pydantic import ByteSize, TypeAdapter, ValidationError

__all__ = ["memory_size", "size"]

_BYTES: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)
_EXAMPLES = "e.g. 1073741824, 512M, 2GiB or 1.5GB"


def _parse_bytes(text: str) -> int:
    if not text.strip()[-1:].isalnum():  # ByteSize would read "12%" as 12 bytes
        raise argparse.ArgumentTypeError(f"{text!r} is not a size ({_EXAMPLES})")
    try:
        value = int(_BYTES.validate_python(text.strip()))
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; give bytes with an optional unit ({_EXAMPLES}; K/M/G are powers of 1000, "
            "KiB/MiB/GiB powers of 1024)"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive size ({_EXAMPLES})")
    return value


def size(text: str) -> int:
    """An argparse type: a positive number of bytes, with an optional unit."""
    return _parse_bytes(text)


def memory_size(total_memory: Callable[[], int] | None = None) -> Callable[[str], int]:
    """An argparse type: like `size`, or a percentage (`70%`) of this machine's physical memory."""

    def parse(text: str) -> int:
        stripped = text.strip()
        if not stripped.endswith("%"):
            return _parse_bytes(stripped)
        try:
            percent = float(stripped[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (e.g. 70%)") from None
        if not 0 < percent <= 100:
            raise argparse.ArgumentTypeError(f"{text!r} must be a percentage above 0% and at most 100%")
        if total_memory is not None:
            total = total_memory()
        else:
            import psutil

            total = int(psutil.virtual_memory().total)
        return int(total * percent / 100)

    return parse
