"""A directory named `agl/` in the working directory (a checkout's parent, an empty folder) does not hide AGL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agl


def test_an_empty_agl_directory_in_the_working_directory_does_not_shadow_the_package(tmp_path: Path) -> None:
    (tmp_path / "agl").mkdir()
    # PYTHONPATH is kept: a checkout put there (as helpers and some IDEs do) comes after the working directory too.
    done = subprocess.run(
        [sys.executable, "-c", "import agl; print(agl.__file__); print(agl.Trainer.__name__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    path, name = done.stdout.split()
    assert Path(path) == Path(agl.__file__) and name == "Trainer"
