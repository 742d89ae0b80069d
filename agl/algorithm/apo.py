"""`APO` (automatic prompt optimisation): the public name exists; the algorithm itself is issue 17's work.

Constructing it raises `NotImplementedError` until then. See docs/compatibility.md.
"""

from __future__ import annotations

from typing import Any

from agl.algorithm.base import Algorithm

__all__ = ["APO"]


class APO(Algorithm):
    """Not implemented yet (issue 17): constructing it raises `NotImplementedError`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "agl.APO is not implemented yet (tracked as issue 17: prompt optimisation with a critic model). "
            "Until then use agl.algorithm.grpo.GRPO or write your own with @agl.algo. See docs/compatibility.md."
        )
