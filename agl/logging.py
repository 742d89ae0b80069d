"""Logging set-up: one readable format for every AGL process, showing time, level, role and pid.

    12:04:31.207 INFO    [runner pid=4242] agl.runner: claimed rollout ro-1a2b

The role is the one given to `set_role()`, else `AGL_CURRENT_ROLE`, else `main`. Every function here is
idempotent: calling it again replaces the handlers it installed instead of adding more.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from agl.env_var import LightningEnvVar

__all__ = [
    "DATE_FORMAT",
    "LOG_FORMAT",
    "AGLFormatter",
    "configure_logger",
    "get_role",
    "set_role",
    "setup",
    "setup_logging",
    "setup_module",
    "setup_module_logging",
]

BASE_LOGGER = "agl"
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s [%(role)s pid=%(process)d] %(name)s: %(message)s"
"""The format of every AGL log line."""
DATE_FORMAT = "%H:%M:%S"
"""The time format of `LOG_FORMAT`."""

_KIND_ATTR = "_agl_handler_kind"
_role: str | None = None

_COLORS = {
    logging.DEBUG: "\x1b[2m",
    logging.INFO: "\x1b[32m",
    logging.WARNING: "\x1b[33m",
    logging.ERROR: "\x1b[31m",
    logging.CRITICAL: "\x1b[1;31m",
}
_RESET = "\x1b[0m"


def set_role(role: str | None) -> None:
    """Set the role shown in log lines (None: fall back to `AGL_CURRENT_ROLE`)."""
    global _role
    if role is not None and not isinstance(role, str):
        raise TypeError(f"role must be a str or None, got {type(role).__name__}")
    _role = role


def get_role() -> str:
    """The role shown in log lines."""
    if _role is not None:
        return _role
    return os.environ.get(LightningEnvVar.AGL_CURRENT_ROLE.value) or "main"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "role"):
            record.role = get_role()
        return True


class AGLFormatter(logging.Formatter):
    """Formats records with `LOG_FORMAT` (or `fmt`), filling in the role; colours the level when `color`."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, *, color: bool = False) -> None:
        super().__init__(fmt or LOG_FORMAT, datefmt or DATE_FORMAT)
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        """Render one record."""
        if not hasattr(record, "role"):
            record.role = get_role()
        if not self.color:
            return super().format(record)
        original = record.levelname
        record.levelname = f"{_COLORS.get(record.levelno, '')}{original:<7}{_RESET}"
        try:
            return super().format(record)
        finally:
            record.levelname = original


