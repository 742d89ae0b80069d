"""`RolloutIndex`: the in-memory store's indexes over its rollouts, and `query_rollouts` answered from them.

It keeps every rollout record in insertion order (a list), their start times (to find a start-time window by
bisection while they are non-decreasing, which they are unless the clock went back), and buckets of positions per
status and per mode. A query starts from the smallest of: the whole list or the window's slice of it, the status
buckets, the mode buckets, or the listed ids; when that source alone decides the filter and the order is insertion
order (or start time while start times are sorted), only the page is touched. Otherwise every candidate is checked
and the matches sorted, as before.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from agl.store.query import Predicate, RolloutFilter, check_sort_field, sort_key
from agl.types.core import Rollout

__all__ = ["RolloutIndex"]


class _HasRollout(Protocol):
    rollout: Rollout


R = TypeVar("R", bound=_HasRollout)

_SCAN_COST = 10
"""Checking one record while reading the list in order costs about this many times gathering and sorting one
bucket position: reading finds a page of a bucket of k among n after about `end * n / k` records."""


@dataclass
class _Plan:
    """Where the candidates come from: positions `lo:hi` of the list, or an unordered list of positions."""

    lo: int
    hi: int
    positions: list[int] | None
    exact: bool
    """Whether every candidate matches (the source alone decides the filter)."""


class RolloutIndex(Generic[R]):
    """Insertion order, start times and status/mode buckets of rollout records (call with the store's lock)."""

    def __init__(self) -> None:
        self.records: list[R] = []
        self._starts: list[float] = []
        self._starts_sorted = True
        self._position: dict[str, int] = {}
        self._by_status: dict[str, dict[int, None]] = {}
        self._by_mode: dict[str | None, dict[int, None]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: R) -> None:
        """Index a new record (it comes last in insertion order)."""
        rollout = record.rollout
        position = len(self.records)
        self.records.append(record)
        start = rollout.start_time
        if self._starts and start < self._starts[-1]:
            self._starts_sorted = False
        self._starts.append(start)
        self._position[rollout.rollout_id] = position
        self._by_status.setdefault(rollout.status, {})[position] = None
        self._by_mode.setdefault(rollout.mode, {})[position] = None

    def status_changed(self, record: R, old: str) -> None:
        """Move a record whose status just changed from `old` to its new status's bucket."""
        position = self._position[record.rollout.rollout_id]
        self._by_status[old].pop(position, None)
        self._by_status.setdefault(record.rollout.status, {})[position] = None

    def mode_changed(self, record: R, old: str | None) -> None:
        """Move a record whose mode just changed from `old` to its new mode's bucket."""
        position = self._position[record.rollout.rollout_id]
        self._by_mode[old].pop(position, None)
        self._by_mode.setdefault(record.rollout.mode, {})[position] = None

    # -- queries ----------------------------------------------------------------------------------------------
    def select(
        self, query: RolloutFilter, sort_by: str | None, sort_order: str, limit: int, offset: int
    ) -> tuple[list[R], int]:
        """The page `[offset, offset+limit)` of the records matching `query` in the requested order, and the total."""
        if sort_by is not None:
            check_sort_field(Rollout, sort_by)
        end = None if limit == -1 else offset + limit
        descending = sort_by is not None and sort_order == "desc"
        in_order = sort_by is None or (sort_by == "start_time" and self._starts_sorted)
        plan = self._plan(query)
        predicate = None if plan.exact else query.predicate
        if in_order and plan.positions is None:
            return self._ordered_page(plan.lo, plan.hi, predicate, descending, offset, end)
        if in_order and plan.positions is not None and plan.exact and end is not None:
            size = len(plan.positions)
            if end * len(self.records) * _SCAN_COST <= size * size:
                # A large bucket whose members are spread evenly: reading the list in order finds the page soonest.
                page, _ = self._ordered_page(0, len(self.records), query.predicate, descending, offset, end, size)
                return page, size
        if plan.positions is None:
            matches = [p for p in range(plan.lo, plan.hi) if predicate is None or predicate(self.records[p].rollout)]
        else:
            matches = sorted(p for p in plan.positions if predicate is None or predicate(self.records[p].rollout))
        records = [self.records[p] for p in matches]
        if sort_by is not None:
            key = sort_key(Rollout, sort_by)
            try:
                records.sort(key=lambda r: key(r.rollout), reverse=descending)
            except TypeError as exc:
                raise ValueError(f"cannot sort by {sort_by!r}: its values are not comparable ({exc})") from exc
        return records[offset:end], len(records)

    def _plan(self, query: RolloutFilter) -> _Plan:
        lo, hi = 0, len(self.records)
        conditions = query.conditions
        if query.filter_logic == "or" and len(conditions) > 1:
            return _Plan(lo, hi, None, not conditions)
        window_exact = False
        if (query.start_time_from is not None or query.start_time_to is not None) and self._starts_sorted:
            if query.start_time_from is not None:
                lo = bisect.bisect_left(self._starts, query.start_time_from)
            if query.start_time_to is not None:
                hi = max(lo, bisect.bisect_left(self._starts, query.start_time_to))
            window_exact = True
        best = _Plan(lo, hi, None, not conditions or (window_exact and len(conditions) == 1))
        best_size = hi - lo
        alone = len(conditions) == 1
        if query.rollout_id_in is not None:
            wanted = {rid for rid in query.rollout_id_in if isinstance(rid, str)}
            positions = [self._position[rid] for rid in wanted if rid in self._position]
            if len(positions) < best_size:
                best, best_size = _Plan(0, 0, positions, alone), len(positions)
        for field, values, buckets in (
            ("status", query.status_in, self._by_status),
            ("mode", query.mode_in, self._by_mode),
        ):
            if values is None:
                continue
            chosen = [buckets.get(v, {}) for v in dict.fromkeys(values)]
            size = sum(len(b) for b in chosen)
            # On a tie an exact bucket wins: its size is the total, no record needs checking.
            if size < best_size or (size == best_size and alone and not best.exact):
                positions = [p for bucket in chosen for p in bucket]
                best, best_size = _Plan(0, 0, positions, alone and conditions[0].field == field), size
        return best

    def _ordered(self, lo: int, hi: int, descending: bool) -> Iterator[int]:
        """Positions `lo:hi` in insertion order, or by start time descending with ties in insertion order."""
        if not descending:
            yield from range(lo, hi)
            return
        starts = self._starts
        group: list[int] = []
        for position in range(hi - 1, lo - 1, -1):
            if group and starts[position] != starts[group[-1]]:
                yield from reversed(group)
                group.clear()
            group.append(position)
        yield from reversed(group)

    def _ordered_page(
        self,
        lo: int,
        hi: int,
        predicate: Predicate | None,
        descending: bool,
        offset: int,
        end: int | None,
        total: int | None = None,
    ) -> tuple[list[R], int]:
        """The page of positions `lo:hi` (in order) passing `predicate`; stops early when `total` is known."""
        records = self.records
        if predicate is None and not descending:
            stop = hi if end is None else min(hi, lo + end)
            return records[lo + offset : stop] if lo + offset < stop else [], hi - lo
        check = predicate
        page: list[R] = []
        count = 0
        known = total is not None or check is None
        for position in self._ordered(lo, hi, descending):
            record = records[position]
            if check is not None and not check(record.rollout):
                continue
            if count >= offset and (end is None or count < end):
                page.append(record)
            count += 1
            if known and end is not None and count >= end:
                break
        if total is not None:
            return page, total
        return page, (hi - lo) if check is None else count
