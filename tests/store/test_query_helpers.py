"""Filtering, sorting and pagination helpers shared by every backend."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agl.store.query import check_page, compile_filter, paginate, sort_items
from agl.types import Attempt, Worker

ITEMS = [SimpleNamespace(name=n, tag=t) for n, t in [("alpha", "x"), ("beta", None), ("gamma", "y")]]


def names(pred: object) -> list[str]:
    return [i.name for i in ITEMS if pred is None or pred(i)]  # type: ignore[operator]


def test_no_filter_is_none() -> None:
    assert compile_filter(None) is None and compile_filter({}) is None
    assert compile_filter({"name": {"exact": None}, "_aggregate": "or"}) is None


def test_and_or_pool() -> None:
    f = {"name": {"contains": "a"}, "tag": {"exact": "x"}}
    assert names(compile_filter(f)) == ["alpha"]
    assert names(compile_filter({**f, "_aggregate": "or"})) == ["alpha", "beta", "gamma"]
    assert names(compile_filter({"name": {"within": ["beta"], "contains": "gam"}, "_aggregate": "or"})) == [
        "beta",
        "gamma",
    ]


def test_within_empty_matches_nothing_and_contains_skips_none() -> None:
    assert names(compile_filter({"name": {"within": []}})) == []
    assert names(compile_filter({"tag": {"contains": "x"}})) == ["alpha"]
    assert names(compile_filter({"tag": {"within": 5}})) == []  # not a container: no match, no error


def test_must_always_holds() -> None:
    f = {"_must": {"tag": {"exact": "y"}}, "name": {"contains": "zzz"}, "_aggregate": "or"}
    assert names(compile_filter(f)) == []
    assert names(compile_filter({"_must": [{"tag": {"exact": "y"}}]})) == ["gamma"]
    with pytest.raises(ValueError, match="twice"):
        compile_filter({"_must": [{"tag": {"exact": "y"}}, {"tag": {"exact": "x"}}]})


@pytest.mark.parametrize(
    ("filters", "message"),
    [({"name": {"like": "a"}}, "unknown filter operator 'like'"), ({"_aggregate": "xor"}, "_aggregate"),
     ({"name": "alpha"}, "must be a mapping")],
)  # fmt: skip
def test_bad_filters(filters: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_filter(filters)


def _attempts() -> list[Attempt]:
    return [
        Attempt(rollout_id="r", attempt_id=a, sequence_id=s, start_time=1, end_time=e, worker_id=w)
        for a, s, e, w in [("a1", 2, None, "w2"), ("a2", 1, 5.0, None), ("a3", 3, 1.0, "w1")]
    ]


def test_sort_none_times_last_in_asc_first_in_desc() -> None:
    assert [a.attempt_id for a in sort_items(_attempts(), Attempt, "end_time")] == ["a3", "a2", "a1"]
    assert [a.attempt_id for a in sort_items(_attempts(), Attempt, "end_time", "desc")] == ["a1", "a2", "a3"]


def test_sort_none_strings_as_empty_and_stable() -> None:
    assert [a.attempt_id for a in sort_items(_attempts(), Attempt, "worker_id")] == ["a2", "a3", "a1"]
    assert [a.attempt_id for a in sort_items(_attempts(), Attempt, "start_time", "desc")] == ["a1", "a2", "a3"]


def test_sort_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="Invalid sort_by: nope, allowed fields are: rollout_id"):
        sort_items(_attempts(), Attempt, "nope")
    with pytest.raises(ValueError, match="sort_order"):
        sort_items(_attempts(), Attempt, "sequence_id", "up")
    workers = [Worker(worker_id="a", heartbeat_stats={"x": 1}), Worker(worker_id="b", heartbeat_stats={"y": 1})]
    with pytest.raises(ValueError, match="heartbeat_stats"):
        sort_items(workers, Worker, "heartbeat_stats")


def test_paginate() -> None:
    page = paginate(list(range(10)), 3, 8)
    assert (page.items, page.total, page.limit, page.offset) == ([8, 9], 10, 3, 8)
    assert paginate(list(range(3)), -1, 0).items == [0, 1, 2]
    assert paginate(list(range(3)), 0, 0).items == []
    assert paginate(list(range(3)), 2, 10).items == [] and paginate(list(range(3)), 2, 10).total == 3


@pytest.mark.parametrize(("limit", "offset", "message"), [(-2, 0, "limit"), (1, -1, "offset"), (True, 0, "limit")])
def test_bad_pages(limit: int, offset: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_page(limit, offset)


def test_between_is_half_open_and_skips_none() -> None:
    items = [SimpleNamespace(name=n, t=t) for n, t in [("a", 1.0), ("b", 2.0), ("c", None), ("d", 3.0)]]

    def kept(low: float | None, high: float | None) -> list[str]:
        pred = compile_filter({"t": {"between": (low, high)}})
        assert pred is not None
        return [i.name for i in items if pred(i)]

    assert kept(1.0, 3.0) == ["a", "b"]
    assert kept(None, 2.0) == ["a"]
    assert kept(2.0, None) == ["b", "d"]
    with pytest.raises(ValueError, match="between"):
        compile_filter({"t": {"between": 5}})
