"""`query_rollouts` as SQL for the SQLite store: its filter as a WHERE clause and its sort as an ORDER BY.

The conditions come from `agl.store.query.rollout_filter` (the same ones the in-memory store evaluates in Python)
and are combined by the same rule: each one rendered, joined by the filter logic, an empty set matching everything.
Every rendering matches the Python predicate exactly (a condition that can never hold in Python renders as `0`).
The ORDER BY ends with `seq` (insertion order), which is what a stable sort of the insertion-ordered rows gives;
`*_time` fields put NULL last ascending and first descending, as `agl.store.query.sort_key` does.
"""

from __future__ import annotations

import json
from typing import Any

from agl.store.query import Condition, RolloutFilter

__all__ = ["SQL_SORTS", "order_by", "where"]

SQL_SORTS = frozenset({"start_time", "end_time", "status", "rollout_id", "mode"})
"""`sort_by` values sorted by SQL over indexed columns; any other field is sorted in Python."""


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _render(condition: Condition, column_prefix: str) -> tuple[str, list[Any]]:
    field, op, expected = condition.field, condition.op, condition.expected
    if op == "within":
        if field == "rollout_id":
            # Any number of ids in one parameter; non-strings never equal a rollout id.
            wanted = [item for item in expected if isinstance(item, str)]
            if not wanted:
                return "0", []
            return "rollout_id IN (SELECT value FROM json_each(?))", [json.dumps(wanted)]
        values = list(dict.fromkeys(expected))
        if not values:
            return "0", []
        prefix = column_prefix if field == "status" else ""
        return f"{prefix}{field} IN ({_marks(len(values))})", values
    if op == "contains":
        if not isinstance(expected, str):
            return "0", []
        return f"instr({field}, ?) > 0", [expected]
    if op == "between":
        low, high = expected
        parts: list[str] = []
        params: list[Any] = []
        if low is not None:
            parts.append(f"{field} >= ?")
            params.append(low)
        if high is not None:
            parts.append(f"{field} < ?")
            params.append(high)
        return " AND ".join(parts) or "1", params
    raise ValueError(f"no SQL for filter operator {op!r} on {field!r}")


def where(query: RolloutFilter, sort_by: str | None = None) -> tuple[str, list[Any]]:
    """The WHERE expression (without the keyword) and its parameters; "1" when nothing is filtered.

    With `sort_by="end_time"` the status test is written `+status`, which keeps SQLite from answering it with the
    status indexes (then sorting every match): the end-time index holds the status, so walking it in order and
    checking the status there stops after the page.
    """
    if not query.conditions:
        return "1", []
    prefix = "+" if sort_by == "end_time" else ""
    rendered = [_render(c, prefix) for c in query.conditions]
    joiner = " AND " if query.filter_logic == "and" else " OR "
    sql = joiner.join(f"({part})" for part, _ in rendered)
    return sql, [p for _, params in rendered for p in params]


def order_by(sort_by: str | None, sort_order: str) -> str:
    """The ORDER BY expression of a sort in `SQL_SORTS` (or insertion order for None)."""
    direction = "DESC" if sort_order == "desc" else "ASC"
    if sort_by is None:
        return "seq"
    if sort_by == "end_time":
        # The same expression as the index rollouts_by_end, so the index gives the order.
        return f"end_time IS NULL {direction}, end_time {direction}, seq"
    if sort_by == "mode":
        return f"coalesce(mode, '') {direction}, seq"
    if sort_by == "rollout_id":
        return f"rollout_id {direction}"
    if sort_by in ("start_time", "status"):
        return f"{sort_by} {direction}, seq"
    raise ValueError(f"no SQL sort for {sort_by!r}")
