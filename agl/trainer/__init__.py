"""The Trainer: one call to train an agent with an algorithm."""

from agl.trainer.trainer import Trainer

__all__ = ["Trainer"]
