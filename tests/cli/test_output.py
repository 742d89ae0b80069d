"""Formatting of single values and plain tables by the inspection commands."""

from __future__ import annotations

import io

import pytest

from agl.cli.output import Output, excerpt, fmt_bytes, fmt_duration, fmt_number


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0 ms"), (0.0004, "400 us"), (0.25, "250 ms"), (2.345, "2.35 s"), (192, "3m 12s"),
     (3725, "1h 02m"), (-2.0, "-2.00 s")],
)  # fmt: skip
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_fmt_bytes_number_and_excerpt() -> None:
    assert [fmt_bytes(b) for b in (None, 512, 1536, 5 * 1024**3, 3 * 1024**4)] == [
        "-",
        "512 B",
        "1.5 KiB",
        "5.0 GiB",
        "3.0 TiB",
    ]
    assert [fmt_number(v) for v in (None, True, 3, 0.333333, "x")] == ["-", "true", "3", "0.3333", "x"]
    assert excerpt({"a": [1, 2]}) == '{"a":[1,2]}'
    assert excerpt("two\n  lines") == "two lines"
    assert excerpt("abcdef", 4) == "abc…"


def test_plain_table_aligns_columns_and_right_aligns_marked_ones() -> None:
    stream = io.StringIO()
    Output(json_mode=False, stream=stream).table(["name", ">n"], [["a", "1"], ["long-name", "100"]])
    assert stream.getvalue() == "NAME         N\na            1\nlong-name  100\n"


def test_a_stream_that_is_not_a_terminal_gets_plain_text_and_json_wins() -> None:
    assert Output(json_mode=False, stream=io.StringIO()).mode == "plain"
    assert Output(json_mode=True, stream=io.StringIO()).mode == "json"
