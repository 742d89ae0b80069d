"""Agents: the `LitAgent` base class and decorators that turn functions into agents."""

from agl.litagent.decorator import FunctionalLitAgent, llm_rollout, prompt_rollout, rollout
from agl.litagent.litagent import LitAgent, RolloutRawResult

__all__ = ["FunctionalLitAgent", "LitAgent", "RolloutRawResult", "llm_rollout", "prompt_rollout", "rollout"]
