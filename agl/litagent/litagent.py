"""`LitAgent`: the base class of an agent that runs rollouts for AGL."""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from agl.types.core import Rollout
from agl.types.resources import NamedResources
from agl.types.rollout_result import RolloutRawResult
from agl.weak_owners import WeakOwners

if TYPE_CHECKING:
    from agl.runner.base import Runner
    from agl.tracer.base import Tracer

__all__ = ["LitAgent", "RolloutRawResult"]

T = TypeVar("T")


class LitAgent(WeakOwners, Generic[T]):
    """An agent AGL can train: override `rollout` (sync) or `rollout_async` (async).

    `training_rollout*` (used when the rollout's mode is "train") and `validation_rollout*` (otherwise) default to
    `rollout*`. A rollout receives the task, the resources to use and the rollout record, and returns a reward, a
    list of spans, or None.
    """

    _owner_refs = ("_trainer_ref", "_runner_ref")

    def __init__(self, *, trained_agents: str | None = None) -> None:
        if trained_agents is not None:
            warnings.warn("LitAgent(trained_agents=...) is deprecated and ignored", DeprecationWarning, stacklevel=2)
        self.trained_agents = trained_agents
        self._trainer_ref: weakref.ReferenceType[Any] | None = None
        self._runner_ref: weakref.ReferenceType[Any] | None = None

    # -- owners (weak references: the agent never keeps its trainer or runner alive) --------------------------

    def set_trainer(self, trainer: Any) -> None:
        """Remember the trainer driving this agent."""
        self._trainer_ref = weakref.ref(trainer)

    def get_trainer(self) -> Any:
        """The trainer driving this agent (ValueError if none is set or it is gone)."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            raise ValueError("This agent has no trainer: call set_trainer() first (Trainer.fit does it)")
        return trainer

    @property
    def trainer(self) -> Any:
        """The trainer driving this agent."""
        return self.get_trainer()

    def set_runner(self, runner: Runner[T]) -> None:
        """Remember the runner executing this agent."""
        self._runner_ref = weakref.ref(runner)

    def get_runner(self) -> Runner[T]:
        """The runner executing this agent (ValueError if none is set or it is gone)."""
        runner: Runner[T] | None = self._runner_ref() if self._runner_ref is not None else None
        if runner is None:
            raise ValueError("This agent has no runner: call set_runner() first (the runner does it in init)")
        return runner

    @property
    def runner(self) -> Runner[T]:
        """The runner executing this agent."""
        return self.get_runner()

    @property
    def tracer(self) -> Tracer:
        """The tracer of the runner, or else of the trainer."""
        try:
            return getattr(self.get_runner(), "tracer")  # type: ignore[no-any-return]  # noqa: B009
        except (ValueError, AttributeError):
            return self.get_trainer().tracer  # type: ignore[no-any-return]

    def get_tracer(self) -> Tracer:
        """The tracer of the runner, or else of the trainer (same as the `tracer` property)."""
        return self.tracer

    def is_async(self) -> bool:
        """True when the agent overrides an async rollout method."""
        cls = type(self)
        return any(
            getattr(cls, name) is not getattr(LitAgent, name)
            for name in ("rollout_async", "training_rollout_async", "validation_rollout_async")
        )

    # -- the rollout methods ----------------------------------------------------------------------------------
    def rollout(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """Run one task synchronously; return a reward, spans, or None."""
        raise NotImplementedError(f"{type(self).__name__} must override rollout() or rollout_async()")

    async def rollout_async(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """Run one task asynchronously; return a reward, spans, or None."""
        raise NotImplementedError(f"{type(self).__name__} must override rollout() or rollout_async()")

    def training_rollout(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """A training rollout (defaults to `rollout`)."""
        return self.rollout(task, resources, rollout)

    async def training_rollout_async(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """A training rollout (defaults to `rollout_async`)."""
        return await self.rollout_async(task, resources, rollout)

    def validation_rollout(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """A validation or test rollout (defaults to `rollout`)."""
        return self.rollout(task, resources, rollout)

    async def validation_rollout_async(self, task: T, resources: NamedResources, rollout: Rollout) -> RolloutRawResult:
        """A validation or test rollout (defaults to `rollout_async`)."""
        return await self.rollout_async(task, resources, rollout)

    # -- deprecated hooks (use agl.Hook) ----------------------------------------------------------------------
    def on_rollout_start(self, task: T, runner: Any, tracer: Any) -> None:
        """Deprecated: use a `Hook`. Called before a rollout."""

    def on_rollout_end(self, task: T, rollout: Any, runner: Any, tracer: Any) -> None:
        """Deprecated: use a `Hook`. Called after a rollout."""
