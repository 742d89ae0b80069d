"""Filtering, sorting and pagination of query results, shared by every store backend."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from agl.store.inputs import INT64_MAX as _INT64_MAX
from agl.types.core import FilterOptions, PaginatedResult

__all__ = [
    "Condition",
    "RolloutFilter",
    "check_page",
    "check_rollout_window",
    "check_sort_field",
    "check_sort_order",
    "compile_filter",
    "filter_conditions",
    "paginate",
    "rollout_filter",
    "sort_items",
    "sort_key",
]

T = TypeVar("T")
Predicate = Callable[[Any], bool]

_OPERATORS = ("exact", "within", "contains", "between")


@dataclass(frozen=True)
class Condition:
    """One filter condition: the item's `field` compared to `expected` by `op`.

    `exact`: equal; `within`: a member of the collection `expected`; `contains`: `expected` is a substring (or
    element) of the value; `between`: `expected` is a `(low, high)` pair and `low <= value < high` (a None bound is
    open). A None value never matches `within`, `contains` or `between`.
    """

    field: str
    op: str
    expected: Any


def _condition(field: str, op: str, expected: Any) -> Predicate:
    if op == "exact":
        return lambda item: getattr(item, field, None) == expected

    if op == "between":
        low, high = expected

        def between(item: Any) -> bool:
            value = getattr(item, field, None)
            if value is None:
                return False
            try:
                return (low is None or value >= low) and (high is None or value < high)
            except TypeError:
                return False

        return between

    if op == "within":

        def within(item: Any) -> bool:
            try:
                return getattr(item, field, None) in expected
            except TypeError:
                return False

        return within

    def contains(item: Any) -> bool:
        value = getattr(item, field, None)
        if value is None:
            return False
        try:
            return expected in value
        except TypeError:
            return False

    return contains


def _conditions(field: str, ops: Any, where: str) -> list[Condition]:
    if not isinstance(ops, Mapping):
        raise ValueError(
            f"{where}: filter for field {field!r} must be a mapping of operators {_OPERATORS}, got {ops!r}"
        )
    out: list[Condition] = []
    for op, expected in ops.items():
        if op not in _OPERATORS:
            raise ValueError(f"{where}: unknown filter operator {op!r} for field {field!r}; use one of {_OPERATORS}")
        if expected is None:
            continue
        if op == "between" and (not isinstance(expected, tuple) or len(expected) != 2):
            raise ValueError(f"{where}: 'between' for field {field!r} takes a (low, high) pair, got {expected!r}")
        out.append(Condition(field, op, expected))
    return out


def filter_conditions(filters: FilterOptions | None) -> tuple[list[Condition], list[Condition], str]:
    """The `_must` conditions, the pool conditions and the pool's logic ("and"/"or") of filter options.

    The rule every backend follows: all `_must` conditions hold, and the pool's conditions are combined by the
    logic; an empty pool matches everything.
    """
    if not filters:
        return [], [], "and"
    aggregate = filters.get("_aggregate", "and")
    if aggregate not in ("and", "or"):
        raise ValueError(f"filter _aggregate must be 'and' or 'or', got {aggregate!r}")
    pool: list[Condition] = []
    for field, ops in filters.items():
        if field in ("_aggregate", "_must"):
            continue
        pool.extend(_conditions(field, ops, "filter"))
    must: list[Condition] = []
    raw_must = filters.get("_must")
    if raw_must is not None:
        entries = [raw_must] if isinstance(raw_must, Mapping) else list(raw_must)
        seen: set[tuple[str, str]] = set()
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ValueError(f"filter _must entries must be mappings of field -> operators, got {entry!r}")
            for field, ops in entry.items():
                for cond in _conditions(field, ops, "filter _must"):
                    if (cond.field, cond.op) in seen:
                        raise ValueError(f"filter _must sets operator {cond.op!r} for field {field!r} twice")
                    seen.add((cond.field, cond.op))
                    must.append(cond)
    return must, pool, str(aggregate)


def compile_filter(filters: FilterOptions | None) -> Predicate | None:
    """Compile filter options into a predicate, or None when nothing is filtered.

    Conditions of all fields form one pool combined by `_aggregate` ("and" default, or "or"); `_must` conditions
    always hold. An operator whose value is None is ignored; a pool with no conditions filters nothing.
    """
    must, pool, aggregate = filter_conditions(filters)
    must_preds = [_condition(c.field, c.op, c.expected) for c in must]
    pool_preds = [_condition(c.field, c.op, c.expected) for c in pool]
    if not must_preds and not pool_preds:
        return None
    if aggregate == "or" and pool_preds:
        # "any of the pool" is one condition of its own, next to the musts.
        pool_any = pool_preds

        def any_of(item: Any) -> bool:
            for p in pool_any:
                if p(item):
                    return True
            return False

        pool_preds = [any_of]
    preds = must_preds + pool_preds
    if len(preds) == 1:
        return preds[0]

    def all_of(item: Any) -> bool:
        # A plain loop: this runs once per stored item on scans, where generator overhead is most of the cost.
        for p in preds:
            if not p(item):
                return False
        return True

    return all_of


def _none_substitute(model: type[BaseModel], field: str) -> Any:
    annotation = model.model_fields[field].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    candidates: Iterable[Any] = args if origin in (typing.Union, types.UnionType) else [annotation]
    for candidate in candidates:
        if candidate is str or typing.get_origin(candidate) is Literal:
            return ""
        if candidate is bool or candidate is int:
            return 0
        if candidate is float:
            return 0.0
    raise ValueError(f"cannot sort by {field!r}: it may be None and has no natural order")


def check_sort_field(model: type[BaseModel], sort_by: str) -> None:
    """Raise a ValueError naming the allowed fields if `sort_by` is not a field of `model`."""
    if sort_by not in model.model_fields:
        allowed = ", ".join(model.model_fields)
        raise ValueError(f"Invalid sort_by: {sort_by}, allowed fields are: {allowed}")


def sort_key(model: type[BaseModel], sort_by: str) -> Callable[[Any], Any]:
    """A key function for `sort_by`: None sorts last for `*_time` fields, else as the type's zero value."""
    check_sort_field(model, sort_by)
    if sort_by.endswith("_time"):

        def time_key(item: Any) -> tuple[int, Any]:
            value = getattr(item, sort_by)
            return (1, 0.0) if value is None else (0, value)

        return time_key
    substitute: list[Any] = []

    def key(item: Any) -> Any:
        value = getattr(item, sort_by)
        if value is None:
            if not substitute:
                substitute.append(_none_substitute(model, sort_by))
            return substitute[0]
        return value

    return key


