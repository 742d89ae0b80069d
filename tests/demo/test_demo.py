"""The demo's pieces (task split, reward, reports) and, as a slow test, `agl demo` itself on SmolLM2."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agl.algorithm.grpo import StepLog
from agl.demo.arithmetic import messages_for, score
from agl.demo.report import Progress, before_after_table, write_json
from agl.demo.run import split_tasks


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("The answer is 19.", 1.0), ("19", 1.0), ("18 + 1 = 19", 1.0), ("The answer is 18.", 0.0),
     ("19\nor maybe 20", 1.0), ("", 0.0), ("nineteen", 0.0), ("\n\n19", 1.0)],
)  # fmt: skip
def test_score_reads_the_last_integer_of_the_first_line(reply: str, expected: float) -> None:
    assert score(reply, {"a": 12, "b": 7}) == expected


def test_split_is_disjoint_and_deterministic() -> None:
    train, held_out = split_tasks(20, 64, seed=1)
    assert len(train) + len(held_out) == 400 and len(held_out) == 64
    as_pairs = {(t["a"], t["b"]) for t in train}
    assert not as_pairs & {(t["a"], t["b"]) for t in held_out}
    assert split_tasks(20, 64, seed=1) == (train, held_out)
    with pytest.raises(ValueError, match="eval-size"):
        split_tasks(3, 9, seed=0)


def test_messages_carry_the_calculator_instruction() -> None:
    messages = messages_for({"a": 2, "b": 3})
    assert messages[0]["role"] == "system" and messages[-1]["content"] == "2 + 3 ="


def _history() -> list[StepLog]:
    return [
        StepLog(step=0, kind="eval", reward_mean=0.25, samples=64, seconds=1.0, weights_version="0"),
        StepLog(step=1, kind="train", reward_mean=0.5, samples=32, seconds=2.0, updated=True, loss=0.1),
        StepLog(step=1, kind="eval", reward_mean=0.75, samples=64, seconds=1.0, weights_version="step-1"),
        StepLog(step=2, kind="train", reward_mean=0.5, samples=32, seconds=2.0, updated=True, loss=0.1),
        StepLog(step=2, kind="eval", reward_mean=0.5, samples=64, seconds=1.0, weights_version="step-2"),
        StepLog(step=2, kind="eval", reward_mean=0.75, samples=64, seconds=1.0, weights_version="step-1",
                extra={"final": True, "restored_from": "step-2"}),
    ]  # fmt: skip


def test_before_after_table_and_json(tmp_path: Path) -> None:
    history = _history()
    table = before_after_table(history)
    header, _, success, weights, _ = table.splitlines()
    assert header.split() == ["before", "best", "final", "change"]
    assert success.split() == ["held-out", "success", "25.0%", "75.0%", "75.0%", "+50.0", "pts"]
    assert weights.split() == ["weights", "0", "step-1", "step-1"]
    write_json(tmp_path / "log.json", history, {"seed": 0})
    data = json.loads((tmp_path / "log.json").read_text())
    assert data["settings"] == {"seed": 0} and [h["kind"] for h in data["history"]][:3] == ["eval", "train", "eval"]


@pytest.mark.parametrize("tty", [False, True])
def test_progress_ends_on_the_value_the_table_reports(tty: bool) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    progress = Progress(2, stream=stream)
    for log in _history():
        progress(log)
    progress.close()
    shown = re.findall(r"held-out(?: success)?(?: before training:)? (\d+\.\d)%", stream.getvalue())
    assert shown[0] == "25.0" and shown[-1] == "75.0"
    assert stream.getvalue().rstrip().splitlines()[-1].endswith("held-out success 75.0%")
    final = before_after_table(_history()).splitlines()[2].split()[4]
    assert final == f"{shown[-1]}%"
    # Without a restored final model, the last redraw of the bar carries the last evaluation's score.
    stream = Stream()
    progress = Progress(2, stream=stream)
    for log in _history()[:5]:
        progress(log)
    progress.close()
    last = stream.getvalue().replace("\r", "\n").rstrip().splitlines()[-1]
    assert "step   2/2" in last and "held-out 50.0%" in last


def _fake_checkpoint(directory: Path, step: int) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    state = {"step": step, "weights_version": f"step-{step}", "score": 0.5, "extra": {"split": {"seed": 3}}}
    (directory / "agl_checkpoint.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resume", "{tmp}/nowhere"], "does not exist"),
        (["--resume", "{tmp}"], "is not a checkpoint"),
        (["--resume", "{tmp}/out", "--steps", "4"], "at step 4; give --steps larger"),
        (["--resume", "{tmp}/out", "--model", "{tmp}/out/best"], "--model or --resume, not both"),
    ],
)
def test_resume_errors_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from agl.demo.run import main

    _fake_checkpoint(tmp_path / "out" / "best", step=4)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().out


def test_unknown_model_path_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agl.cli", "demo", "--model", str(tmp_path / "nope.gguf"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "nope.gguf" in proc.stdout and "does not exist" in proc.stdout


@pytest.mark.parametrize(("device", "message"), [("cuda", "asks for a CUDA GPU"), ("gpu", "is not a device")])
def test_a_device_it_cannot_use_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    torch = pytest.importorskip("torch")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("checks the error raised where CUDA is absent")
    from agl.demo.run import main

    assert main(["--device", device, "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert f"--device={device!r}" in out and message in out
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.slow
def test_agl_demo_runs_end_to_end_on_smollm2(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-m", "agl.cli", "demo", "--steps", "2", "--tasks-per-step", "2", "--group-size", "4",
         "--eval-size", "8", "--eval-every", "2", "--time-budget", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "held-out success" in proc.stdout and "before" in proc.stdout
    log = json.loads((tmp_path / "demo_log.json").read_text())
    kinds = [(h["kind"], h["step"]) for h in log["history"]]
    assert kinds[:4] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]
    assert kinds[4:] in ([], [("eval", 2)])  # the best weights restored and evaluated again, when step 2 was worse
    assert (tmp_path / "best" / "model.safetensors").is_file() and (tmp_path / "best" / "tokenizer.json").is_file()
    assert (tmp_path / "reward_curve.png").stat().st_size > 10_000
