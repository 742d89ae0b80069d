"""State changes a store reports to listeners in its own process: metrics and the dashboard read them.

A store emits one event per committed status change of a rollout or an attempt (creation included, with
`old=None`), and one per write it refused because the attempt no longer holds its rollout. Listeners run synchronously inside the store's call, so they must be cheap and must never call the store;
one that raises is logged and skipped, never breaking the store. With no listener an emit point costs one attribute
test. A store reached over HTTP reports nothing here: subscribe to the server process's store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agl.types.core import Attempt, AttemptStatus, Rollout, RolloutMode, RolloutStatus

__all__ = [
    "AttemptTransition",
    "RolloutTransition",
    "StaleWriteRefused",
    "StoreEvent",
    "StoreEvents",
    "StoreListener",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RolloutTransition:
    """A rollout entered `new` at `time` (epoch seconds); `old` is None when the rollout was just created."""

    rollout_id: str
    old: RolloutStatus | None
    new: RolloutStatus
    time: float
    mode: RolloutMode | None
    resources_id: str | None

    @classmethod
    def of(cls, rollout: Rollout, old: RolloutStatus | None, new: RolloutStatus, time: float) -> RolloutTransition:
        """The event of `rollout` moving from `old` to `new`."""
        return cls(rollout.rollout_id, old, new, time, rollout.mode, rollout.resources_id)


@dataclass(frozen=True, slots=True)
class AttemptTransition:
    """An attempt entered `new` at `time` (epoch seconds); `old` is None when the attempt was just created."""

    rollout_id: str
    attempt_id: str
    sequence_id: int
    worker_id: str | None
    old: AttemptStatus | None
    new: AttemptStatus
    time: float

    @classmethod
    def of(cls, attempt: Attempt, old: AttemptStatus | None, time: float) -> AttemptTransition:
        """The event of `attempt` having moved from `old` to its current status."""
        return cls(
            attempt.rollout_id, attempt.attempt_id, attempt.sequence_id, attempt.worker_id, old, attempt.status, time
        )


@dataclass(frozen=True, slots=True)
class StaleWriteRefused:
    """A status or heartbeat write of an attempt that no longer holds its rollout was refused (fencing)."""

    rollout_id: str
    attempt_id: str
    current_attempt_id: str | None
    time: float


StoreEvent = RolloutTransition | AttemptTransition | StaleWriteRefused
StoreListener = Callable[[StoreEvent], None]


class StoreEvents:
    """The listeners of one store and the fan-out of its events to them."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: tuple[StoreListener, ...] = ()

    @property
    def active(self) -> bool:
        """Whether anyone listens (emit points skip building events otherwise)."""
        return bool(self._listeners)

    def subscribe(self, listener: StoreListener) -> Callable[[], None]:
        """Call `listener` with every later event; returns a function that unsubscribes it."""
        self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            self._listeners = tuple(item for item in self._listeners if item is not listener)

        return unsubscribe

    def emit(self, event: StoreEvent) -> None:
        """Hand `event` to every listener; a listener's failure is logged and does not reach the store."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("store event listener %r failed on %r", listener, event)
