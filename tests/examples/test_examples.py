"""Every example runs on its embedded defaults (scaled down where it would be slow)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(relative: str) -> ModuleType:
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_baseline_cs_example_runs_every_task_through_runner_processes() -> None:
    example = load("baseline_cs/train.py")
    results = example.main(["--runners", "2", "--tasks", "6"])
    assert len(results) == 6
    assert {r.status for r in results} == {"succeeded"}
    assert sorted(r.mode for r in results) == ["train"] * 3 + ["val"] * 3
