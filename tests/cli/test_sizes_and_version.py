"""Sizes with units on `agl store`, `agl --version`, and a failed demo reporting its error once."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import agl
from agl.cli import main
from agl.cli.sizes import memory_size, size
from agl.cli.store import build_parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1048576), ("512M", 512_000_000), ("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000),
     ("64k", 64_000)],
)  # fmt: skip
def test_sizes_take_units(text: str, expected: int) -> None:
    assert size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "5x", "-1", "0", "12%"])
def test_bad_sizes_say_what_a_size_looks_like(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="size"):
        size(text)


def test_memory_size_takes_a_share_of_ram() -> None:
    parse = memory_size(total_memory=lambda: 8 * 2**30)
    assert parse("50%") == 4 * 2**30
    assert parse("2GiB") == 2 * 2**30
    for bad in ("0%", "101%", "x%"):
        with pytest.raises(argparse.ArgumentTypeError, match="percentage"):
            parse(bad)


def test_store_flags_accept_units_and_name_the_flag_when_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--memory-budget", "512M", "--spill-max-bytes", "2GiB"])
    assert (args.memory_budget, args.spill_max_bytes) == (512_000_000, 2 * 2**30)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--memory-budget", "huge"])
    assert exited.value.code == 2
    assert "--memory-budget" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"agl {agl.__version__}"
    done = subprocess.run([sys.executable, "-m", "agl.cli", "-V"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"agl {agl.__version__}"


def test_a_failed_demo_prints_its_error_once(tmp_path: object) -> None:
    missing = f"{tmp_path}/no-such-model.gguf"
    done = subprocess.run(
        [sys.executable, "-m", "agl.cli", "demo", "--model", missing, "--out", f"{tmp_path}/out"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert (done.stdout + done.stderr).count(missing) == 1, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("command", "replacement"), [("vllm", "LLMProxy"), ("prometheus", "/metrics"), ("agentops", "OtelTracer")]
)
def test_upstream_subcommands_agl_lacks_say_what_to_use(
    command: str, replacement: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agl {command}: not provided by AGL.") and replacement in err
