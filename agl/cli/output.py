"""How the inspection commands print: rich tables and trees on a terminal, aligned plain text when piped, JSON.

`rich` is optional (the `cli` extra) and imported only when stdout is a terminal; without it the plain text is
printed there too.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import orjson

__all__ = [
    "Node",
    "Output",
    "excerpt",
    "fmt_age",
    "fmt_bytes",
    "fmt_duration",
    "fmt_number",
    "fmt_time",
]

Mode = Literal["json", "rich", "plain"]


@dataclass
class Node:
    """One line of a printed tree (`label`, optional `notes` lines under it) and its child nodes."""

    label: str
    notes: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    style: str = ""
    """A rich style for the label (ignored in plain text)."""


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Output:
    """A printer bound to one stream, in the mode the flags and the stream call for."""

    def __init__(self, json_mode: bool, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if json_mode:
            self.mode: Mode = "json"
        elif _isatty(self.stream) and _rich_available():
            self.mode = "rich"
        else:
            self.mode = "plain"
        self._console: Any = None

    @property
    def console(self) -> Any:
        """The rich Console writing to the stream (rich mode only)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False, soft_wrap=False)
        return self._console

    def json(self, data: Any) -> None:
        """Print `data` as indented JSON."""
        text = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=_jsonable)
        self.stream.write(text.decode() + "\n")

    def line(self, text: str = "", style: str = "") -> None:
        """Print one line of text."""
        if self.mode == "rich":
            self.console.print(text, style=style or None, markup=False, overflow="fold")
        else:
            self.stream.write(text + "\n")

    def heading(self, text: str) -> None:
        """Print a section heading."""
        if self.mode == "rich":
            self.console.print(text, style="bold", markup=False)
        else:
            self.stream.write(text + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
        """Print rows under column headers; columns whose header starts with ">" are right-aligned."""
        names = [c.lstrip(">") for c in columns]
        right = [c.startswith(">") for c in columns]
        if self.mode == "rich":
            from rich.table import Table

            table = Table(title=title, title_justify="left", header_style="bold")
            for name, is_right in zip(names, right, strict=True):
                table.add_column(name, justify="right" if is_right else "left", overflow="fold")
            for row in rows:
                table.add_row(*row)
            self.console.print(table)
            return
        if title:
            self.stream.write(title + "\n")
        widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]

        def render(cells: Sequence[str]) -> str:
            parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
            return "  ".join(parts).rstrip()

        self.stream.write(render([n.upper() for n in names]) + "\n")
        for row in rows:
            self.stream.write(render(row) + "\n")

    def pairs(self, items: Sequence[tuple[str, str]], title: str | None = None) -> None:
        """Print `key  value` lines with the keys aligned."""
        if self.mode == "rich":
            from rich.table import Table

            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold")
            grid.add_column(overflow="fold")
            for key, value in items:
                grid.add_row(key, value)
            if title:
                self.heading(title)
            self.console.print(grid)
            return
        if title:
            self.stream.write(title + "\n")
        width = max((len(k) for k, _ in items), default=0)
        for key, value in items:
            self.stream.write(f"{key.ljust(width)}  {value}".rstrip() + "\n")

    def tree(self, title: str, nodes: Sequence[Node]) -> None:
        """Print `title` and the nodes below it, each child indented under its parent."""
        if self.mode == "rich":
            from rich.text import Text
            from rich.tree import Tree

            root = Tree(Text(title, style="bold"))

            def add(parent: Any, node: Node) -> None:
                text = Text(node.label, style=node.style)
                for note in node.notes:
                    text.append("\n" + note, style="dim")
                branch = parent.add(text)
                for child in node.children:
                    add(branch, child)

            for node in nodes:
                add(root, node)
            self.console.print(root)
            return
        self.stream.write(title + "\n")

        def write(node: Node, depth: int) -> None:
            pad = "  " * depth
            self.stream.write(f"{pad}{node.label}\n")
            for note in node.notes:
                self.stream.write(f"{pad}    {note}\n")
            for child in node.children:
                write(child, depth + 1)

        for node in nodes:
            write(node, 1)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# -- formatting of single values ---------------------------------------------------------------------------------


def fmt_time(epoch: float | None) -> str:
    """Local wall-clock time of an epoch timestamp (`YYYY-MM-DD HH:MM:SS`), or "-"."""
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def fmt_duration(seconds: float | None) -> str:
    """A duration as `850 ms`, `2.31 s`, `3m 12s` or `1h 02m`, or "-"."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 0:
        return "-" + fmt_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 or seconds == 0 else f"{seconds * 1e6:.0f} us"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"


def fmt_age(seconds: float | None) -> str:
    """How long ago something happened (`12.5 s ago`), or "-"."""
    if seconds is None:
        return "-"
    return f"{fmt_duration(seconds)} ago"


def fmt_bytes(count: float | None) -> str:
    """A byte count in binary units (`1.5 MiB`), or "-"."""
    if count is None:
        return "-"
    value = float(count)
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def fmt_number(value: Any) -> str:
    """A number compactly (`0.5`, `12`, `0.3333`), any other value with str(), None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def excerpt(value: Any, limit: int = 100) -> str:
    """`value` on one line (JSON for non-strings), cut to `limit` characters with an ellipsis."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, default=_jsonable).decode()
        except TypeError:
            text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
