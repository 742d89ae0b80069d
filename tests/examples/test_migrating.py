"""The migration example: `after/` trains on AGL, `before/` on the real Agent Lightning 0.3.0, with the same outcome.

`before/` and `after/` are one project written for Agent Lightning 0.3 and moved to AGL; docs/migrating.md shows the
diff between them, which must be the import line alone. `before/` runs under Agent Lightning's own interpreter
(`AGL_AL_PYTHON`, see `make interop-venv`); without it that test skips (CI sets `AGL_REQUIRE_AGENTLIGHTNING=1`, so
there it cannot skip).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "migrating"
GUIDE = REPO / "docs" / "migrating.md"


def _al_python() -> str:
    path = os.environ.get("AGL_AL_PYTHON", "")
    if not path or not os.path.exists(path):
        message = (
            "Agent Lightning 0.3.0 side environment not found: set AGL_AL_PYTHON to its interpreter "
            "(`make interop-venv` creates .venv-agentlightning) to run examples/migrating/before under it"
        )
        if os.environ.get("AGL_REQUIRE_AGENTLIGHTNING") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(python: str, folder: Path, output: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run `folder/train.py` as a user would (`python train.py` in that folder); its outcome as written to JSON."""
    proc = subprocess.Popen(
        [python, "train.py", "--output", str(output)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its runner processes share the group, so one signal stops them all
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, f"train.py exited with {proc.returncode}:\n{out[-4000:]}"
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def _check_outcome(result: dict[str, Any]) -> None:
    """What the worked example promises on either framework."""
    rounds = result["history"]
    assert [r["round"] for r in rounds] == [0, 1, "val"]
    for entry in rounds:
        assert set(entry["statuses"]) == {"succeeded"}, entry
        assert None not in entry["rewards"], "every rollout's reward is read back from its spans"
    first, second, val = rounds
    # The toy model is right without its tool only on single-digit operands: 3 of the 6 training tasks.
    assert first["rewards"] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0] and first["mean_reward"] == 0.5
    assert first["failed_without_tool"] == 3 and first["prompt"] == "You are good at {subject}."
    assert second["prompt"].endswith("Use the calculator tool for every computation.")
    assert second["rewards"] == [1.0] * 6
    assert val["rewards"] == [1.0] * 4
    # Two resource versions: the initial prompt and the edited one, which validation used.
    assert len(result["published"]) == 2 and val["resources_id"] == result["published"][1]


def _agl_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_after_trains_on_agl(tmp_path: Path) -> None:
    result = _run(sys.executable, EXAMPLE / "after", tmp_path / "after.json", _agl_env(), timeout=180)
    _check_outcome(result)
    rounds = result["history"]
    # AGL stores the spans the agent's `agl.operation` makes in the runner processes: one per tool call.
    assert [r["rollouts_with_tool_spans"] for r in rounds] == [0, 6, 4]


@pytest.mark.slow
def test_before_trains_on_agent_lightning_alike(tmp_path: Path) -> None:
    python = _al_python()
    # Agent Lightning imports litellm, which otherwise tries to download a price table at import.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""}
    before = _run(python, EXAMPLE / "before", tmp_path / "before.json", env, timeout=300)
    after = _run(sys.executable, EXAMPLE / "after", tmp_path / "after.json", _agl_env(), timeout=180)
    _check_outcome(before)

    def comparable(result: dict[str, Any]) -> list[dict[str, Any]]:
        # Ids are random; the tool spans are compared below.
        drop = {"resources_id", "rollouts_with_tool_spans"}
        return [{k: v for k, v in entry.items() if k not in drop} for entry in result["history"]]

    assert comparable(before) == comparable(after)
    # Agent Lightning 0.3.0's runners send emitter spans through an OTLP exporter whose endpoint they re-point at the
    # store by a private attribute, which the OpenTelemetry exporter pip installs today no longer reads: those spans
    # go to localhost:4318 and are lost (docs/migrating.md says so; update it if this changes). The reward the agent
    # returns is stored directly, so rewards agree.
    assert [r["rollouts_with_tool_spans"] for r in before["history"]] == [0, 0, 0]


def _sources(folder: Path) -> dict[str, list[str]]:
    return {
        p.relative_to(folder).as_posix(): p.read_text().splitlines(keepends=True)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_before_and_after_differ_only_in_the_lines_the_guide_shows() -> None:
    before, after = _sources(EXAMPLE / "before"), _sources(EXAMPLE / "after")
    assert sorted(before) == sorted(after) == ["toy_llm.py", "train.py"]
    assert before["toy_llm.py"] == after["toy_llm.py"]
    diff = difflib.unified_diff(before["train.py"], after["train.py"], "before/train.py", "after/train.py", n=0)
    diff_lines = [line.rstrip("\n") for line in diff]
    assert diff_lines == [
        "--- before/train.py",
        "+++ after/train.py",
        "@@ -24 +24 @@",
        "-import agentlightning as agl",
        "+import agl",
    ]
    # The guide shows that same diff.
    block = re.search(r"```diff\n(.*?)```", GUIDE.read_text(), re.S)
    assert block is not None, "docs/migrating.md has no ```diff block"
    assert block.group(1).splitlines() == diff_lines


def test_the_guides_sed_command_turns_before_into_after(tmp_path: Path) -> None:
    guide = GUIDE.read_text()
    block = re.search(r"```bash\n(grep -rlE [^`]*?)```", guide, re.S)
    assert block is not None, "docs/migrating.md has no import-rewriting command"
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE / "before", project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "pkg").mkdir()
    # Other import forms the command handles; span names in strings must stay as they are.
    (project / "pkg" / "more.py").write_text(
        "import agentlightning as alx\n"
        "from agentlightning.store.memory import InMemoryLightningStore\n"
        "    from agentlightning import Trainer\n"
        'NAME = "agentlightning.operation"\n'
    )
    subprocess.run(["bash", "-c", block.group(1)], cwd=project, check=True)
    assert _sources(project)["train.py"] == _sources(EXAMPLE / "after")["train.py"]
    assert _sources(project)["toy_llm.py"] == _sources(EXAMPLE / "after")["toy_llm.py"]
    assert (project / "pkg" / "more.py").read_text() == (
        "import agl as alx\n"
        "from agl.store.memory import InMemoryLightningStore\n"
        "    from agl import Trainer\n"
        'NAME = "agentlightning.operation"\n'
    )
