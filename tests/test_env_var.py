"""AGL_* environment variables: precedence and bad values."""

from __future__ import annotations

import pytest

from agl.env_var import (
    LightningEnvVar,
    resolve_bool_env_var,
    resolve_current_role,
    resolve_int_env_var,
    resolve_str_env_var,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LightningEnvVar:
        monkeypatch.delenv(var.value, raising=False)


def test_all_variables_are_declared() -> None:
    assert {v.value for v in LightningEnvVar} == {
        "AGL_EMITTER_DEBUG",
        "AGL_MANAGED_STORE",
        "AGL_CURRENT_ROLE",
        "AGL_SERVER_HOST",
        "AGL_SERVER_PORT",
        "AGL_METRICS_PORT",
        "AGL_WORKER_ID_PREFIX",
    }
    assert str(LightningEnvVar.AGL_SERVER_PORT) == "AGL_SERVER_PORT"
    assert LightningEnvVar.AGL_SERVER_HOST == "AGL_SERVER_HOST"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "On"])
def test_bool_true_spellings(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("AGL_MANAGED_STORE", raw)
    assert resolve_bool_env_var(LightningEnvVar.AGL_MANAGED_STORE, fallback=False) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", " OFF"])
def test_bool_false_spellings(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("AGL_MANAGED_STORE", raw)
    assert resolve_bool_env_var(LightningEnvVar.AGL_MANAGED_STORE, fallback=True) is False


def test_bool_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    var = LightningEnvVar.AGL_MANAGED_STORE
    assert resolve_bool_env_var(var) is None
    assert resolve_bool_env_var(var, fallback=True) is True
    monkeypatch.setenv(var.value, "false")
    assert resolve_bool_env_var(var, fallback=True) is False
    assert resolve_bool_env_var(var, override=True, fallback=False) is True
    assert resolve_bool_env_var("AGL_MANAGED_STORE") is False


@pytest.mark.parametrize("raw", ["", "maybe", "2", "truee"])
def test_bool_bad_value(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("AGL_EMITTER_DEBUG", raw)
    with pytest.raises(ValueError, match=r"AGL_EMITTER_DEBUG must be one of \{.*true.*\} or \{.*false.*\}"):
        resolve_bool_env_var(LightningEnvVar.AGL_EMITTER_DEBUG)
    assert resolve_bool_env_var(LightningEnvVar.AGL_EMITTER_DEBUG, override=False) is False


def test_int(monkeypatch: pytest.MonkeyPatch) -> None:
    var = LightningEnvVar.AGL_SERVER_PORT
    assert resolve_int_env_var(var, fallback=4747) == 4747
    monkeypatch.setenv(var.value, " 8080 ")
    assert resolve_int_env_var(var, fallback=4747) == 8080
    assert resolve_int_env_var(var, override=9000, fallback=4747) == 9000
    monkeypatch.setenv(var.value, "eighty")
    with pytest.raises(ValueError, match="AGL_SERVER_PORT must be an integer"):
        resolve_int_env_var(var, fallback=4747)


def test_str(monkeypatch: pytest.MonkeyPatch) -> None:
    var = LightningEnvVar.AGL_SERVER_HOST
    assert resolve_str_env_var(var, fallback="localhost") == "localhost"
    assert resolve_str_env_var(var) is None
    monkeypatch.setenv(var.value, "")
    assert resolve_str_env_var(var, fallback="localhost") == ""  # empty is returned as-is
    monkeypatch.setenv(var.value, "10.0.0.2")
    assert resolve_str_env_var(var, fallback="localhost") == "10.0.0.2"
    assert resolve_str_env_var(var, override="example.org") == "example.org"


def test_role(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_current_role() == "both"
    monkeypatch.setenv("AGL_CURRENT_ROLE", "runner")
    assert resolve_current_role() == "runner"
    assert resolve_current_role("algorithm") == "algorithm"
    monkeypatch.setenv("AGL_CURRENT_ROLE", "trainer")
    with pytest.raises(ValueError, match=r"AGL_CURRENT_ROLE must be one of \['algorithm', 'runner', 'both'\]"):
        resolve_current_role()
    with pytest.raises(ValueError, match="role must be one of"):
        resolve_current_role("boss")


def test_bad_variable_argument() -> None:
    with pytest.raises(TypeError, match="var must be"):
        resolve_str_env_var("")
