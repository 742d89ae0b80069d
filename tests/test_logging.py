"""agl.logging: the one format, roles, idempotence and the setup options."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import agl

# Imported under other names: pytest runs module-level functions called `setup` / `setup_module` as fixtures.
from agl.logging import LOG_FORMAT, configure_logger, get_role, set_role
from agl.logging import setup as setup_logging
from agl.logging import setup_module as setup_module_logging

LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} (?P<level>\w+)\s+\[(?P<role>[\w-]+) pid=(?P<pid>\d+)\] (?P<name>[\w.]+): (?P<msg>.*)$"
)


def _snapshot(name: str) -> tuple[logging.Logger, list[logging.Handler], int, bool, bool]:
    logger = logging.getLogger(name)
    return logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AGL_CURRENT_ROLE", raising=False)
    names = ["agl", "agl.store", "agl.runner", "thirdparty", "thirdparty.files", "py.warnings"]
    saved = [_snapshot(n) for n in names]
    existing = {n: lg.disabled for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    set_role(None)
    logging.captureWarnings(False)
    for logger, handlers, level, propagate, disabled in saved:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled
    for name, disabled in existing.items():
        logger = logging.root.manager.loggerDict.get(name)
        if isinstance(logger, logging.Logger):
            logger.disabled = disabled


def lines(text: str) -> list[re.Match[str]]:
    found = [LINE.match(line) for line in text.splitlines() if line]
    assert all(found), text
    return [m for m in found if m is not None]


def test_format_shows_time_level_role_and_pid(capsys: pytest.CaptureFixture[str]) -> None:
    import os

    setup_logging("INFO", color=False)
    logging.getLogger("agl.runner").info("claimed %s", "ro-1")
    logging.getLogger("agl.runner").debug("hidden")
    (line,) = lines(capsys.readouterr().err)
    assert line["level"] == "INFO"
    assert line["role"] == "main"
    assert int(line["pid"]) == os.getpid()
    assert line["name"] == "agl.runner"
    assert line["msg"] == "claimed ro-1"


def test_role_comes_from_set_role_then_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_logging(color=False)
    log = logging.getLogger("agl")
    monkeypatch.setenv("AGL_CURRENT_ROLE", "algorithm")
    log.warning("a")
    set_role("runner-2")
    assert get_role() == "runner-2"
    log.warning("b")
    set_role(None)
    log.warning("c")
    assert [m["role"] for m in lines(capsys.readouterr().err)] == ["algorithm", "runner-2", "algorithm"]
    with pytest.raises(TypeError, match="role must be"):
        set_role(3)  # type: ignore[arg-type]


def test_setup_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    base = logging.getLogger("agl")
    before = len(base.handlers)
    for _ in range(3):
        setup_logging("DEBUG", color=False)
    assert len(base.handlers) == before + 1
    with pytest.warns(DeprecationWarning, match="configure_logger is deprecated"):
        configure_logger(logging.INFO)
    assert len(base.handlers) == before + 1
    assert base.level == logging.INFO
    setup_module_logging("WARNING", name="agl")
    assert len(base.handlers) == before + 1
    base.error("once")
    assert len(lines(capsys.readouterr().err)) == 1


def test_levels_by_name_or_number_and_bad_levels() -> None:
    assert setup_logging("debug", console=False).level == logging.DEBUG
    assert setup_logging(logging.ERROR, console=False).level == logging.ERROR
    with pytest.raises(ValueError, match="level must be a logging level"):
        setup_logging("LOUD")
    with pytest.raises(ValueError, match=r"submodule_levels\['store'\] must be"):
        setup_logging(submodule_levels={"store": "NOPE"})
    with pytest.raises(ValueError, match="name must be"):
        setup_module_logging(name="")


def test_submodule_levels(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING", color=False, submodule_levels={"store": "DEBUG"})
    assert logging.getLogger("agl.store").level == logging.DEBUG
    logging.getLogger("agl.store").debug("store detail")
    logging.getLogger("agl.runner").info("runner detail")
    assert [m["msg"] for m in lines(capsys.readouterr().err)] == ["store detail"]


def test_files_extra_handlers_and_apply_to(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main_log = tmp_path / "agl.log"
    third_log = tmp_path / "third.log"
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    extra = Collect()
    for _ in range(2):
        setup_logging(
            color=False,
            files={"agl": str(main_log), "thirdparty.files": third_log},
            extra_handlers=[extra],
            apply_to=["thirdparty"],
        )
    logging.getLogger("agl").info("to file")
    logging.getLogger("thirdparty").info("library says hi")
    logging.getLogger("thirdparty.files").info("library file")
    for handler in logging.getLogger("agl").handlers + logging.getLogger("thirdparty.files").handlers:
        handler.flush()
    assert main_log.read_text().count("to file") == 1
    assert "library file" in third_log.read_text()
    assert [r.getMessage() for r in records] == ["to file"]
    assert logging.getLogger("thirdparty").propagate is False
    err = capsys.readouterr().err
    assert err.count("library says hi") == 1
    assert err.count("to file") == 1


def test_custom_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(color=False, formatter="%(role)s|%(message)s")
    set_role("algorithm")
    logging.getLogger("agl").info("x")
    assert capsys.readouterr().err.strip() == "algorithm|x"
    with pytest.raises(TypeError, match="formatter must be"):
        setup_logging(formatter=3)  # type: ignore[arg-type]


def test_capture_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(color=False, capture_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    assert "careful" in capsys.readouterr().err


def test_disable_existing_loggers() -> None:
    other = logging.getLogger("some.old.library")
    setup_logging(console=False, disable_existing_loggers=True)
    assert other.disabled
    assert not logging.getLogger("agl").disabled
    assert not logging.getLogger("agl.store").disabled


def test_top_level_aliases() -> None:
    assert agl.setup_logging is setup_logging
    assert agl.setup_module_logging is setup_module_logging
    assert agl.configure_logger is configure_logger
    assert "%(role)s" in LOG_FORMAT and "%(process)d" in LOG_FORMAT
