"""Request limits of the store's HTTP app, and the checks on raw JSON bodies that enforce them.

The checks run before a body is validated and are built to cost next to nothing on ordinary bodies: each has a
C-speed test (byte counts, substring searches) that rules most bodies out, and does the exact, slower work only on
bodies that might break the rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["INT64_MAX", "INT64_MIN", "RequestLimits", "bounded_errors", "check_json", "excerpt"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_EXCERPT_CHARS = 80


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server (the body size limit is `max_body_bytes`, next to these).

    Every limit is a positive number; a request beyond one is answered 4xx naming the limit.
    """

    max_json_depth: int = 64
    """Nesting of arrays and objects in a JSON body (`[[1]]` is 2 deep); deeper → 422."""
    max_batch_items: int = 10_000
    """Items in one list of a request (rollouts enqueued, spans in a batch, sequence-id pairs, ids to wait for or
    filter by) and the `limit` of a dequeue; more → 422 naming the field."""
    max_url_bytes: int = 8192
    """Length of the request target (path and query string); longer → 414."""
    max_header_bytes: int = 64 * 1024
    """Total size of the request's header names and values; larger → 431 (and the connection closes)."""
    max_header_count: int = 100
    """Number of header lines in a request; more → 431 (and the connection closes)."""
    body_timeout_seconds: float = 60.0
    """Time to receive the whole body once the request head has arrived; longer → 408 (and the connection closes)."""
    keep_alive_seconds: float = 75.0
    """Time a kept-alive connection may stay idle between requests before the server closes it."""
    head_timeout_seconds: float = 30.0
    """Time to receive a request head, from its first byte (or from the opening of the connection, for its first
    request); longer → 408 (and the connection closes)."""
    max_validation_errors: int = 20
    """Errors listed in a 422 answer (the first ones); inputs are shown as excerpts of at most 80 characters."""
    max_error_bytes: int = 64 * 1024
    """Size of any error answer's body; errors that do not fit are left out (and counted)."""
    max_watchers: int = 10_000
    """Drain watchers (`GET /v1/agl/health?watcher=<id>`) remembered; the least recently seen is forgotten first."""
    watcher_ttl_seconds: float = 600.0
    """A drain watcher that has not asked for this long is forgotten."""
    max_watcher_id_bytes: int = 256
    """Length of a drain watcher id; longer → 400."""

    def __post_init__(self) -> None:
        for name in (
            "max_json_depth",
            "max_batch_items",
            "max_url_bytes",
            "max_header_bytes",
            "max_header_count",
            "max_validation_errors",
            "max_watchers",
            "max_watcher_id_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= self.max_json_depth <= 200:
            # 200 is where pydantic's JSON parser stops anyway ("recursion limit exceeded").
            raise ValueError(f"max_json_depth must be between 1 and 200, got {self.max_json_depth!r}")
        if not isinstance(self.max_error_bytes, int) or self.max_error_bytes < 1024:
            raise ValueError(f"max_error_bytes must be an integer >= 1024, got {self.max_error_bytes!r}")
        for name in ("watcher_ttl_seconds", "body_timeout_seconds", "head_timeout_seconds", "keep_alive_seconds"):
            seconds = getattr(self, name)
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")

    @property
    def max_head_bytes(self) -> int:
        """The most bytes a request head within these limits can take: the request target, the header names and
        values, and room for the request line, separators and line ends. A head still growing past it is answered
        431 before it is parsed to the end (and the connection closes)."""
        return self.max_url_bytes + self.max_header_bytes + 4 * self.max_header_count + 1024


def excerpt(value: Any) -> Any:
    """`value` itself when short, else the start of its JSON (or repr) as a string ending in "...".

    Keeps error answers small: an invalid body is never echoed back beyond a short excerpt.
    """
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else _cut(str(value))
    if isinstance(value, str):
        return value if len(value) <= _EXCERPT_CHARS else value[: _EXCERPT_CHARS - 3] + "..."
    try:
        text = orjson.dumps(value).decode("utf-8", "replace")
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return value if len(text) <= _EXCERPT_CHARS and isinstance(value, (list, dict)) else _cut(text)


def _cut(text: str) -> str:
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _loc_part(part: Any) -> Any:
    return part if isinstance(part, int) and not isinstance(part, bool) else _cut(str(part))


def bounded_errors(errors: list[dict[str, Any]], limits: RequestLimits, total: int | None = None) -> list[Any]:
    """The first `max_validation_errors` errors, inputs and locations cut to excerpts, fitting `max_error_bytes`.

    Each error keeps the FastAPI shape (`type`, `loc`, `msg`, `input`); when some are left out, a last entry
    `{"type": "too_many_errors", ...}` says how many there were.
    """
    total = len(errors) if total is None else total
    out: list[Any] = []
    budget = limits.max_error_bytes - 512  # room for the envelope and the closing note
    for error in errors[: limits.max_validation_errors]:
        msg = str(error.get("msg", ""))
        item: dict[str, Any] = {
            "type": error.get("type", "value_error"),
            "loc": [_loc_part(p) for p in error.get("loc", ())],
            "msg": msg if len(msg) <= 400 else msg[:397] + "...",
        }
        if "input" in error:
            item["input"] = excerpt(error["input"])
        size = len(orjson.dumps(item, default=repr))
        if size > budget:
            break
        budget -= size
        out.append(item)
    if len(out) < total:
        out.append(
            {
                "type": "too_many_errors",
                "loc": [],
                "msg": f"{total - len(out)} more error(s) not shown (the first {len(out)} of {total} are listed)",
            }
        )
    return out


# -- raw JSON checks -------------------------------------------------------------------------------------------

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')
_NORMALIZE = bytes.maketrans(b"{}", b"[]")


def _shape(byte: int) -> int:
    char = chr(byte)
    if char.isdigit() and byte < 128:
        return ord("0")
    if char == "+":
        return byte
    if char in "[{":
        return ord("[")
    return ord("e") if char in "eE" else ord(" ")


_NUMBER_SHAPES = bytes(_shape(b) for b in range(256))
"""Digits → 0, e/E → e, + kept, [ and { → [, every other byte → space: what a number's size can be read from (and
how many arrays and objects open)."""
_LONG_DIGITS = b"0" * 19  # int64 has 19 digits: only numbers at least this long can fall outside it
_WHITESPACE = b" \t\r\n"


def _long_number(body: bytes, shapes: bytes) -> bool:
    """Whether a run of 19 or more digits in `body` can be a JSON number: one that starts the body or follows a colon,
    comma or bracket (whitespace and a minus sign between). Runs inside strings, such as hex ids
    (`00000000000000000001`), follow a quote, a letter or a digit's neighbour instead and are skipped."""
    at = shapes.find(_LONG_DIGITS)
    while at >= 0:
        before = body[:at].rstrip(_WHITESPACE) if at < 64 else body[at - 64 : at].rstrip(_WHITESPACE)
        if before.endswith(b"-"):
            before = before[:-1].rstrip(_WHITESPACE)
        if not before or before[-1:] in (b":", b",", b"["):  # nothing before: the body's start (or only spaces)
            return True
        end = at + 19
        end += len(shapes[end : end + 256]) - len(shapes[end : end + 256].lstrip(b"0"))
        at = shapes.find(_LONG_DIGITS, end)
    return False


def _outside_strings(body: bytes) -> bytes:
    """`body` with every JSON string's contents removed (escapes first, so each remaining quote delimits)."""
    cleaned = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(cleaned.split(b'"')[::2])


def _nesting_exceeds(body: bytes, max_depth: int) -> bool:
    """Whether arrays and objects in `body` nest deeper than `max_depth` (brackets inside strings ignored)."""
    # Brackets and quotes only. When every run of quotes has even length, no string holds a bracket (quotes pair
    # up in order), so dropping the quotes leaves the structure; else strip the strings' contents first.
    structure = body.translate(_NORMALIZE, _NOT_STRUCTURE)
    if b"\\" in structure or b'"' in structure.replace(b'""', b""):
        structure = _outside_strings(body).translate(_NORMALIZE, _NOT_STRUCTURE)
    brackets = structure.replace(b'"', b"")
    if b"[" * (max_depth + 1) in brackets:
        return True
    for _ in range(max_depth):  # each pass removes the innermost level
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


class _NonFinite:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _first_bad_number(value: Any) -> tuple[list[Any], Any, str] | None:
    """Path, value and problem of the first out-of-range integer or non-finite number in a parsed JSON value."""
    stack: list[tuple[list[Any], Any]] = [([], value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            stack.extend(([*path, key], child) for key, child in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend(([*path, index], child) for index, child in reversed(list(enumerate(item))))
        elif isinstance(item, _NonFinite):
            return path, item.text, "non_finite"
        elif isinstance(item, float) and not math.isfinite(item):
            return path, "a number too large for a double", "non_finite"
        elif isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX:
            return path, item, "int64"
    return None


def check_json(body: bytes, limits: RequestLimits, where: str = "body") -> dict[str, Any] | None:
    """A validation error (FastAPI shape) for a JSON body breaking a limit, else None.

    Refused: nesting deeper than `max_json_depth`; integers outside the signed 64-bit range; NaN, Infinity and
    numbers too large for a double (JSON has no such values; they would be stored as null). A body that is not
    JSON at all passes: the validator reports it.
    """
    shapes = body.translate(_NUMBER_SHAPES)
    max_depth = limits.max_json_depth
    # Depth is at most the number of openers: most bodies are settled by one count.
    if (len(body) > 4096 or shapes.count(b"[") > max_depth) and _nesting_exceeds(body, max_depth):
        return {
            "type": "json_too_deep",
            "loc": [where],
            "msg": f"JSON nesting is deeper than {max_depth} levels (max_json_depth); flatten the value",
        }
    long_digits = _LONG_DIGITS in shapes and _long_number(body, shapes)
    if not long_digits:
        # Left to find: NaN, Infinity and numbers too large for a double (1e400), which orjson refuses. Parsing with
        # orjson costs less than searching the body for the three (multi-byte searches over digit-heavy JSON are
        # slow); only a body orjson refuses is searched, to tell them from a plain syntax error.
        try:
            orjson.loads(body)
            return None
        except orjson.JSONDecodeError:
            if b"e0" not in shapes and b"e+" not in shapes and b"NaN" not in body and b"Infinity" not in body:
                return None  # a syntax error: the validator reports it
    try:
        parsed = json.loads(body, parse_constant=_NonFinite)
    except (ValueError, RecursionError):
        return None
    found = _first_bad_number(parsed)
    if found is None:
        return None
    path, value, problem = found
    if problem == "int64":
        msg = f"Integer is outside the signed 64-bit range [{INT64_MIN}, {INT64_MAX}]"
        kind = "int_out_of_range"
    else:
        msg = "NaN, Infinity and numbers beyond the double range are not JSON numbers; send a finite number or null"
        kind = "finite_number"
    return {"type": kind, "loc": [where, *path], "msg": msg, "input": excerpt(value)}