def check_sort_order(sort_order: str) -> None:
    """Raise a ValueError unless `sort_order` is "asc" or "desc"."""
    if sort_order not in ("asc", "desc"):
        raise ValueError(f"sort_order must be 'asc' or 'desc', got {sort_order!r}")


def sort_items(items: list[T], model: type[BaseModel], sort_by: str | None, sort_order: str = "asc") -> list[T]:
    """Sort items stably by one field (no-op when `sort_by` is None)."""
    check_sort_order(sort_order)
    if sort_by is None:
        return items
    key = sort_key(model, sort_by)
    try:
        return sorted(items, key=key, reverse=sort_order == "desc")
    except TypeError as exc:
        raise ValueError(f"cannot sort by {sort_by!r}: its values are not comparable ({exc})") from exc


def check_page(limit: int, offset: int) -> None:
    """Raise a ValueError unless `limit` is -1 (all) or ≥ 0 and `offset` ≥ 0."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not -1 <= limit <= _INT64_MAX:
        raise ValueError(f"limit must be an integer in 0..{_INT64_MAX}, or -1 for no limit; got {limit!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _INT64_MAX:
        raise ValueError(f"offset must be an integer in 0..{_INT64_MAX}; got {offset!r}")


def paginate(items: Sequence[T], limit: int, offset: int, total: int | None = None) -> PaginatedResult[T]:
    """One page `[offset, offset+limit)` of `items` (all from `offset` when limit is -1)."""
    check_page(limit, offset)
    end = None if limit == -1 else offset + limit
    return PaginatedResult[Any].model_construct(
        items=list(items[offset:end]), limit=limit, offset=offset, total=len(items) if total is None else total
    )


# -- the filters of each query method, built once for every backend ----------------------------------------------


def _check_logic(filter_logic: str) -> None:
    if filter_logic not in ("and", "or"):
        raise ValueError(f"filter_logic must be 'and' or 'or', got {filter_logic!r}")


_ROLLOUT_MODES = ("train", "val", "test")


def _check_modes(mode_in: Any) -> list[str] | None:
    if mode_in is None:
        return None
    if isinstance(mode_in, (str, bytes)) or not isinstance(mode_in, Iterable):
        raise ValueError(f"mode_in must be a list of rollout modes (train, val, test), got {mode_in!r}")
    modes = list(mode_in)
    for item in modes:
        if item not in _ROLLOUT_MODES:
            raise ValueError(f"mode_in item {item!r} is not a rollout mode; use train, val or test")
    return modes


def _check_time(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:  # an int too large for a float is refused like infinity
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number of epoch seconds (or None), got {value!r}")
    return number


def check_rollout_window(
    *, mode_in: Any, start_time_from: Any, start_time_to: Any
) -> tuple[list[str] | None, float | None, float | None]:
    """`mode_in` and the start-time window of `query_rollouts`, checked (a ValueError names the bad field)."""
    return (
        _check_modes(mode_in),
        _check_time(start_time_from, "start_time_from"),
        _check_time(start_time_to, "start_time_to"),
    )


@dataclass(frozen=True)
class RolloutFilter:
    """The resolved filters of `query_rollouts` (deprecated aliases applied, values checked).

    `conditions` is the pool combined by `filter_logic` (see `filter_conditions`): one condition per given filter
    among status, rollout id (membership and substring), mode and the start-time window `[from, to)`, which is one
    condition. The in-memory store evaluates them on its indexes and the SQLite store renders them as SQL, each
    operator meaning what `Condition` says (the conformance suite holds both to the same answers).
    """

    status_in: Sequence[str] | None
    rollout_id_in: Sequence[str] | None
    rollout_id_contains: str | None
    mode_in: Sequence[str] | None
    start_time_from: float | None
    start_time_to: float | None
    filter_logic: str
    conditions: tuple[Condition, ...]


def rollout_filter(
    *,
    status_in: Sequence[str] | None,
    rollout_id_in: Sequence[str] | None,
    rollout_id_contains: str | None,
    filter_logic: str,
    status: Sequence[str] | None = None,
    rollout_ids: Sequence[str] | None = None,
    mode_in: Sequence[str] | None = None,
    start_time_from: float | None = None,
    start_time_to: float | None = None,
) -> RolloutFilter:
    """Check `query_rollouts` filters (statuses, modes, times, logic) and resolve them; warns on deprecated aliases."""
    from agl.store import state
    from agl.store.inputs import warn_deprecated_query_argument

    if status_in is None and status is not None:
        warn_deprecated_query_argument("status", "status_in")
        status_in = status
    if rollout_id_in is None and rollout_ids is not None:
        warn_deprecated_query_argument("rollout_ids", "rollout_id_in")
        rollout_id_in = rollout_ids
    for item in status_in or ():
        state.check_rollout_status(item, "status_in item")
    modes, time_from, time_to = check_rollout_window(
        mode_in=mode_in, start_time_from=start_time_from, start_time_to=start_time_to
    )
    _check_logic(filter_logic)
    window = None if time_from is None and time_to is None else (time_from, time_to)
    filters: FilterOptions = {
        "status": {"within": status_in},
        "rollout_id": {"within": rollout_id_in, "contains": rollout_id_contains},
        "mode": {"within": modes},
        "start_time": {"between": window},
        "_aggregate": filter_logic,
    }
    _, pool, _ = filter_conditions(filters)
    return RolloutFilter(
        status_in=status_in,
        rollout_id_in=rollout_id_in,
        rollout_id_contains=rollout_id_contains,
        mode_in=modes,
        start_time_from=time_from,
        start_time_to=time_to,
        filter_logic=filter_logic,
        conditions=tuple(pool),
    )


def span_filter(
    *,
    trace_id: str | None,
    trace_id_contains: str | None,
    span_id: str | None,
    span_id_contains: str | None,
    parent_id: str | None,
    parent_id_contains: str | None,
    name: str | None,
    name_contains: str | None,
    filter_logic: str,
) -> Predicate | None:
    """The predicate of `query_spans`' optional filters (rollout and attempt are applied by the store)."""
    _check_logic(filter_logic)
    return compile_filter(
        {
            "trace_id": {"exact": trace_id, "contains": trace_id_contains},
            "span_id": {"exact": span_id, "contains": span_id_contains},
            "parent_id": {"exact": parent_id, "contains": parent_id_contains},
            "name": {"exact": name, "contains": name_contains},
            "_aggregate": filter_logic,
        }
    )


def worker_filter(
    *, status_in: Sequence[str] | None, worker_id_contains: str | None, filter_logic: str
) -> Predicate | None:
    """The predicate of `query_workers`' filters (statuses checked)."""
    from agl.store import state

    for item in status_in or ():
        state.check_worker_status(item, "status_in item")
    _check_logic(filter_logic)
    return compile_filter(
        {"status": {"within": status_in}, "worker_id": {"contains": worker_id_contains}, "_aggregate": filter_logic}
    )
