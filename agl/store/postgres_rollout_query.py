"""`query_rollouts` as SQL for the PostgreSQL store: its filter as a WHERE clause and its sort as an ORDER BY.

The conditions come from `agl.store.query.rollout_filter`, combined by the same rule as in every other store: each
one rendered, joined by the filter logic, an empty set matching everything. Each rendering matches the Python
predicate exactly (a condition that can never hold in Python renders as FALSE). Text columns use the "C" collation,
so text orders by code point as Python's does. The ORDER BY ends with `seq` (insertion order), which is what a stable
sort of the insertion-ordered rows gives, also descending; `*_time` fields put NULL last ascending and first
descending, as `agl.store.query.sort_key` does (PostgreSQL's default for NULLs).
"""

from __future__ import annotations

from typing import Any

from agl.store.query import Condition, RolloutFilter

__all__ = ["SQL_SORTS", "order_by", "where"]

SQL_SORTS = frozenset({"start_time", "end_time", "status", "rollout_id", "mode"})
"""`sort_by` values sorted by SQL over indexed columns; any other field is sorted in Python."""


def _render(condition: Condition) -> tuple[str, list[Any]]:
    field, op, expected = condition.field, condition.op, condition.expected
    if op == "within":
        # Only strings can equal a text column; NULL (a rollout without a mode) never matches, as in Python.
        values = [item for item in dict.fromkeys(expected) if isinstance(item, str) and "\x00" not in item]
        if not values:
            return "FALSE", []
        return f"{field} = ANY(%s)", [values]
    if op == "contains":
        # A string with NUL cannot be sent as text, and no stored id holds one.
        if not isinstance(expected, str) or "\x00" in expected:
            return "FALSE", []
        return f"strpos({field}, %s) > 0", [expected]
    if op == "between":
        low, high = expected
        parts: list[str] = []
        params: list[Any] = []
        if low is not None:
            parts.append(f"{field} >= %s")
            params.append(float(low))
        if high is not None:
            parts.append(f"{field} < %s")
            params.append(float(high))
        return " AND ".join(parts) or "TRUE", params
    raise ValueError(f"no SQL for filter operator {op!r} on {field!r}")


def where(query: RolloutFilter) -> tuple[str, list[Any]]:
    """The WHERE expression (without the keyword) and its parameters; "TRUE" when nothing is filtered."""
    if not query.conditions:
        return "TRUE", []
    rendered = [_render(c) for c in query.conditions]
    joiner = " AND " if query.filter_logic == "and" else " OR "
    sql = joiner.join(f"({part})" for part, _ in rendered)
    return sql, [p for _, params in rendered for p in params]


def order_by(sort_by: str | None, sort_order: str) -> str:
    """The ORDER BY expression of a sort in `SQL_SORTS` (or insertion order for None)."""
    direction = "DESC" if sort_order == "desc" else "ASC"
    if sort_by is None:
        return "seq"
    if sort_by == "end_time":
        nulls = "NULLS FIRST" if sort_order == "desc" else "NULLS LAST"
        return f"end_time {direction} {nulls}, seq"
    if sort_by == "mode":
        return f"coalesce(mode, '') {direction}, seq"
    if sort_by == "rollout_id":
        return f"rollout_id {direction}"
    if sort_by in ("start_time", "status"):
        return f"{sort_by} {direction}, seq"
    raise ValueError(f"no SQL sort for {sort_by!r}")
