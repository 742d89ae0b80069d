"""Runners: the workers that claim rollouts from the store and run an agent on them."""

from agl.runner.agent import LitAgentRunner
from agl.runner.base import Runner
from agl.runner.hooks import Hook

__all__ = ["Hook", "LitAgentRunner", "Runner"]
