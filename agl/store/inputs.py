"""Argument checks, id generation and fast record building shared by the store backends."""

from __future__ import annotations

import os
import warnings
from typing import Any, TypeVar

from pydantic import BaseModel

from agl.types.core import RolloutConfig, RolloutMode

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "as_config",
    "as_metadata",
    "build_model",
    "check_int64",
    "check_mode",
    "check_worker_id",
    "copy_model",
    "has_health_rules",
    "new_id",
    "warn_deprecated_query_argument",
]

M = TypeVar("M", bound=BaseModel)

_MODES = ("train", "val", "test")

INT64_MAX = 2**63 - 1
"""The largest integer a store keeps in an integer column (SQLite's INTEGER, PostgreSQL's BIGINT)."""
INT64_MIN = -(2**63)
"""The smallest such integer."""


def check_int64(field: str, value: int) -> None:
    """Raise a ValueError naming `field` when `value` is outside signed 64-bit, so it never reaches a database."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{field} must be a signed 64-bit integer ({INT64_MIN}..{INT64_MAX}); got {value}")


def new_id(prefix: str, nbytes: int) -> str:
    """A random id such as `ro-` + 12 hex digits."""
    return prefix + os.urandom(nbytes).hex()


_set = object.__setattr__  # pydantic models refuse plain assignment of these slots


def build_model(cls: type[M], fields: dict[str, Any], extra: dict[str, Any] | None) -> M:
    """A model instance from already-valid field values (no validation: the store made or checked them)."""
    obj = cls.__new__(cls)
    _set(obj, "__dict__", fields)
    _set(obj, "__pydantic_fields_set__", set(fields))
    _set(obj, "__pydantic_extra__", dict(extra) if extra is not None else None)
    _set(obj, "__pydantic_private__", None)
    return obj


def assign(model: BaseModel, **values: Any) -> None:
    """Set fields of a stored model (no validation: the store made or checked the values).

    What `model.field = value` does on a model without `validate_assignment`, without pydantic's generic
    `__setattr__`, which is a measurable part of a span write on the server.
    """
    model.__dict__.update(values)
    model.__pydantic_fields_set__.update(values)


def copy_model(model: M) -> M:
    """A shallow copy of a stored model (what `model_copy()` does, without its generic overhead)."""
    return build_model(type(model), dict(model.__dict__), model.__pydantic_extra__)


def check_mode(mode: Any) -> RolloutMode | None:
    """`mode` if it is a rollout mode or None, else a ValueError naming the allowed values."""
    if mode is not None and mode not in _MODES:
        raise ValueError(f"mode {mode!r} is not a rollout mode; expected one of train, val, test or None")
    return mode  # type: ignore[no-any-return]


def as_config(config: RolloutConfig | dict[str, Any] | None) -> RolloutConfig:
    """A private copy of a rollout config (a fresh default for None; a dict is validated)."""
    if config is None:
        return RolloutConfig()
    if isinstance(config, RolloutConfig):
        return config.model_copy(deep=True)
    return RolloutConfig.model_validate(config)


def as_metadata(metadata: dict[str, Any] | None, field: str = "metadata") -> dict[str, Any]:
    """A shallow copy of rollout metadata (`{}` for None); anything but a dict is a ValueError naming `field`."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{field} must be a dict or None, got {type(metadata).__name__}")
    return dict(metadata)


def check_worker_id(worker_id: Any) -> None:
    """A ValueError unless `worker_id` is a string or None."""
    if worker_id is not None and not isinstance(worker_id, str):
        raise ValueError(f"worker_id must be a string or None, got {type(worker_id).__name__}")


def has_health_rules(config: RolloutConfig) -> bool:
    """Whether the health scan must watch a running rollout with this config."""
    return config.timeout_seconds is not None or config.unresponsive_seconds is not None


def warn_deprecated_query_argument(old: str, new: str) -> None:
    """Warn that `query_rollouts(old=...)` is deprecated in favour of `new=...`."""
    warnings.warn(f"query_rollouts({old}=...) is deprecated; use {new}=...", DeprecationWarning, stacklevel=3)


def rollout_changes(
    *, input: Any, mode: Any, resources_id: Any, status: Any, config: Any, metadata: Any
) -> dict[str, Any]:
    """The checked fields an `update_rollout` call sets (UNSET ones left out); `status` is checked, not included."""
    from agl.store import state
    from agl.types.core import UNSET

    changes: dict[str, Any] = {}
    if input is not UNSET:
        changes["input"] = input
    if mode is not UNSET:
        changes["mode"] = check_mode(mode)
    if resources_id is not UNSET:
        if resources_id is not None and not isinstance(resources_id, str):
            raise ValueError(f"resources_id must be a string or None, got {type(resources_id).__name__}")
        changes["resources_id"] = resources_id
    if status is not UNSET:
        state.check_rollout_status(status)
    if config is not UNSET:
        if config is None:
            raise ValueError("config cannot be None; pass a RolloutConfig (or leave it UNSET)")
        changes["config"] = as_config(config)
    if metadata is not UNSET:
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        changes["metadata"] = metadata
    return changes


def check_attempt_update(*, status: Any, worker_id: Any, last_heartbeat_time: Any, metadata: Any) -> None:
    """ValueErrors naming the field for bad `update_attempt` arguments (UNSET ones are skipped)."""
    from agl.store import state
    from agl.types.core import UNSET

    if status is not UNSET:
        state.check_attempt_status(status)
    if worker_id is not UNSET and worker_id is not None and not isinstance(worker_id, str):
        raise ValueError(f"worker_id must be a string or None, got {type(worker_id).__name__}")
    if last_heartbeat_time is not UNSET and last_heartbeat_time is not None:
        if not isinstance(last_heartbeat_time, (int, float)) or isinstance(last_heartbeat_time, bool):
            raise ValueError(f"last_heartbeat_time must be epoch seconds, got {last_heartbeat_time!r}")
    if metadata is not UNSET and metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict or None, got {type(metadata).__name__}")
