"""Deprecated module path of the reward helpers (as in Agent Lightning); use `agl.emitter` (implementation:
`agl.emitter.reward`). Importing it warns with a `DeprecationWarning`.
"""

import warnings

from agl.emitter.reward import (
    emit_reward,
    find_final_reward,
    find_reward_spans,
    get_reward_value,
    get_rewards_from_span,
    is_reward_span,
    reward,
)

__all__ = [
    "emit_reward",
    "find_final_reward",
    "find_reward_spans",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
    "reward",
]

warnings.warn("agl.reward is deprecated; import these names from agl.emitter", DeprecationWarning, stacklevel=2)
