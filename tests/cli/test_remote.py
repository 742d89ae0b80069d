"""Store URL, token and failure handling shared by the inspection commands; one real subprocess and one real
terminal (a pty) run."""

from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agl.cli import main
from tests.cli.conftest import TOKEN, Filled

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "argv", [["rollouts", "ls"], ["rollouts", "show", "ro-x"], ["workers"], ["stats"], ["spans", "export", "ro-x"]]
)
def test_unreachable_store_is_one_line_naming_the_url_and_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = main([*argv, "--store", url])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (
        f"agl: cannot reach the store at {url}. Start one with `agl store` (it listens on http://127.0.0.1:4747), "
        "or point to a running one with --store URL or AGL_STORE_URL.\n"
    )
    assert elapsed < 5.0  # no minute of retries


def test_store_url_comes_from_the_environment(
    filled: Filled, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGL_STORE_URL", filled.url + "/")
    assert main(["rollouts", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4


@pytest.mark.parametrize("argv", [["rollouts", "ls"], ["rollouts", "show", "ro-x"], ["workers"], ["stats"]])
def test_missing_token_says_how_to_give_one(
    argv: list[str], filled_with_token: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv, "--store", filled_with_token.url])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith(f"agl: the store at {filled_with_token.url} refused the request (HTTP 401: ")
    assert err.endswith("Set AGL_STORE_TOKEN or pass --token-file FILE with the store's token.\n")
    assert "Traceback" not in err and err.count("\n") == 1


def test_wrong_token_in_a_file_is_refused(
    filled_with_token: Filled, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("wrong\n")
    code = main(["stats", "--store", filled_with_token.url, "--token-file", str(tmp_path / "token")])
    assert code == 1 and "HTTP 401" in capsys.readouterr().err


def test_token_from_a_file_or_the_environment(
    filled_with_token: Filled,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    url = filled_with_token.url
    assert main(["rollouts", "ls", "--json", "--store", url, "--token-file", str(tmp_path / "token")]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 4
    monkeypatch.setenv("AGL_STORE_TOKEN", TOKEN)
    assert main(["rollouts", "show", filled_with_token.succeeded, "--json", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out)["reward"] == 0.75
    assert main(["spans", "export", filled_with_token.succeeded, "--store", url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_unusable_token_file_or_url_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["workers", "--token-file", str(tmp_path / "absent")]) == 1
    assert (
        capsys.readouterr().err == f"agl: cannot read the token file {tmp_path / 'absent'}: No such file or directory\n"
    )
    (tmp_path / "empty").write_text("\n")
    assert main(["workers", "--token-file", str(tmp_path / "empty")]) == 1
    assert "is empty; write the store's bearer token into it" in capsys.readouterr().err
    assert main(["workers", "--store", "ftp://example.org"]) == 1
    assert capsys.readouterr().err.startswith("agl: --store 'ftp://example.org' is not a usable store URL")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_a_real_subprocess_prints_plain_text_to_a_pipe(filled: Filled) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agl.cli", "rollouts", "show", filled.succeeded, "--store", filled.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Rollout {filled.succeeded}\n") and "reward primary=0.75" in proc.stdout
    assert "\x1b[" not in proc.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "agl.cli", "rollouts", "show", "ro-missing", "--store", filled.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert unknown.returncode == 1 and unknown.stdout == "" and "Traceback" not in unknown.stderr


def _run_in_terminal(argv: list[str]) -> str:
    """Run `python -m agl.cli argv` with stdout on a pseudo-terminal 160 columns wide; its output."""
    master, slave = pty.openpty()
    env = {**_env(), "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
    env.pop("NO_COLOR", None)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agl.cli", *argv], stdout=slave, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


def test_a_terminal_gets_rich_tables_and_trees(filled: Filled) -> None:
    pytest.importorskip("rich")
    table = _run_in_terminal(["rollouts", "ls", "--store", filled.url])
    assert "━" in table and filled.succeeded in table and "succeeded" in table
    tree = _run_in_terminal(["rollouts", "show", filled.succeeded, "--store", filled.url])
    assert "├──" in tree or "└──" in tree
    assert "openai.chat.completion" in tree and "reward primary=0.75" in tree