def _level(value: int | str, argument: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{argument} must be a logging level name or number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        number = logging.getLevelName(value.strip().upper())
        if isinstance(number, int):
            return number
    raise ValueError(
        f"{argument} must be a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) or number, got {value!r}"
    )


def _use_color(color: bool | Mapping[str, Any], stream: IO[str]) -> bool:
    if not color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _formatter(formatter: logging.Formatter | str | None, color: bool) -> logging.Formatter:
    if isinstance(formatter, logging.Formatter):
        return formatter
    if formatter is None or isinstance(formatter, str):
        return AGLFormatter(formatter, color=color)
    raise TypeError(f"formatter must be a logging.Formatter, a format string or None, got {type(formatter).__name__}")


def _mark(handler: logging.Handler, kind: str, formatter: logging.Formatter) -> logging.Handler:
    setattr(handler, _KIND_ATTR, kind)
    handler.setFormatter(formatter)
    handler.addFilter(_RoleFilter())
    return handler


def _replace(logger: logging.Logger, kind: str, handlers: Iterable[logging.Handler]) -> None:
    """Remove the handlers of `kind` this module installed on `logger`, then add `handlers`."""
    for old in list(logger.handlers):
        if getattr(old, _KIND_ATTR, None) == kind:
            logger.removeHandler(old)
            old.close()
    for handler in handlers:
        logger.addHandler(handler)


def _console_handler(formatter: logging.Formatter | str | None, color: bool | Mapping[str, Any]) -> logging.Handler:
    stream = sys.stderr
    return _mark(logging.StreamHandler(stream), "console", _formatter(formatter, _use_color(color, stream)))


def _file_handler(path: str | os.PathLike[str], formatter: logging.Formatter | str | None) -> logging.Handler:
    return _mark(logging.FileHandler(os.fspath(path), encoding="utf-8"), "file", _formatter(formatter, False))


def _windows_utf8() -> None:
    if sys.platform == "win32":
        os.environ.setdefault("PYTHONUTF8", "1")


def setup(
    level: int | str = "INFO",
    *,
    console: bool = True,
    color: bool | Mapping[str, Any] = True,
    propagate: bool = False,
    disable_existing_loggers: bool = False,
    capture_warnings: bool = False,
    submodule_levels: Mapping[str, int | str] | None = None,
    extra_handlers: Sequence[logging.Handler] | None = None,
    formatter: logging.Formatter | str | None = None,
    apply_to: Sequence[str] | None = None,
    files: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]] | None = None,
) -> logging.Logger:
    """Configure the `agl` logger (exported as `setup_logging`) and return it.

    Args:
        level: level of the `agl` logger, as a name or number.
        console: log to stderr.
        color: colour the level name when stderr is a terminal (a dict counts as true).
        propagate: also pass records to the root logger.
        disable_existing_loggers: disable every other logger that exists already.
        capture_warnings: route `warnings.warn` messages through these handlers.
        submodule_levels: levels of `agl` sub-loggers, e.g. `{"agl.store": "DEBUG"}` (or `{"store": ...}`).
        extra_handlers: handlers to attach as well (each at most once).
        formatter: a Formatter or a format string replacing the default format.
        apply_to: other loggers (e.g. third-party libraries) that get the same handlers and stop propagating.
        files: a path (the `agl` logger also writes there), or a map of logger name → path.
    """
    base_level = _level(level, "level")
    _windows_utf8()
    base = logging.getLogger(BASE_LOGGER)
    base.setLevel(base_level)
    base.propagate = propagate

    def console_handlers() -> list[logging.Handler]:
        return [_console_handler(formatter, color)] if console else []

    _replace(base, "console", console_handlers())
    file_map: dict[str, str | os.PathLike[str]] = {}
    if isinstance(files, (str, os.PathLike)):
        file_map[BASE_LOGGER] = files
    elif isinstance(files, Mapping):
        file_map.update(files)
    elif files is not None:
        raise TypeError(f"files must be a path or a dict of logger name -> path, got {type(files).__name__}")
    _replace(base, "file", [_file_handler(file_map.pop(BASE_LOGGER), formatter)] if BASE_LOGGER in file_map else [])
    for logger_name, path in file_map.items():
        _replace(logging.getLogger(logger_name), "file", [_file_handler(path, formatter)])

    for handler in extra_handlers or ():
        if not isinstance(handler, logging.Handler):
            raise TypeError(f"extra_handlers must hold logging.Handler objects, got {type(handler).__name__}")
        if handler not in base.handlers:
            base.addHandler(handler)

    for name, sub_level in (submodule_levels or {}).items():
        full = name if name == BASE_LOGGER or name.startswith(BASE_LOGGER + ".") else f"{BASE_LOGGER}.{name}"
        logging.getLogger(full).setLevel(_level(sub_level, f"submodule_levels[{name!r}]"))

    for name in apply_to or ():
        target = logging.getLogger(name)
        target.setLevel(base_level)
        target.propagate = False
        _replace(target, "console", console_handlers())

    if capture_warnings:
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.propagate = False
        _replace(warnings_logger, "console", console_handlers())

    if disable_existing_loggers:
        keep = {BASE_LOGGER, "py.warnings", *(apply_to or ()), *file_map}
        for name, existing in list(logging.root.manager.loggerDict.items()):
            if not isinstance(existing, logging.Logger):
                continue
            if name in keep or name.startswith(BASE_LOGGER + ".") or any(name.startswith(k + ".") for k in keep):
                continue
            existing.disabled = True
    return base


def setup_module(
    level: int | str = "INFO",
    *,
    name: str = BASE_LOGGER,
    console: bool = True,
    color: bool | Mapping[str, Any] = True,
    propagate: bool = False,
    disable_existing_loggers: bool = False,
) -> logging.Logger:
    """Configure one logger (exported as `setup_module_logging`) with the AGL format and return it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty logger name, got {name!r}")
    logger_level = _level(level, "level")
    _windows_utf8()
    logger = logging.getLogger(name)
    logger.setLevel(logger_level)
    logger.propagate = propagate
    _replace(logger, "console", [_console_handler(None, color)] if console else [])
    if disable_existing_loggers:
        for other_name, existing in list(logging.root.manager.loggerDict.items()):
            if isinstance(existing, logging.Logger) and other_name != name and not other_name.startswith(name + "."):
                existing.disabled = True
    return logger


def configure_logger(level: int | str = logging.INFO, name: str = BASE_LOGGER) -> logging.Logger:
    """Deprecated: use `setup_logging`. Configures the logger `name` like `setup_module` and returns it."""
    warnings.warn(
        "configure_logger is deprecated; use agl.setup_logging(...) or agl.setup_module_logging(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    return setup_module(level, name=name, console=True, color=True, propagate=False)


setup_logging = setup
"""Alias of `setup`, exported at the top level."""
setup_module_logging = setup_module
"""Alias of `setup_module`, exported at the top level."""
