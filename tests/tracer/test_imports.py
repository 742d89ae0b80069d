"""Tracing modules stay cheap to import: the OpenTelemetry SDK loads only with OtelTracer."""

from __future__ import annotations

import subprocess
import sys


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(m for m in sys.modules if m.startswith('opentelemetry')))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True).strip()
    return set(filter(None, out.split(",")))


def test_emitters_tracer_base_logging_and_env_do_not_load_opentelemetry() -> None:
    statement = (
        "import agl, agl.emitter, agl.tracer, agl.logging, agl.env_var, agl.semconv;"
        "agl.emit_reward; agl.DummyTracer; agl.get_active_tracer; agl.setup_logging"
    )
    assert loaded_after(statement) == set()


def test_otel_tracer_loads_the_sdk_on_first_use() -> None:
    assert "opentelemetry.sdk.trace" in loaded_after("import agl; agl.OtelTracer")
