"""Constructor arguments, environment variables (explicit > env > default), bad values, events, registry."""

from __future__ import annotations

import multiprocessing

import pytest

from agl.execution import (
    STRATEGY_REGISTRY,
    ClientServerExecutionStrategy,
    ExecutionEvent,
    MultiprocessingEvent,
    RayExecutionStrategy,
    SharedMemoryExecutionStrategy,
    ThreadingEvent,
    resolve_managed_store_flag,
    resolve_strategy_class,
)


def test_cs_defaults() -> None:
    s = ClientServerExecutionStrategy()
    assert (s.role, s.server_host, s.server_port, s.n_runners) == ("both", "localhost", 4747, 1)
    assert (s.graceful_timeout, s.terminate_timeout, s.main_process) == (10.0, 10.0, "algorithm")
    assert s.managed_store is True
    assert s.allowed_exit_codes == (0, -15)
    assert s.restart_failed_runners == 0
    assert s.server_address == "http://localhost:4747"


def test_cs_env_vars_used_when_no_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_CURRENT_ROLE", "runner")
    monkeypatch.setenv("AGL_SERVER_HOST", "10.1.2.3")
    monkeypatch.setenv("AGL_SERVER_PORT", "5151")
    monkeypatch.setenv("AGL_MANAGED_STORE", " Off ")
    s = ClientServerExecutionStrategy()
    assert (s.role, s.server_host, s.server_port, s.managed_store) == ("runner", "10.1.2.3", 5151, False)


def test_cs_explicit_arguments_beat_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_CURRENT_ROLE", "runner")
    monkeypatch.setenv("AGL_SERVER_HOST", "10.1.2.3")
    monkeypatch.setenv("AGL_SERVER_PORT", "5151")
    monkeypatch.setenv("AGL_MANAGED_STORE", "0")
    s = ClientServerExecutionStrategy(role="algorithm", server_host="127.0.0.1", server_port=6000, managed_store=True)
    assert (s.role, s.server_host, s.server_port, s.managed_store) == ("algorithm", "127.0.0.1", 6000, True)


def test_cs_explicit_argument_skips_a_bad_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_SERVER_PORT", "not-a-port")
    monkeypatch.setenv("AGL_MANAGED_STORE", "maybe")
    s = ClientServerExecutionStrategy(server_port=1234, managed_store=False)
    assert (s.server_port, s.managed_store) == (1234, False)


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("AGL_SERVER_PORT", "abc", "AGL_SERVER_PORT must be an integer"),
        ("AGL_SERVER_PORT", "70000", "AGL_SERVER_PORT must be an integer in 0..65535"),
        ("AGL_MANAGED_STORE", "maybe", "AGL_MANAGED_STORE must be one of"),
        ("AGL_CURRENT_ROLE", "trainer", "AGL_CURRENT_ROLE must be one of"),
    ],
)
def test_cs_bad_env_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=message):
        ClientServerExecutionStrategy()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "trainer"}, "role must be one of"),
        ({"server_port": -1}, "server_port must be an integer in 0..65535"),
        ({"n_runners": 0}, "n_runners must be a positive integer"),
        ({"main_process": "both"}, "main_process must be"),
        ({"main_process": "runner", "n_runners": 2}, "requires role='both' and n_runners=1"),
        ({"main_process": "runner", "role": "algorithm"}, "requires role='both' and n_runners=1"),
        ({"graceful_timeout": -1}, "graceful_timeout must be non-negative"),
        ({"restart_failed_runners": -1}, "restart_failed_runners"),
        ({"start_method": "teleport"}, "start_method must be one of"),
    ],
)
def test_cs_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientServerExecutionStrategy(**kwargs)  # type: ignore[arg-type]


def test_shm_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = SharedMemoryExecutionStrategy()
    assert (s.n_runners, s.main_thread, s.join_timeout, s.graceful_delay, s.poll_interval) == (
        1, "runner", 15.0, 5.0, 0.05,
    )  # fmt: skip
    assert s.managed_store is True
    monkeypatch.setenv("AGL_MANAGED_STORE", "no")
    assert SharedMemoryExecutionStrategy().managed_store is False
    assert SharedMemoryExecutionStrategy(managed_store=True).managed_store is True
    monkeypatch.setenv("AGL_MANAGED_STORE", "2")
    with pytest.raises(ValueError, match="AGL_MANAGED_STORE"):
        SharedMemoryExecutionStrategy()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_runners": 2}, "main_thread='runner' requires n_runners=1"),
        ({"main_thread": "both"}, "main_thread must be"),
        ({"n_runners": 0, "main_thread": "algorithm"}, "n_runners must be a positive integer"),
        ({"poll_interval": 0}, "poll_interval must be positive"),
    ],
)
def test_shm_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SharedMemoryExecutionStrategy(**kwargs)  # type: ignore[arg-type]


def test_resolve_managed_store_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_managed_store_flag(None) is True
    assert resolve_managed_store_flag(False) is False
    for raw, expected in (("1", True), ("yes", True), ("ON", True), ("false", False), ("no", False)):
        monkeypatch.setenv("AGL_MANAGED_STORE", raw)
        assert resolve_managed_store_flag(None) is expected
    monkeypatch.setenv("AGL_MANAGED_STORE", "sometimes")
    with pytest.raises(ValueError, match="AGL_MANAGED_STORE must be one of"):
        resolve_managed_store_flag(None)


def test_registry_maps_aliases() -> None:
    assert set(STRATEGY_REGISTRY) == {"shm", "cs", "ray"}
    assert resolve_strategy_class("cs") is ClientServerExecutionStrategy
    assert resolve_strategy_class("shm") is SharedMemoryExecutionStrategy
    assert resolve_strategy_class("ray") is RayExecutionStrategy
    assert ClientServerExecutionStrategy.alias == "cs"
    assert SharedMemoryExecutionStrategy.alias == "shm"
    assert RayExecutionStrategy.alias == "ray"
    with pytest.raises(ValueError, match="known aliases"):
        resolve_strategy_class("ipc")


def test_threading_event() -> None:
    event = ThreadingEvent()
    assert isinstance(event, ExecutionEvent)
    assert not event.is_set() and event.wait(0.01) is False
    event.set()
    assert event.is_set() and event.wait(0) is True
    event.clear()
    assert not event.is_set()


def _set_event(event: MultiprocessingEvent) -> None:
    event.set()


def test_multiprocessing_event_crosses_processes() -> None:
    ctx = multiprocessing.get_context("spawn")
    event = MultiprocessingEvent(ctx)
    assert isinstance(event, ExecutionEvent)
    process = ctx.Process(target=_set_event, args=(event,))
    process.start()
    try:
        assert event.wait(10)
    finally:
        process.join(10)
    assert process.exitcode == 0
    event.clear()
    assert not event.is_set()
    assert not MultiprocessingEvent().is_set()
