"""Filtering, sorting and pagination of every query method (spec §4, query parts of §2)."""

from __future__ import annotations

import warnings

import pytest

from agl.store.base import LightningStore
from agl.types import AttemptedRollout, EnqueueRolloutRequest, Rollout
from tests.store.clock import FakeClock
from tests.store.helpers import ids, make_span, sample_resources

# -- rollouts: pagination ---------------------------------------------------------------------------------------


async def _five_rollouts(store: LightningStore, clock: FakeClock) -> list[str]:
    out = []
    for i in range(5):
        clock.advance(1)
        out.append((await store.enqueue_rollout(input=i)).rollout_id)
    return out


async def test_query_rollouts_no_filter_returns_all_in_insertion_order(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    result = await store.query_rollouts()
    assert ids(result) == created
    assert result.total == 5 and result.limit == -1 and result.offset == 0
    assert len(result) == 5
    assert result[0].rollout_id == created[0]
    assert ids(result[1:3]) == created[1:3]


async def test_query_rollouts_empty_store(store: LightningStore) -> None:
    result = await store.query_rollouts()
    assert len(result) == 0 and result.total == 0


@pytest.mark.parametrize(
    ("limit", "offset", "window"),
    [
        (-1, 0, slice(0, 5)),
        (-1, 3, slice(3, 5)),
        (0, 0, slice(0, 0)),
        (0, 2, slice(0, 0)),
        (2, 0, slice(0, 2)),
        (2, 2, slice(2, 4)),
        (2, 4, slice(4, 5)),
        (10, 0, slice(0, 5)),
        (2, 5, slice(0, 0)),
        (3, 50, slice(0, 0)),
    ],
)
async def test_query_rollouts_pagination(
    store: LightningStore, clock: FakeClock, limit: int, offset: int, window: slice
) -> None:
    created = await _five_rollouts(store, clock)
    page = await store.query_rollouts(limit=limit, offset=offset)
    assert ids(page) == created[window]
    assert page.total == 5
    assert page.limit == limit and page.offset == offset


async def test_query_rollouts_total_counts_matches_not_all(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    for rid in created[:3]:
        await store.update_rollout(rid, status="succeeded")
    page = await store.query_rollouts(status_in=["succeeded"], limit=2, offset=1)
    assert ids(page) == created[1:3]
    assert page.total == 3


# -- rollouts: filters ------------------------------------------------------------------------------------------


async def test_query_rollouts_status_in(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    await store.update_rollout(created[1], status="running")
    await store.update_rollout(created[3], status="failed")
    assert ids(await store.query_rollouts(status_in=["running", "failed"])) == [created[1], created[3]]
    assert ids(await store.query_rollouts(status_in=["queuing"])) == [created[0], created[2], created[4]]
    assert ids(await store.query_rollouts(status_in=["cancelled"])) == []


async def test_query_rollouts_rollout_id_in(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    result = await store.query_rollouts(rollout_id_in=[created[4], created[0], "ro-unknown"])
    assert ids(result) == [created[0], created[4]]


async def test_query_rollouts_rollout_id_contains(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    target = created[2]
    for fragment in (target, target[1:-1], target[-3:]):
        result = ids(await store.query_rollouts(rollout_id_contains=fragment))
        assert target in result
        assert result == [rid for rid in created if fragment in rid]
    assert ids(await store.query_rollouts(rollout_id_contains="")) == created
    assert ids(await store.query_rollouts(rollout_id_contains="#no-such-fragment#")) == []


@pytest.mark.parametrize("field", ["status_in", "rollout_id_in"])
@pytest.mark.parametrize("logic", ["and", "or"])
async def test_query_rollouts_empty_list_matches_nothing(
    store: LightningStore, clock: FakeClock, field: str, logic: str
) -> None:
    await _five_rollouts(store, clock)
    result = await store.query_rollouts(**{field: []}, filter_logic=logic)  # type: ignore[arg-type]
    assert ids(result) == [] and result.total == 0


async def test_query_rollouts_and_logic_intersects(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    await store.update_rollout(created[0], status="succeeded")
    await store.update_rollout(created[1], status="succeeded")
    result = await store.query_rollouts(status_in=["succeeded"], rollout_id_in=[created[1], created[2]])
    assert ids(result) == [created[1]]


async def test_query_rollouts_or_logic_unions(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    await store.update_rollout(created[0], status="succeeded")
    result = await store.query_rollouts(
        status_in=["succeeded"], rollout_id_in=[created[3]], rollout_id_contains=created[4], filter_logic="or"
    )
    expected = [rid for i, rid in enumerate(created) if i in (0, 3) or created[4] in rid]
    assert ids(result) == expected
    assert {created[0], created[3], created[4]} <= set(expected)


async def test_query_rollouts_or_with_empty_list_still_uses_other_filters(
    store: LightningStore, clock: FakeClock
) -> None:
    created = await _five_rollouts(store, clock)
    result = await store.query_rollouts(status_in=[], rollout_id_in=[created[2]], filter_logic="or")
    assert ids(result) == [created[2]]


@pytest.mark.parametrize("logic", ["and", "or"])
async def test_query_rollouts_no_filter_matches_everything_under_any_logic(
    store: LightningStore, clock: FakeClock, logic: str
) -> None:
    created = await _five_rollouts(store, clock)
    assert ids(await store.query_rollouts(filter_logic=logic)) == created  # type: ignore[arg-type]


async def test_query_rollouts_deprecated_aliases(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    await store.update_rollout(created[0], status="running")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        by_status = await store.query_rollouts(status=["running"])
        by_ids = await store.query_rollouts(rollout_ids=[created[3]])
        # The new argument wins over the deprecated alias.
        both = await store.query_rollouts(status_in=["queuing"], status=["running"])
    assert ids(by_status) == [created[0]]
    assert ids(by_ids) == [created[3]]
    assert ids(both) == created[1:]


@pytest.mark.parametrize("alias", ["status", "rollout_ids"])
async def test_query_rollouts_deprecated_aliases_warn(store: LightningStore, alias: str) -> None:
    rollout = await store.enqueue_rollout(input="x")
    value = ["queuing"] if alias == "status" else [rollout.rollout_id]
    with pytest.warns(DeprecationWarning):
        result = await store.query_rollouts(**{alias: value})  # type: ignore[arg-type]
    assert ids(result) == [rollout.rollout_id]


async def test_query_rollouts_items_carry_latest_attempt(store: LightningStore) -> None:
    queued = await store.enqueue_rollout(input="q")
    started = await store.start_rollout(input="s")
    retried = await store.start_attempt(started.rollout_id)
    first, second = await store.query_rollouts()
    assert first.rollout_id == queued.rollout_id
    assert isinstance(first, Rollout) and not isinstance(first, AttemptedRollout)
    assert isinstance(second, AttemptedRollout)
    assert second.attempt.attempt_id == retried.attempt.attempt_id


# -- rollouts: sorting ------------------------------------------------------------------------------------------


async def test_query_rollouts_sort_by_id(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    assert ids(await store.query_rollouts(sort_by="rollout_id")) == sorted(created)
    assert ids(await store.query_rollouts(sort_by="rollout_id", sort_order="desc")) == sorted(created, reverse=True)


async def test_query_rollouts_sort_by_start_time(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    assert ids(await store.query_rollouts(sort_by="start_time")) == created
    assert ids(await store.query_rollouts(sort_by="start_time", sort_order="desc")) == created[::-1]


async def test_query_rollouts_sort_by_end_time_puts_none_last_asc_first_desc(
    store: LightningStore, clock: FakeClock
) -> None:
    created = await _five_rollouts(store, clock)
    # Finish rollouts 3 then 1; 0, 2, 4 stay unfinished (end_time None).
    clock.advance(1)
    await store.update_rollout(created[3], status="succeeded")
    clock.advance(1)
    await store.update_rollout(created[1], status="failed")
    asc = await store.query_rollouts(sort_by="end_time")
    assert ids(asc) == [created[3], created[1], created[0], created[2], created[4]]
    desc = await store.query_rollouts(sort_by="end_time", sort_order="desc")
    assert ids(desc) == [created[0], created[2], created[4], created[1], created[3]]


async def test_query_rollouts_sort_is_stable(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    await store.update_rollout(created[1], status="failed")
    await store.update_rollout(created[3], status="failed")
    asc = await store.query_rollouts(sort_by="status")
    # "failed" < "queuing"; ties keep insertion order.
    assert ids(asc) == [created[1], created[3], created[0], created[2], created[4]]
    desc = await store.query_rollouts(sort_by="status", sort_order="desc")
    assert ids(desc) == [created[0], created[2], created[4], created[1], created[3]]


async def test_query_rollouts_sort_by_optional_literal_treats_none_as_empty(store: LightningStore) -> None:
    train = await store.enqueue_rollout(input=0, mode="train")
    none = await store.enqueue_rollout(input=1)
    val = await store.enqueue_rollout(input=2, mode="val")
    assert ids(await store.query_rollouts(sort_by="mode")) == [none.rollout_id, train.rollout_id, val.rollout_id]


async def test_query_rollouts_sort_then_paginate(store: LightningStore, clock: FakeClock) -> None:
    created = await _five_rollouts(store, clock)
    page = await store.query_rollouts(sort_by="start_time", sort_order="desc", limit=2, offset=1)
    assert ids(page) == [created[3], created[2]]
    assert page.total == 5


# -- spans ------------------------------------------------------------------------------------------------------


async def _span_fixture(store: LightningStore) -> str:
    rollout = await store.start_rollout(input="x")
    rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
    spans = [
        make_span(rid, aid, 1, span_id="root-1", trace_id="trace-alpha", name="agent.run"),
        make_span(rid, aid, 2, span_id="llm-2", trace_id="trace-alpha", parent_id="root-1", name="openai.chat"),
        make_span(rid, aid, 3, span_id="tool-3", trace_id="trace-alpha", parent_id="root-1", name="tool.search"),
        make_span(rid, aid, 4, span_id="root-4", trace_id="trace-beta", name="agent.reward"),
    ]
    await store.add_many_spans(spans)
    return rid


SPAN_FILTERS = [
    ({"trace_id": "trace-beta"}, ["root-4"]),
    ({"trace_id": "trace-b"}, []),
    ({"trace_id_contains": "alpha"}, ["root-1", "llm-2", "tool-3"]),
    ({"span_id": "llm-2"}, ["llm-2"]),
    ({"span_id": "llm"}, []),
    ({"span_id_contains": "root"}, ["root-1", "root-4"]),
    ({"parent_id": "root-1"}, ["llm-2", "tool-3"]),
    ({"parent_id_contains": "root"}, ["llm-2", "tool-3"]),
    ({"name": "agent.run"}, ["root-1"]),
    ({"name_contains": "agent."}, ["root-1", "root-4"]),
    ({"name_contains": "nomatch"}, []),
    ({"name_contains": "agent", "trace_id": "trace-beta"}, ["root-4"]),
    ({"span_id_contains": "root", "parent_id": "root-1"}, []),
]


@pytest.mark.parametrize(("filters", "expected"), SPAN_FILTERS, ids=[str(f) for f, _ in SPAN_FILTERS])
async def test_query_spans_filters(store: LightningStore, filters: dict[str, str], expected: list[str]) -> None:
    rid = await _span_fixture(store)
    result = await store.query_spans(rid, **filters)  # type: ignore[arg-type]
    assert [s.span_id for s in result] == expected
    assert result.total == len(expected)


async def test_query_spans_or_logic_unions(store: LightningStore) -> None:
    rid = await _span_fixture(store)
    result = await store.query_spans(rid, name="tool.search", trace_id="trace-beta", filter_logic="or")
    assert [s.span_id for s in result] == ["tool-3", "root-4"]
    result = await store.query_spans(rid, span_id_contains="llm", parent_id="nobody", filter_logic="or")
    assert [s.span_id for s in result] == ["llm-2"]


@pytest.mark.parametrize("logic", ["and", "or"])
async def test_query_spans_without_optional_filters_returns_everything(store: LightningStore, logic: str) -> None:
    # AGL deviation: an empty "or" pool matches everything (upstream 0.3.0 in-memory returned nothing).
    rid = await _span_fixture(store)
    result = await store.query_spans(rid, filter_logic=logic)  # type: ignore[arg-type]
    assert [s.span_id for s in result] == ["root-1", "llm-2", "tool-3", "root-4"]


async def test_query_spans_or_logic_keeps_rollout_constraint(store: LightningStore) -> None:
    rid = await _span_fixture(store)
    other = await store.start_rollout(input="other")
    await store.add_span(make_span(other.rollout_id, other.attempt.attempt_id, span_id="other", name="agent.run"))
    result = await store.query_spans(rid, name="agent.run", trace_id="trace-beta", filter_logic="or")
    assert [s.span_id for s in result] == ["root-1", "root-4"]
    everything = await store.query_spans(other.rollout_id, filter_logic="or")
    assert [s.span_id for s in everything] == ["other"]


async def test_query_spans_attempt_selection(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid, a1 = rollout.rollout_id, rollout.attempt.attempt_id
    a2 = (await store.start_attempt(rid)).attempt.attempt_id
    await store.add_span(make_span(rid, a1, 1, span_id="s1"))
    await store.add_span(make_span(rid, a2, 2, span_id="s2"))
    await store.add_span(make_span(rid, a1, 3, span_id="s3"))
    assert [s.span_id for s in await store.query_spans(rid)] == ["s1", "s2", "s3"]
    assert [s.span_id for s in await store.query_spans(rid, None)] == ["s1", "s2", "s3"]
    assert [s.span_id for s in await store.query_spans(rid, a1)] == ["s1", "s3"]
    assert [s.span_id for s in await store.query_spans(rid, a2)] == ["s2"]
    assert [s.span_id for s in await store.query_spans(rid, "latest")] == ["s2"]
    assert [s.span_id for s in await store.query_spans(rid, "at-unknown")] == []


async def test_query_spans_latest_follows_attempt_records_not_span_order(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid, a1 = rollout.rollout_id, rollout.attempt.attempt_id
    await store.start_attempt(rid)  # attempt 2 has no spans
    await store.add_span(make_span(rid, a1, 5, span_id="old"))
    assert list(await store.query_spans(rid, "latest")) == []


async def test_query_spans_latest_without_attempts_is_empty(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x")
    assert list(await store.query_spans(rollout.rollout_id, "latest")) == []


async def test_query_spans_unknown_rollout_is_empty(store: LightningStore) -> None:
    result = await store.query_spans("ro-unknown")
    assert len(result) == 0 and result.total == 0


async def test_query_spans_only_that_rollout(store: LightningStore) -> None:
    rid = await _span_fixture(store)
    other = await store.start_rollout(input="y")
    await store.add_span(make_span(other.rollout_id, other.attempt.attempt_id, span_id="elsewhere"))
    assert "elsewhere" not in [s.span_id for s in await store.query_spans(rid)]
    assert [s.span_id for s in await store.query_spans(other.rollout_id)] == ["elsewhere"]


async def test_query_spans_default_order_is_sequence_id(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
    for seq, sid in [(3, "c"), (1, "a"), (2, "b")]:
        await store.add_span(make_span(rid, aid, seq, span_id=sid))
    assert [s.span_id for s in await store.query_spans(rid)] == ["a", "b", "c"]
    assert [s.span_id for s in await store.query_spans(rid, sort_order="desc")] == ["c", "b", "a"]


async def test_query_spans_sort_by_name(store: LightningStore) -> None:
    rid = await _span_fixture(store)
    result = await store.query_spans(rid, sort_by="name", sort_order="desc")
    assert [s.name for s in result] == ["tool.search", "openai.chat", "agent.run", "agent.reward"]


async def test_query_spans_sort_by_start_time_none_last(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
    await store.add_span(make_span(rid, aid, 1, span_id="none", start_time=None))
    await store.add_span(make_span(rid, aid, 2, span_id="late", start_time=20.0))
    await store.add_span(make_span(rid, aid, 3, span_id="early", start_time=10.0))
    assert [s.span_id for s in await store.query_spans(rid, sort_by="start_time")] == ["early", "late", "none"]
    desc = await store.query_spans(rid, sort_by="start_time", sort_order="desc")
    assert [s.span_id for s in desc] == ["none", "late", "early"]


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [(-1, 0, 4), (2, 0, 2), (2, 3, 1), (0, 0, 0), (5, 4, 0), (-1, 10, 0)],
)
async def test_query_spans_pagination(store: LightningStore, limit: int, offset: int, expected: int) -> None:
    rid = await _span_fixture(store)
    result = await store.query_spans(rid, limit=limit, offset=offset)
    all_ids = ["root-1", "llm-2", "tool-3", "root-4"]
    assert [s.span_id for s in result] == (all_ids[offset:] if limit == -1 else all_ids[offset : offset + limit])
    assert len(result) == expected
    assert result.total == 4


# -- resources --------------------------------------------------------------------------------------------------


async def _three_resources(store: LightningStore, clock: FakeClock) -> list[str]:
    out = []
    for tag in "abc":
        clock.advance(1)
        out.append((await store.add_resources(sample_resources(tag))).resources_id)
    return out


async def test_query_resources_all_in_insertion_order(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    result = await store.query_resources()
    assert [r.resources_id for r in result] == created
    assert result.total == 3


async def test_query_resources_by_exact_id(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    assert [r.resources_id for r in await store.query_resources(resources_id=created[1])] == [created[1]]
    assert list(await store.query_resources(resources_id="rs-unknown")) == []


async def test_query_resources_by_id_contains(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    fragment = created[2][2:-1]
    result = [r.resources_id for r in await store.query_resources(resources_id_contains=fragment)]
    assert created[2] in result
    assert result == [rid for rid in created if fragment in rid]
    assert [r.resources_id for r in await store.query_resources(resources_id_contains="rs-")] == created


async def test_query_resources_exact_and_contains_are_anded(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    assert list(await store.query_resources(resources_id=created[0], resources_id_contains=created[1])) == []
    both = await store.query_resources(resources_id=created[0], resources_id_contains=created[0][:4])
    assert [r.resources_id for r in both] == [created[0]]


async def test_query_resources_sort_and_paginate(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    clock.advance(1)
    await store.update_resources(created[0], sample_resources("z"))
    by_version = await store.query_resources(sort_by="version", sort_order="desc")
    assert by_version[0].resources_id == created[0]
    by_update = await store.query_resources(sort_by="update_time", sort_order="desc", limit=2)
    assert [r.resources_id for r in by_update] == [created[0], created[2]]
    assert by_update.total == 3
    page = await store.query_resources(sort_by="create_time", limit=1, offset=1)
    assert [r.resources_id for r in page] == [created[1]]


async def test_query_resources_pagination(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    page = await store.query_resources(limit=2, offset=1)
    assert [r.resources_id for r in page] == created[1:]
    assert page.total == 3 and page.limit == 2 and page.offset == 1
    assert list(await store.query_resources(limit=0)) == []
    assert list(await store.query_resources(offset=3)) == []


async def test_query_resources_update_keeps_insertion_position(store: LightningStore, clock: FakeClock) -> None:
    created = await _three_resources(store, clock)
    clock.advance(1)
    await store.update_resources(created[0], sample_resources("z"))
    assert [r.resources_id for r in await store.query_resources()] == created


# -- workers ----------------------------------------------------------------------------------------------------


async def _workers(store: LightningStore) -> None:
    await store.update_worker("Worker-0")  # unknown
    await store.start_rollout(input="x", worker_id="Worker-1")  # busy
    await store.dequeue_rollout(worker_id="Worker-2")  # idle
    await store.update_worker("Helper-3")  # unknown


async def test_query_workers_all(store: LightningStore) -> None:
    await _workers(store)
    result = await store.query_workers()
    assert sorted(w.worker_id for w in result) == ["Helper-3", "Worker-0", "Worker-1", "Worker-2"]
    assert result.total == 4


async def test_query_workers_status_in(store: LightningStore) -> None:
    await _workers(store)
    assert sorted(w.worker_id for w in await store.query_workers(status_in=["unknown"])) == ["Helper-3", "Worker-0"]
    assert [w.worker_id for w in await store.query_workers(status_in=["busy"])] == ["Worker-1"]
    assert [w.worker_id for w in await store.query_workers(status_in=["idle"])] == ["Worker-2"]
    assert list(await store.query_workers(status_in=[])) == []


async def test_query_workers_id_contains_and_logic(store: LightningStore) -> None:
    await _workers(store)
    assert sorted(w.worker_id for w in await store.query_workers(worker_id_contains="Worker")) == [
        "Worker-0",
        "Worker-1",
        "Worker-2",
    ]
    anded = await store.query_workers(status_in=["unknown"], worker_id_contains="Worker")
    assert [w.worker_id for w in anded] == ["Worker-0"]
    ored = await store.query_workers(status_in=["busy"], worker_id_contains="Helper", filter_logic="or")
    assert sorted(w.worker_id for w in ored) == ["Helper-3", "Worker-1"]


async def test_query_workers_sort_and_paginate(store: LightningStore) -> None:
    await _workers(store)
    asc = await store.query_workers(sort_by="worker_id")
    assert [w.worker_id for w in asc] == ["Helper-3", "Worker-0", "Worker-1", "Worker-2"]
    page = await store.query_workers(sort_by="worker_id", sort_order="desc", limit=2, offset=1)
    assert [w.worker_id for w in page] == ["Worker-1", "Worker-0"]
    assert page.total == 4


async def test_query_workers_sort_by_time_puts_none_last(store: LightningStore, clock: FakeClock) -> None:
    await _workers(store)
    result = await store.query_workers(sort_by="last_busy_time")
    assert result[0].worker_id == "Worker-1"
    assert {w.worker_id for w in result[1:]} == {"Helper-3", "Worker-0", "Worker-2"}


@pytest.mark.parametrize("sort_by", ["start_time", "end_time", "rollout_id", "mode"])
@pytest.mark.parametrize("sort_order", ["asc", "desc"])
async def test_query_rollouts_page_of_one_is_the_first_of_the_sorted_list(
    store: LightningStore, clock: FakeClock, sort_by: str, sort_order: str
) -> None:
    """A page of one (the memory store answers it without sorting) is the first of the full sorted list, ties
    included (equal start times, None end times and modes), with the true total."""
    for i in range(6):
        if i % 2:
            clock.advance(1)
        await store.enqueue_rollout(input=i, mode="train" if i % 3 else None)
    claimed = await store.dequeue_rollout()
    assert claimed is not None
    await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    for status_in in (None, ["queuing"], ["queuing", "succeeded"]):
        full = await store.query_rollouts(status_in=status_in, sort_by=sort_by, sort_order=sort_order)  # type: ignore[arg-type]
        one = await store.query_rollouts(status_in=status_in, sort_by=sort_by, sort_order=sort_order, limit=1)  # type: ignore[arg-type]
        assert ids(one) == ids(full)[:1]
        assert one.total == full.total
        count = await store.query_rollouts(status_in=status_in, limit=0)  # type: ignore[arg-type]
        assert count.total == full.total and len(count) == 0


# -- rollouts: mode and start-time window -------------------------------------------------------------------------


async def _modes_and_times(store: LightningStore, clock: FakeClock) -> list[Rollout]:
    """Seven rollouts one second apart (two pairs share a start time), modes cycling train/val/None/test."""
    out: list[Rollout] = []
    modes = ["train", "val", None, "test"]
    for i in range(5):
        clock.advance(1)
        if i in (1, 3):  # a batch: two rollouts with the same start time
            batch = await store.enqueue_many_rollouts(
                [EnqueueRolloutRequest(input=i, mode=modes[i % 4]), EnqueueRolloutRequest(input=-i, mode="train")]
            )
            out.extend(batch)
        else:
            out.append(await store.enqueue_rollout(input=i, mode=modes[i % 4]))  # type: ignore[arg-type]
    return out


async def test_query_rollouts_mode_in(store: LightningStore, clock: FakeClock) -> None:
    made = await _modes_and_times(store, clock)
    for modes in (["train"], ["val", "test"], ["train", "val", "test"]):
        result = await store.query_rollouts(mode_in=modes)  # type: ignore[arg-type]
        assert ids(result) == [r.rollout_id for r in made if r.mode in modes]
        assert result.total == len(result) > 0
    assert ids(await store.query_rollouts(mode_in=[])) == []
    # A rollout without a mode matches no mode filter, but is there without one.
    none_mode = [r.rollout_id for r in made if r.mode is None]
    assert none_mode and not set(none_mode) & set(ids(await store.query_rollouts(mode_in=["train", "val", "test"])))


async def test_query_rollouts_start_time_window_is_half_open(store: LightningStore, clock: FakeClock) -> None:
    made = await _modes_and_times(store, clock)
    starts = sorted({r.start_time for r in made})
    low, high = starts[1], starts[3]
    window = await store.query_rollouts(start_time_from=low, start_time_to=high)
    assert ids(window) == [r.rollout_id for r in made if low <= r.start_time < high]
    assert window.total == 3  # the batch at `low` (two) and the one after; `high` itself is excluded
    assert ids(await store.query_rollouts(start_time_from=high)) == [r.rollout_id for r in made if r.start_time >= high]
    assert ids(await store.query_rollouts(start_time_to=low)) == [r.rollout_id for r in made if r.start_time < low]
    assert ids(await store.query_rollouts(start_time_from=high, start_time_to=low)) == []
    assert ids(await store.query_rollouts(start_time_from=int(low), start_time_to=int(low) + 1)) == [
        r.rollout_id for r in made if r.start_time == low
    ]


async def test_query_rollouts_new_filters_combine_by_logic(store: LightningStore, clock: FakeClock) -> None:
    made = await _modes_and_times(store, clock)
    await store.update_rollout(made[0].rollout_id, status="succeeded")
    await store.update_rollout(made[5].rollout_id, status="succeeded")
    low, high = made[2].start_time, made[4].start_time + 0.5
    anded = await store.query_rollouts(status_in=["queuing"], mode_in=["train"], start_time_from=low)
    assert ids(anded) == [
        r.rollout_id for i, r in enumerate(made) if i not in (0, 5) and r.mode == "train" and r.start_time >= low
    ]
    # Under "or" the window is one condition (not "after low" or "before high", which would be everything).
    ored = await store.query_rollouts(
        status_in=["succeeded"], mode_in=["val"], start_time_from=low, start_time_to=high, filter_logic="or"
    )
    expected = [
        r.rollout_id for i, r in enumerate(made) if i in (0, 5) or r.mode == "val" or low <= r.start_time < high
    ]
    assert ids(ored) == expected and len(expected) < len(made)
    assert ored.total == len(expected)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode_in": ["training"]}, "mode_in"),
        ({"mode_in": ["train", None]}, "mode_in"),
        ({"start_time_from": float("nan")}, "start_time_from"),
        ({"start_time_to": float("inf")}, "start_time_to"),
        ({"start_time_from": float("-inf"), "start_time_to": 5.0}, "start_time_from"),
    ],
)
async def test_query_rollouts_bad_mode_or_time_is_refused_naming_the_field(
    store: LightningStore, kwargs: dict[str, object], field: str
) -> None:
    await store.enqueue_rollout(input="x", mode="train")
    with pytest.raises(ValueError, match=field):
        await store.query_rollouts(**kwargs)  # type: ignore[arg-type]


_SORTS = [None, "start_time", "end_time", "status", "rollout_id", "mode", "resources_id"]


def _reference(rollouts: list[Rollout], sort_by: str | None, order: str, keep: object) -> list[str]:
    """The expected order, computed here independently: filter, then a stable sort (None/null times last asc)."""
    kept = [r for r in rollouts if keep(r)]  # type: ignore[operator]
    if sort_by is None:
        return [r.rollout_id for r in kept]

    def key(r: Rollout) -> tuple[int, object]:
        value = getattr(r, sort_by)
        if value is None:
            return (1, 0.0) if sort_by.endswith("_time") else (0, "")
        return (0, value)

    return [r.rollout_id for r in sorted(kept, key=key, reverse=order == "desc")]


async def test_query_rollouts_every_filter_sort_and_page_agrees_with_a_reference(
    store: LightningStore, clock: FakeClock
) -> None:
    import itertools
    import random

    rng = random.Random(7)
    statuses = ["queuing", "running", "succeeded", "failed", "cancelled"]
    for _ in range(8):
        clock.advance(rng.choice([0.5, 1.0, 2.0]))
        requests = [
            EnqueueRolloutRequest(input=k, mode=rng.choice(["train", "val", "test", None]))
            for k in range(rng.randint(1, 4))
        ]
        for rollout in await store.enqueue_many_rollouts(requests):
            status = rng.choice(statuses)
            if status != "queuing":
                clock.advance(rng.choice([0.0, 0.25]))
                await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    everything = list(await store.query_rollouts())
    starts = sorted({r.start_time for r in everything})
    cases = [
        ({}, lambda r: True),
        ({"status_in": ["succeeded", "failed"]}, lambda r: r.status in ("succeeded", "failed")),
        ({"mode_in": ["train"]}, lambda r: r.mode == "train"),
        ({"start_time_from": starts[2], "start_time_to": starts[5]}, lambda r: starts[2] <= r.start_time < starts[5]),
        (
            {"status_in": ["queuing"], "mode_in": ["val", "test"], "start_time_from": starts[1]},
            lambda r: r.status == "queuing" and r.mode in ("val", "test") and r.start_time >= starts[1],
        ),
        (
            {"status_in": ["failed"], "mode_in": ["test"], "filter_logic": "or"},
            lambda r: r.status == "failed" or r.mode == "test",
        ),
        (
            {"rollout_id_contains": everything[3].rollout_id[4:7]},
            lambda r: everything[3].rollout_id[4:7] in r.rollout_id,
        ),
    ]
    for (filters, keep), sort_by, order in itertools.product(cases, _SORTS, ["asc", "desc"]):
        expected = _reference(everything, sort_by, order, keep)
        for limit, offset in [(-1, 0), (3, 0), (3, 4), (0, 0), (5, len(expected) - 2)]:
            page = await store.query_rollouts(
                **filters,
                sort_by=sort_by,
                sort_order=order,
                limit=limit,
                offset=max(offset, 0),  # type: ignore[arg-type]
            )
            window = expected[max(offset, 0) :] if limit == -1 else expected[max(offset, 0) : max(offset, 0) + limit]
            assert ids(page) == window, (filters, sort_by, order, limit, offset)
            assert page.total == len(expected), (filters, sort_by, order)
    assert any(r.end_time is None for r in everything) and any(r.end_time is not None for r in everything)


async def test_query_rollouts_window_and_start_sort_when_the_clock_went_back(
    store: LightningStore, clock: FakeClock
) -> None:
    made = []
    for step in (5, 1, -3, 2, 0, -4, 6):  # start times out of insertion order, with a tie
        clock.advance(step)
        made.append(await store.enqueue_rollout(input=step))
    low, high = sorted(r.start_time for r in made)[1], made[1].start_time
    window = await store.query_rollouts(start_time_from=low, start_time_to=high)
    assert ids(window) == [r.rollout_id for r in made if low <= r.start_time < high]
    assert high not in [r.start_time for r in window] and low in [r.start_time for r in window]
    for order in ("asc", "desc"):
        expected = [r.rollout_id for r in sorted(made, key=lambda r: r.start_time, reverse=order == "desc")]
        assert ids(await store.query_rollouts(sort_by="start_time", sort_order=order)) == expected  # type: ignore[arg-type]
        page = await store.query_rollouts(sort_by="start_time", sort_order=order, limit=2, offset=3)  # type: ignore[arg-type]
        assert ids(page) == expected[3:5] and page.total == len(made)
