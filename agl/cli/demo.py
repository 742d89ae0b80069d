"""`agl demo`: see `agl.demo.run`."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GRPO demo with command-line options."""
    from agl.demo.run import main as run

    return run(argv)
