"""Optional dependencies: a missing one is an ImportError naming the extra that brings it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agl.optional import EXTRA_OF_MODULE, import_optional


def test_a_missing_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_missing.py").write_text("import agl_no_such_package_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"pip install 'agl\[tracing\]'") as info:
        import_optional("needs_missing", "tracing", "agl.Thing")
    assert "agl_no_such_package_anywhere" in str(info.value)


def test_a_half_installed_namespace_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `agl[server]` alone looks like to OtelTracer: the `opentelemetry` namespace exists (opentelemetry-proto)
    # but not the API's modules, so `from opentelemetry import context` fails with a plain ImportError.
    (tmp_path / "halfns" / "proto").mkdir(parents=True)
    (tmp_path / "needs_half.py").write_text("from halfns import context\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "halfns", raising=False)
    with pytest.raises(ImportError, match=r"needs the optional dependency 'halfns'.*agl\[tracing\]"):
        import_optional("needs_half", "tracing", "agl.OtelTracer")


def test_errors_inside_agl_are_not_blamed_on_an_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_agl_typo.py").write_text("from agl.no_such_module import x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match=r"agl\.no_such_module"):
        import_optional("needs_agl_typo", "tracing", "agl.Thing")


def test_the_tracers_are_mapped_to_the_tracing_extra() -> None:
    assert EXTRA_OF_MODULE["agl.tracer.otel"] == "tracing"
    assert EXTRA_OF_MODULE["agl.tracer.otel_capture"] == "tracing"
