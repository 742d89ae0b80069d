"""How a `LightningStoreServer` is launched: Agent Lightning 0.3's `launch_mode`, `launcher_args` and `n_workers`.

Upstream passes these to its generic uvicorn/gunicorn launcher. AGL's server maps them onto its own lifecycle:
`"thread"` serves from a background thread (`start()`), `"asyncio"` on the caller's event loop (`await start()`).
`"mp"` (a server process sharing a zero-copy store) and several workers are refused with what to use instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LaunchMode", "LaunchSettings", "resolve_launch"]

LaunchMode = Literal["thread", "asyncio", "mp"]
"""Where the server runs: a background thread, the caller's event loop, or (upstream only) another process."""

DEFAULT_HOST = "127.0.0.1"
"""The address bound when none is given: this machine only (pass `"0.0.0.0"` to serve other machines)."""

_LAUNCH_MODES = ("thread", "asyncio", "mp")
_IGNORED_FIELDS = frozenset({"healthcheck_url", "kill_unhealthy_server", "process_join_timeout"})
_FIELDS = frozenset(
    {"host", "port", "access_host", "launch_mode", "n_workers", "log_level", "access_log", "startup_timeout"}
    | {"thread_join_timeout", "timeout_keep_alive"}
    | _IGNORED_FIELDS
)


@dataclass(frozen=True)
class LaunchSettings:
    """The launch options `LightningStoreServer` honours, after checking."""

    host: str | None
    port: int | None
    launch_mode: Literal["thread", "asyncio"]
    access_host: str | None = None
    log_level: str | None = None
    startup_timeout: float | None = None
    stop_timeout: float | None = None
    timeout_keep_alive: int | None = None


def _fields_of(launcher_args: Any) -> dict[str, Any]:
    if isinstance(launcher_args, Mapping):
        return dict(launcher_args)
    if dataclasses.is_dataclass(launcher_args) and not isinstance(launcher_args, type):
        return {field.name: getattr(launcher_args, field.name) for field in dataclasses.fields(launcher_args)}
    if hasattr(launcher_args, "__dict__"):
        return {k: v for k, v in vars(launcher_args).items() if not k.startswith("_")}
    raise ValueError(
        f"launcher_args must be a mapping or an object with attributes (like Agent Lightning's "
        f"PythonServerLauncherArgs), got {type(launcher_args).__name__}"
    )


def _log_level_name(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError(f"launcher_args log_level must be a logging level or its name, got {value!r}")
    if isinstance(value, int):
        return logging.getLevelName(value).lower()
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    raise ValueError(f"launcher_args log_level must be a logging level or its name, got {value!r}")


def resolve_launch(
    host: str | None,
    port: int | None,
    launch_mode: str,
    launcher_args: Any,
    n_workers: int,
    capabilities: Mapping[str, Any],
) -> LaunchSettings:
    """Check the upstream launch options and say how AGL's server honours them.

    Raises:
        ValueError: naming the parameter, when a value is invalid or asks for what AGL's server does not do
            (`launch_mode="mp"`, `n_workers` other than 1, host/port/launch_mode given together with
            `launcher_args`, an unknown `launcher_args` field).
    """
    extra: dict[str, Any] = {}
    if launcher_args is not None:
        if host is not None or port is not None or launch_mode != "thread":
            raise ValueError(
                "host, port and launch_mode cannot be given together with launcher_args; put them in launcher_args"
            )
        fields = _fields_of(launcher_args)
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise ValueError(
                f"launcher_args has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
            )
        # Agent Lightning's launcher picks a free port when launcher_args give none.
        host, port = fields.get("host"), fields.get("port")
        if port is None:
            port = 0
        # Agent Lightning's launcher defaults to "asyncio" when launcher_args are given without a mode.
        launch_mode = fields.get("launch_mode") or "asyncio"
        n_workers = fields.get("n_workers", 1)
        if fields.get("access_log"):
            raise ValueError("launcher_args access_log=True: AGL's store server keeps no access log; leave it False")
        if fields.get("log_level") is not None:
            extra["log_level"] = _log_level_name(fields["log_level"])
        for source, target in (
            ("access_host", "access_host"),
            ("startup_timeout", "startup_timeout"),
            ("thread_join_timeout", "stop_timeout"),
        ):
            if fields.get(source) is not None:
                extra[target] = fields[source]
        keep_alive = fields.get("timeout_keep_alive")
        if keep_alive is not None:
            if isinstance(keep_alive, bool) or not isinstance(keep_alive, int) or keep_alive < 0:
                raise ValueError(f"launcher_args timeout_keep_alive must be whole seconds >= 0, got {keep_alive!r}")
            extra["timeout_keep_alive"] = keep_alive
    if launch_mode not in _LAUNCH_MODES:
        raise ValueError(f"launch_mode must be 'thread', 'asyncio' or 'mp', got {launch_mode!r}")
    if launch_mode == "mp":
        if not capabilities.get("zero_copy", False):
            raise ValueError(
                "launch_mode='mp' needs a zero-copy store (one whose copy in another process shares its state); "
                "this store is not: use launch_mode='thread' or 'asyncio', or run `agl store` as its own process"
            )
        raise ValueError(
            "launch_mode='mp' is not provided by AGL: serve the store from its own process with `agl store` and "
            "connect LightningStoreClient to it, or use launch_mode='thread' or 'asyncio'"
        )
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if n_workers != 1:
        raise ValueError(
            f"n_workers={n_workers}: AGL serves a store from one process on one event loop (upstream uses several "
            "workers only with launch_mode='mp'); pass n_workers=1"
        )
    mode: Literal["thread", "asyncio"] = "thread" if launch_mode == "thread" else "asyncio"
    return LaunchSettings(host=host, port=port, launch_mode=mode, **extra)
