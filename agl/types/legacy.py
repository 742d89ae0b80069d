"""The data models of Agent Lightning's 0.1 task server, kept so code that names them still imports.

AGL has no 0.1 task server: these are plain models, not wired to any route (use `LightningStore` instead).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agl.types.core import Triplet

__all__ = ["GenericResponse", "RolloutLegacy", "RolloutRawResultLegacy", "Task", "TaskIfAny"]


class Task(BaseModel):
    """A task handed out by a 0.1 server (AGL's equivalent is a `Rollout`)."""

    rollout_id: str
    input: Any
    mode: Literal["train", "val", "test"] | None = None
    resources_id: str | None = None
    create_time: float | None = None
    last_claim_time: float | None = None
    num_claims: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class TaskIfAny(BaseModel):
    """A 0.1 server's answer to a poll: a task if one is available."""

    is_available: bool
    task: Task | None = None


class GenericResponse(BaseModel):
    """A 0.1 server's status reply."""

    status: str = "success"
    message: str | None = None
    data: dict[str, Any] | None = None


class RolloutLegacy(BaseModel):
    """The result of a 0.1 rollout as a 0.1 client reported it."""

    rollout_id: str
    task: Task | None = None
    final_reward: float | None = None
    triplets: list[Triplet] | None = None
    trace: list[dict[str, Any]] | None = None
    logs: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


RolloutRawResultLegacy = None | float | list[Triplet] | list[dict[str, Any]] | list[Any] | RolloutLegacy
"""What a 0.1 agent's rollout could return."""
