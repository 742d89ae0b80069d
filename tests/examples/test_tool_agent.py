"""examples/tool_agent: the calculator, the reward, the shipped data; as a slow test, `train.py --short` on SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.test_examples import EXAMPLES, load

agent = load("tool_agent/agent.py")
make_data = load("tool_agent/make_data.py")


@pytest.mark.parametrize(
    ("expression", "value"),
    [("14 * 36", "504"), ("(2 + 3) * 4", "20"), ("912 - 487", "425"), ("7 / 2", "3.5"), ("17 x 17", "289"),
     ("-3 + 5", "2")],
)  # fmt: skip
def test_calculator_evaluates_arithmetic(expression: str, value: str) -> None:
    assert agent.calculate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "2 ** 99999", "1 / 0", "", "abc", "10**13 + 1"])
def test_calculator_refuses_anything_else_with_an_error_text(expression: str) -> None:
    assert agent.calculate(expression).startswith("error:")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("289", 1.0), ("The answer is 289.", 1.0), ("1,289", 0.0), ("289.0", 1.0), ("288", 0.0), (None, 0.0),
     ("", 0.0), ("17 * 17 = 289", 1.0)],
)  # fmt: skip
def test_score_checks_the_last_number_of_the_final_answer(answer: str | None, expected: float) -> None:
    assert agent.score(answer, {"answer": 289}) == expected


def test_shipped_data_is_what_make_data_writes_and_held_out_is_disjoint() -> None:
    data = EXAMPLES / "tool_agent" / "data"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (data / "held_out.jsonl").read_text().splitlines()]
    assert train == make_data.make(seed=1, n=256)
    assert len(held_out) == 64 and not {p["question"] for p in train} & {p["question"] for p in held_out}
    for problem in train + held_out:
        assert agent.calculate(problem["expression"]) == str(problem["answer"])


def test_the_opening_messages_show_one_worked_tool_episode() -> None:
    messages = agent.first_messages({"question": "What is 2 + 2?"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert messages[2]["tool_calls"][0]["function"]["name"] == agent.CALCULATOR_TOOL["function"]["name"]
    assert messages[-1]["content"] == "What is 2 + 2?"


@pytest.mark.slow
def test_train_short_runs_end_to_end_on_smollm2(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "tool_agent" / "train.py"), "--short", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "held-out success" in proc.stdout
    log = json.loads((tmp_path / "tool_agent_log.json").read_text())
    kinds = [(h["kind"], h["step"]) for h in log["history"]]
    # The run ends on its best weights: when step 2 did not beat the start, those are restored and scored again.
    assert kinds in (
        [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)],
        [("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("eval", 2)],
    )
    assert (tmp_path / "best" / "model.safetensors").is_file()
    train = [h for h in log["history"] if h["kind"] == "train"]
    assert all(h["samples"] >= 8 for h in train)  # 2 problems x 4 episodes, at least one model call each
