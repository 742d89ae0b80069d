"""The AGL_* environment variables and the one place they are parsed.

Precedence everywhere: an explicit argument (`override`) > the environment variable > the default (`fallback`).
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Literal, overload

__all__ = [
    "BOOL_FALSE_VALUES",
    "BOOL_TRUE_VALUES",
    "ROLES",
    "LightningEnvVar",
    "resolve_bool_env_var",
    "resolve_current_role",
    "resolve_int_env_var",
    "resolve_str_env_var",
]


class LightningEnvVar(str, Enum):
    """Environment variables AGL reads."""

    AGL_EMITTER_DEBUG = "AGL_EMITTER_DEBUG"
    """bool: declared as Agent Lightning has it; AGL ignores it."""
    AGL_MANAGED_STORE = "AGL_MANAGED_STORE"
    """bool (default true): whether execution strategies wrap the store they are given."""
    AGL_CURRENT_ROLE = "AGL_CURRENT_ROLE"
    """str, one of `algorithm` / `runner` / `both` (default `both`): the role of this process."""
    AGL_SERVER_HOST = "AGL_SERVER_HOST"
    """str (default `localhost`): host of the store server in client-server execution."""
    AGL_SERVER_PORT = "AGL_SERVER_PORT"
    """int (default 4747): port of the store server in client-server execution."""
    AGL_METRICS_PORT = "AGL_METRICS_PORT"
    """int (default: unset, off): runner `i` of the client-server strategy serves its Prometheus metrics on
    127.0.0.1 at this port + i."""

    AGL_WORKER_ID_PREFIX = "AGL_WORKER_ID_PREFIX"
    """str (default empty): put before runners' worker ids (`<prefix>Worker-<n>`), so runners started on several
    machines keep distinct ids in one store; `agl runner` sets `<hostname>-<pid>-`."""

    def __str__(self) -> str:
        return self.value


BOOL_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
"""Accepted spellings of true (case-insensitive, surrounding spaces ignored)."""
BOOL_FALSE_VALUES = frozenset({"0", "false", "no", "off"})
"""Accepted spellings of false (case-insensitive, surrounding spaces ignored)."""
ROLES: tuple[str, ...] = ("algorithm", "runner", "both")
"""Accepted values of `AGL_CURRENT_ROLE`."""

Role = Literal["algorithm", "runner", "both"]


def _name(var: LightningEnvVar | str) -> str:
    if isinstance(var, LightningEnvVar):
        return var.value
    if isinstance(var, str) and var:
        return var
    raise TypeError(f"var must be a LightningEnvVar or a variable name, got {var!r}")


def _sorted_set(values: frozenset[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}"


@overload
def resolve_bool_env_var(env_var: LightningEnvVar | str, override: bool | None = None, *, fallback: bool) -> bool: ...
@overload
def resolve_bool_env_var(env_var: LightningEnvVar | str, override: bool, fallback: bool | None = None) -> bool: ...
@overload
def resolve_bool_env_var(
    env_var: LightningEnvVar | str, override: bool | None = None, fallback: bool | None = None
) -> bool | None: ...
def resolve_bool_env_var(
    env_var: LightningEnvVar | str, override: bool | None = None, fallback: bool | None = None
) -> bool | None:
    """`override` if not None, else the variable parsed as a bool, else `fallback` when it is unset.

    Raises:
        ValueError: the variable is set to something other than 1/true/yes/on or 0/false/no/off.
    """
    if override is not None:
        return override
    name = _name(env_var)
    raw = os.environ.get(name)
    if raw is None:
        return fallback
    value = raw.strip().lower()
    if value in BOOL_TRUE_VALUES:
        return True
    if value in BOOL_FALSE_VALUES:
        return False
    raise ValueError(
        f"{name} must be one of {_sorted_set(BOOL_TRUE_VALUES)} or {_sorted_set(BOOL_FALSE_VALUES)}, got {raw!r}"
    )


@overload
def resolve_int_env_var(env_var: LightningEnvVar | str, override: int | None = None, *, fallback: int) -> int: ...
@overload
def resolve_int_env_var(env_var: LightningEnvVar | str, override: int, fallback: int | None = None) -> int: ...
@overload
def resolve_int_env_var(
    env_var: LightningEnvVar | str, override: int | None = None, fallback: int | None = None
) -> int | None: ...
def resolve_int_env_var(
    env_var: LightningEnvVar | str, override: int | None = None, fallback: int | None = None
) -> int | None:
    """`override` if not None, else the variable parsed as an integer, else `fallback` when it is unset.

    Raises:
        ValueError: the variable is set but is not an integer.
    """
    if override is not None:
        return override
    name = _name(env_var)
    raw = os.environ.get(name)
    if raw is None:
        return fallback
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@overload
def resolve_str_env_var(env_var: LightningEnvVar | str, override: str | None = None, *, fallback: str) -> str: ...
@overload
def resolve_str_env_var(env_var: LightningEnvVar | str, override: str, fallback: str | None = None) -> str: ...
@overload
def resolve_str_env_var(
    env_var: LightningEnvVar | str, override: str | None = None, fallback: str | None = None
) -> str | None: ...
def resolve_str_env_var(
    env_var: LightningEnvVar | str, override: str | None = None, fallback: str | None = None
) -> str | None:
    """`override` if not None, else the variable's raw value (an empty string included), else `fallback`."""
    if override is not None:
        return override
    raw = os.environ.get(_name(env_var))
    return fallback if raw is None else raw


def resolve_current_role(override: str | None = None, fallback: Role = "both") -> Role:
    """This process's role: `override`, else `AGL_CURRENT_ROLE`, else `fallback`.

    Raises:
        ValueError: the role is not one of algorithm / runner / both.
    """
    source = "role" if override is not None else LightningEnvVar.AGL_CURRENT_ROLE.value
    value = resolve_str_env_var(LightningEnvVar.AGL_CURRENT_ROLE, override, fallback)
    for role in ROLES:
        if value == role:
            return role  # type: ignore[return-value]
    raise ValueError(f"{source} must be one of {list(ROLES)}, got {value!r}")
