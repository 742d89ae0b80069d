"""The Trainer: one call to train an agent with an algorithm."""

from agl.trainer.init_utils import build_component
from agl.trainer.trainer import Trainer

__all__ = ["Trainer", "build_component"]
