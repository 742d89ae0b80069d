"""`agl rollouts ls` and `agl rollouts show` against a real store server, output captured as when piped."""

from __future__ import annotations

import json

import pytest

from agl.cli import main
from tests.cli.conftest import Filled


def run(capsys: pytest.CaptureFixture[str], filled: Filled, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--store", filled.url])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> dict[str, list[str]]:
    """The table rows of `agl rollouts ls` by rollout id."""
    return {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("ro-")}


def test_ls_lists_every_rollout_with_status_mode_attempts_worker_and_reward(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, filled, "rollouts", "ls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ROLLOUT", "STATUS", "MODE", "ATTEMPTS", "WORKER", "START", "TOOK", "REWARD"]
    table = rows(out)
    assert set(table) == {filled.succeeded, filled.failed, filled.queued, filled.running}
    assert table[filled.succeeded][1:5] == ["succeeded", "train", "1", "Worker-0"]
    assert table[filled.succeeded][-1] == "0.75"
    assert table[filled.failed][1:5] == ["failed", "val", "2", "Worker-1"]
    assert table[filled.queued][1:5] == ["queuing", "test", "0", "-"]
    assert table[filled.running][1:5] == ["running", "train", "1", "Worker-1"]
    assert lines[-1] == "rollouts 1-4 of 4"
    # plain text when piped: no terminal escape codes or box drawing
    assert "\x1b[" not in out and "━" not in out


def test_ls_filters_by_status_and_mode(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--status", "failed,running")
    assert code == 0 and set(rows(out)) == {filled.failed, filled.running}
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--status", "failed", "--status", "queuing")
    assert code == 0 and set(rows(out)) == {filled.failed, filled.queued}
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--status", "cancelled")
    assert code == 0 and rows(out) == {} and "no rollouts match (of 0)" in out


def test_ls_filters_by_mode(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, filled, "rollouts", "ls", "--mode", "train")
    assert code == 0, err
    assert set(rows(out)) == {filled.succeeded, filled.running}
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--mode", "train", "--status", "running")
    assert code == 0 and set(rows(out)) == {filled.running}


def test_ls_sorts_and_paginates(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    ids = sorted([filled.succeeded, filled.failed, filled.queued, filled.running])
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--sort", "rollout_id", "--desc", "--limit", "2")
    assert code == 0
    assert list(rows(out)) == ids[::-1][:2]
    assert out.splitlines()[-1] == "rollouts 1-2 of 4; next page: --offset 2"
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--sort", "rollout_id", "--offset", "3")
    assert code == 0 and list(rows(out)) == ids[3:]
    assert out.splitlines()[-1] == "rollouts 4-4 of 4"


def test_ls_json_is_the_page_with_totals(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--json", "--sort", "rollout_id", "--limit", "3")
    assert code == 0
    page = json.loads(out)
    assert page["total"] == 4 and page["limit"] == 3 and page["offset"] == 0
    ids = sorted([filled.succeeded, filled.failed, filled.queued, filled.running])
    assert [i["rollout_id"] for i in page["items"]] == ids[:3]
    for item in page["items"]:
        assert set(item) >= {"rollout_id", "status", "mode", "start_time", "end_time", "attempts", "worker_id"}
    code, out, _ = run(capsys, filled, "rollouts", "ls", "--json", "--status", "succeeded")
    (item,) = json.loads(out)["items"]
    assert item["rollout_id"] == filled.succeeded and item["reward"] == 0.75 and item["worker_id"] == "Worker-0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--status", "done"], "invalid status 'done'"),
        (["--mode", "eval"], "invalid mode 'eval'"),
        (["--limit", "0"], "must be an integer 1..500"),
        (["--limit", "501"], "must be an integer 1..500"),
        (["--offset", "-1"], "must be an integer >= 0"),
        (["--sort", "reward"], "invalid choice: 'reward'"),
    ],
)
def test_ls_bad_flags_are_usage_errors_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["rollouts", "ls", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and argv[0] in err


def test_show_prints_rollout_attempts_span_tree_and_reward(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, filled, "rollouts", "show", filled.succeeded)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Rollout {filled.succeeded}"
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:10]}
    assert fields["status"] == "succeeded" and fields["mode"] == "train" and fields["attempts"] == "1"
    assert fields["resources"] == filled.resources_id
    assert fields["reward"] == "0.75" and fields["input"] == '{"question":"What is 6 * 7?"}'
    attempt_rows = [line.split() for line in lines if line.startswith("1 ")]
    assert attempt_rows and attempt_rows[0][2:4] == ["succeeded", "Worker-0"]

    tree = lines[lines.index(next(line for line in lines if line.startswith("Spans of attempt 1"))) :]
    assert tree[0].endswith(": 4")

    def indent(prefix: str) -> int:
        line = next(line for line in tree if line.lstrip().startswith(prefix))
        return len(line) - len(line.lstrip())

    assert indent("agent.run") == 2
    assert indent("openai.chat.completion") == indent("tool.multiply") == indent("agentlightning.annotation") == 4
    assert indent("prompt ") > 4
    text = "\n".join(tree)
    assert "openai.chat.completion  800 ms  LLM tiny-llm, 21 -> 9 tokens" in text
    assert "prompt   user: What is 6 * 7?" in text
    assert "response assistant: Let me compute 6 * 7." in text
    assert 'calls    multiply({"a": 6, "b": 7})' in text
    assert "tool.multiply  100 ms  tool multiply" in text and "result   42" in text
    assert "agentlightning.annotation  0 ms  reward primary=0.75" in text


def test_show_gives_each_attempt_its_worker_and_exceptions(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, filled, "rollouts", "show", filled.failed)
    assert code == 0
    lines = out.splitlines()
    attempts = [line.split() for line in lines if line[:2] in ("1 ", "2 ")]
    assert [(a[0], a[2], a[3]) for a in attempts] == [("1", "failed", "Worker-0"), ("2", "failed", "Worker-1")]
    assert sum(line.startswith("Spans of attempt") for line in lines) == 2
    assert out.count("error    ZeroDivisionError: division by zero") == 2
    assert "reward     -" in out


def test_show_json_has_rollout_attempts_spans_reward_and_input(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, filled, "rollouts", "show", filled.succeeded, "--json")
    assert code == 0
    detail = json.loads(out)
    assert detail["rollout"]["rollout_id"] == filled.succeeded
    assert detail["input"] == {"question": "What is 6 * 7?"}
    assert detail["reward"] == 0.75
    assert [a["worker_id"] for a in detail["attempts"]] == ["Worker-0"]
    assert [s["span_id"] for s in detail["spans"]] == [s.span_id for s in filled.spans[filled.succeeded]]
    assert detail["spans_total"] == 4


def test_show_of_a_queued_rollout_says_no_spans(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, filled, "rollouts", "show", filled.queued)
    assert code == 0 and "status     queuing" in out and "no spans recorded" in out


def test_show_of_an_unknown_rollout_is_one_clear_line_and_exit_1(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, filled, "rollouts", "show", "ro-does-not-exist")
    assert code == 1 and out == ""
    assert err == (
        f"agl: no rollout 'ro-does-not-exist' in the store at {filled.url}; list them with `agl rollouts ls`\n"
    )
