"""`VERL`: Agent Lightning's bridge to the verl RL library (GPU, Ray); AGL does not ship it.

The name exists so imports keep working; constructing it raises and names AGL's replacement, GRPO
(`agl.algorithm.grpo.GRPO`, with the `llm` extra). See docs/compatibility.md.
"""

from __future__ import annotations

from typing import Any

from agl.algorithm.base import Algorithm

__all__ = ["VERL"]


class VERL(Algorithm):
    """Not provided by AGL: constructing it raises `NotImplementedError` naming the replacement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "AGL does not ship VERL (Agent Lightning's verl/Ray bridge); no AGL issue plans it. For RL use "
            "agl.algorithm.grpo.GRPO (pip install 'agl[llm]'), which trains through the same store and runners. "
            "See docs/compatibility.md."
        )
