"""`RolloutIndex`: the in-memory store's indexes over its rollouts, and `query_rollouts` answered from them.

It keeps every rollout record in insertion order (a list, so a record's position is its insertion rank), their ids
and start times (a start-time window is found by bisection while start times are non-decreasing, which they are
unless the clock went back), and buckets of positions per status and per mode. A query enumerates the smallest
source its conditions allow (a bucket, the window, the listed ids, else everything) and checks the other conditions
on positions through the same indexes, never touching the rollout models; only the page's records are returned.
Insertion order and start time (while sorted) need no sort beyond ordering the candidate positions.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Collection, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

from agl.store.query import Condition, RolloutFilter, check_sort_field, sort_key
from agl.types.core import Rollout

__all__ = ["RolloutIndex"]


class _HasRollout(Protocol):
    rollout: Rollout


R = TypeVar("R", bound=_HasRollout)


class RolloutIndex(Generic[R]):
    """Insertion order, start times and status/mode buckets of rollout records (call with the store's lock)."""

    def __init__(self) -> None:
        self.records: list[R] = []
        self._starts: list[float] = []
        self._starts_sorted = True
        self._position: dict[str, int] = {}
        self._ids: list[str] = []
        self._ends: list[float | None] = []
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
        self._ids.append(rollout.rollout_id)
        self._ends.append(rollout.end_time)
        self._by_status.setdefault(rollout.status, {})[position] = None
        self._by_mode.setdefault(rollout.mode, {})[position] = None

    def status_changed(self, record: R, old: str) -> None:
        """Move a record whose status just changed from `old` to its new status's bucket."""
        position = self._position[record.rollout.rollout_id]
        self._by_status[old].pop(position, None)
        self._by_status.setdefault(record.rollout.status, {})[position] = None

    def ended(self, record: R) -> None:
        """Note a record's new end time."""
        self._ends[self._position[record.rollout.rollout_id]] = record.rollout.end_time

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
        source, tests = self._plan(query)
        if not tests and isinstance(source, range):
            if in_order and not descending:
                return self.records[
                    source.start + offset : source.stop if end is None else min(source.stop, source.start + end)
                ], len(source)
            if end == 0:
                return [], len(source)
        if not tests and end == 0 and not isinstance(source, range):
            return [], sum(len(part) for part in source)
        positions = self._matches(source, tests, query.filter_logic)
        if in_order:
            page = self._page_of_positions(positions, descending, offset, end)
            return [self.records[p] for p in page], len(positions)
        assert sort_by is not None
        return [self.records[p] for p in self._sorted_page(positions, sort_by, descending, offset, end)], len(positions)

    def _sorted_page(
        self, positions: Sequence[int], sort_by: str, descending: bool, offset: int, end: int | None
    ) -> list[int]:
        """The page of `positions` (in insertion order) sorted by `sort_by`, ties keeping insertion order."""
        # Fields kept in lists sort with a C-level key; Python's sort is stable also in reverse.
        if sort_by in ("start_time", "rollout_id"):
            values: list[Any] = self._starts if sort_by == "start_time" else self._ids
            return sorted(positions, key=values.__getitem__, reverse=descending)[offset:end]
        if sort_by in ("status", "mode"):
            # Bucket by bucket in the order of their values (None sorts as ""), each in insertion order.
            buckets: dict[Any, dict[int, None]] = self._by_status if sort_by == "status" else self._by_mode
            values = sorted(buckets, key=lambda v: "" if v is None else v, reverse=descending)
            everything = isinstance(positions, range) and len(positions) == len(self.records)
            wanted = None if everything else set(positions)
            ordered: list[int] = []
            for value in values:
                members = sorted(buckets[value])
                ordered.extend(members if wanted is None else [p for p in members if p in wanted])
                if end is not None and len(ordered) >= end:
                    break
            return ordered[offset:end]
        if sort_by == "end_time":
            ends = self._ends
            done = [p for p in positions if ends[p] is not None]
            done.sort(key=cast("Callable[[int], float]", ends.__getitem__), reverse=descending)  # no None left
            waiting = [p for p in positions if ends[p] is None]  # no end time: last ascending, first descending
            return (waiting + done if descending else done + waiting)[offset:end]
        # Any other field: keep only the first `end` while ranking, ties by insertion order.
        key = sort_key(Rollout, sort_by)
        records = self.records
        try:
            if descending:
                # (key, -position) descending = key descending, then insertion order.
                ranked = ((key(records[p].rollout), -p) for p in positions)
                top = heapq.nlargest(end, ranked) if end is not None else sorted(ranked, reverse=True)
                return [-negated for _, negated in top[offset:]]
            ascending = ((key(records[p].rollout), p) for p in positions)
            low = heapq.nsmallest(end, ascending) if end is not None else sorted(ascending)
            return [p for _, p in low[offset:]]
        except TypeError as exc:
            raise ValueError(f"cannot sort by {sort_by!r}: its values are not comparable ({exc})") from exc

    def _plan(self, query: RolloutFilter) -> tuple[range | list[Collection[int]], list[Callable[[int], bool]]]:
        """Where to enumerate candidates from, and the position tests (one per remaining condition) they must pass.

        Each test means what its `Condition` says, read from the indexes instead of the rollouts.
        Under "and" the smallest enumerable condition is the source and the others are tests; under "or" every
        position is a candidate and passes if any test does.
        """
        whole = range(len(self.records))
        sources: list[tuple[int, range | list[Collection[int]], Condition]] = []
        tests: list[tuple[Condition, Callable[[int], bool]]] = []
        for condition in query.conditions:
            field, op, expected = condition.field, condition.op, condition.expected
            if op == "within" and field in ("status", "mode"):
                buckets = self._by_status if field == "status" else self._by_mode
                chosen: list[Collection[int]] = [buckets.get(v, {}) for v in dict.fromkeys(expected)]
                sources.append((sum(len(b) for b in chosen), chosen, condition))
                tests.append((condition, _member_of(chosen)))
            elif op == "within":  # rollout_id
                known = {self._position[r] for r in expected if isinstance(r, str) and r in self._position}
                sources.append((len(known), [known], condition))
                tests.append((condition, known.__contains__))
            elif op == "contains":  # rollout_id
                tests.append((condition, _substring_test(self._ids, expected)))
            else:  # start_time between
                low, high = expected
                if self._starts_sorted:
                    lo = 0 if low is None else bisect.bisect_left(self._starts, low)
                    hi = len(self._starts) if high is None else max(lo, bisect.bisect_left(self._starts, high))
                    sources.append((hi - lo, range(lo, hi), condition))
                    tests.append((condition, range(lo, hi).__contains__))
                else:
                    tests.append((condition, _time_test(self._starts, low, high)))
        if query.filter_logic == "or" and len(tests) > 1:
            # The union of each condition's members: enumerated from its index, else found by its test.
            enumerable = {id(condition): parts for _, parts, condition in sources}
            union: list[Collection[int]] = []
            for condition, test in tests:
                parts = enumerable.get(id(condition))
                if parts is not None:
                    union.extend([parts] if isinstance(parts, range) else parts)
                else:
                    union.append([p for p in whole if test(p)])
            return [set(itertools.chain.from_iterable(union))], []
        if not sources:
            sources.append((len(whole), whole, Condition("", "", None)))
        _, source, chosen_condition = min(sources, key=lambda item: item[0])
        rest = [(condition, test) for condition, test in tests if condition is not chosen_condition]
        if isinstance(source, range):
            # A substring search reads the id list directly: much cheaper than a test call per position.
            for condition, _ in rest:
                if condition.op == "contains" and isinstance(condition.expected, str):
                    part, ids = condition.expected, self._ids
                    found = [p for p, rid in enumerate(ids[source.start : source.stop], source.start) if part in rid]
                    return [found], [test for other, test in rest if other is not condition]
        return source, [test for _, test in rest]

    def _matches(
        self, source: range | list[Collection[int]], tests: list[Callable[[int], bool]], logic: str
    ) -> Sequence[int]:
        """The sorted positions from `source` that pass the tests (all of them, or any under "or")."""
        if isinstance(source, range):
            if not tests:
                return source
            positions: list[int] = list(source)
        else:
            # Bucket members arrive roughly in order, so this sort is close to linear.
            positions = sorted(itertools.chain.from_iterable(source))
        if logic == "or" and len(tests) > 1:
            return [p for p in positions if any(test(p) for test in tests)]
        for test in tests:
            positions = [p for p in positions if test(p)]
        return positions

    def _page_of_positions(self, positions: Sequence[int], descending: bool, offset: int, end: int | None) -> list[int]:
        """The page of sorted `positions` in insertion order, or by start time descending (ties in order)."""
        if not descending:
            return list(positions[offset:end])
        starts = self._starts
        page: list[int] = []
        count = 0
        i = len(positions)
        while i > 0 and (end is None or count < end):
            # One group of equal start times, emitted in insertion order.
            j = i - 1
            while j > 0 and starts[positions[j - 1]] == starts[positions[i - 1]]:
                j -= 1
            for position in positions[j:i]:
                if count >= offset and (end is None or count < end):
                    page.append(position)
                count += 1
            i = j
        return page


def _member_of(buckets: list[Collection[int]]) -> Callable[[int], bool]:
    if len(buckets) == 1:
        return buckets[0].__contains__
    return lambda p: any(p in bucket for bucket in buckets)


def _time_test(starts: list[float], low: float | None, high: float | None) -> Callable[[int], bool]:
    return lambda p: (low is None or starts[p] >= low) and (high is None or starts[p] < high)


def _substring_test(ids: list[str], part: object) -> Callable[[int], bool]:
    if not isinstance(part, str):
        return lambda p: False  # as the predicate: a non-string never occurs in an id
    return lambda p: part in ids[p]
