"""`import agl` stays cheap: no heavy dependency is imported until used."""

from __future__ import annotations

import subprocess
import sys


def test_import_agl_imports_nothing_heavy() -> None:
    code = (
        "import sys, agl; heavy = ('fastapi', 'torch', 'opentelemetry.sdk', 'uvicorn', 'pydantic', 'prometheus_client',"
        " 'ray');"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.check_output([sys.executable, "-c", code], text=True).strip()
    assert out == ""
