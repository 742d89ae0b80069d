"""The quickstart example runs offline, and the guide and the README show its real code."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.examples.test_examples import load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "quickstart" / "train.py"


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), flags=re.S)


def test_every_code_line_of_the_guide_and_the_readme_snippet_is_in_the_example() -> None:
    source_lines = {line.strip() for line in SCRIPT.read_text(encoding="utf-8").splitlines()}
    shown = [block for doc in (ROOT / "docs" / "quickstart.md", ROOT / "README.md") for block in python_blocks(doc)]
    quick = [block for block in shown if "@agl.rollout" in block]
    assert len(quick) >= 2, "docs/quickstart.md and README.md each show the quickstart agent"
    for block in quick:
        for line in block.splitlines():
            text = line.strip()
            if text and not text.startswith("#") and text != "...":
                assert text in source_lines, f"shown but not in examples/quickstart/train.py: {text!r}"


@pytest.mark.slow
def test_quickstart_tries_each_prompt_and_keeps_the_best(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AGL_SERVER_PORT", str(probe.getsockname()[1]))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    example = load("quickstart/train.py")
    example.main(["--tasks", "4", "--runners", "1"])
    out = capsys.readouterr().out
    scores = {m[2]: float(m[1]) for m in re.finditer(r"train reward ([0-9.]+)  '(.*)'  \(resources (rs-\w+)\)", out)}
    assert set(scores) == set(example.CANDIDATES), out
    resources = re.findall(r"\(resources (rs-\w+)\)", out)
    assert len(set(resources)) == len(example.CANDIDATES), "each candidate runs under its own resources version"
    best = re.search(r"best prompt '(.*)': held-out reward ([0-9.]+)", out)
    assert best is not None, out
    assert scores[best[1]] == max(scores.values())
