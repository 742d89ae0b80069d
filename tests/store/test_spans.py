"""Spans: storing, duplicates, batches, heartbeats, sequence ids and OpenTelemetry conversion (spec §2.3, §6)."""

from __future__ import annotations

import asyncio

import pytest

from agl.store.base import LightningStore
from agl.types import Span
from tests.store.clock import FakeClock
from tests.store.helpers import make_otel_span, make_span


async def _started(store: LightningStore) -> tuple[str, str]:
    rollout = await store.start_rollout(input="x")
    return rollout.rollout_id, rollout.attempt.attempt_id


# -- add_span ---------------------------------------------------------------------------------------------------


async def test_add_span_stores_and_returns_it(store: LightningStore) -> None:
    rid, aid = await _started(store)
    span = make_span(rid, aid, 1, span_id="s-1", name="llm", attributes={"k": "v"}, start_time=1.5)
    stored = await store.add_span(span)
    assert isinstance(stored, Span)
    assert stored.model_dump() == span.model_dump()
    (queried,) = await store.query_spans(rid)
    assert queried.model_dump() == span.model_dump()


async def test_add_span_json_stores_the_span_its_payload_validates_to(store: LightningStore) -> None:
    """The server's path: a span validated from a (non-canonical) JSON body is stored with that body."""
    rid, aid = await _started(store)
    payload = (
        '{ "rollout_id": "' + rid + '", "attempt_id": "' + aid + '", "sequence_id": "3", "trace_id": "t",'
        ' "span_id": "s-json", "name": "llm",  "attributes": {"k": 1}, "custom_extra": [1, 2] }'
    ).encode()
    span = Span.model_validate_json(payload)
    stored = await store.add_span_json(span, payload)
    assert stored is not None and stored.model_dump() == span.model_dump()
    (queried,) = await store.query_spans(rid)
    assert queried.model_dump() == span.model_dump()
    assert queried.sequence_id == 3 and queried.model_extra == {"custom_extra": [1, 2]}
    assert await store.add_span_json(span, payload) is None  # a duplicate, as with add_span


async def test_add_span_keeps_extra_fields(store: LightningStore) -> None:
    rid, aid = await _started(store)
    await store.add_span(make_span(rid, aid, custom_field={"nested": [1, 2]}))
    (queried,) = await store.query_spans(rid)
    assert queried.model_dump()["custom_field"] == {"nested": [1, 2]}


async def test_add_span_duplicate_returns_none_and_keeps_first(store: LightningStore) -> None:
    rid, aid = await _started(store)
    assert await store.add_span(make_span(rid, aid, 1, span_id="dup", name="first")) is not None
    assert await store.add_span(make_span(rid, aid, 2, span_id="dup", name="second")) is None
    spans = await store.query_spans(rid)
    assert [(s.span_id, s.name) for s in spans] == [("dup", "first")]


async def test_same_span_id_in_other_attempt_is_not_a_duplicate(store: LightningStore) -> None:
    rid, aid = await _started(store)
    retried = await store.start_attempt(rid)
    assert await store.add_span(make_span(rid, aid, 1, span_id="same")) is not None
    assert await store.add_span(make_span(rid, retried.attempt.attempt_id, 2, span_id="same")) is not None
    assert len(await store.query_spans(rid)) == 2


async def test_same_span_id_in_other_rollout_is_not_a_duplicate(store: LightningStore) -> None:
    rid1, aid1 = await _started(store)
    rid2, aid2 = await _started(store)
    assert await store.add_span(make_span(rid1, aid1, span_id="same")) is not None
    assert await store.add_span(make_span(rid2, aid2, span_id="same")) is not None
    assert len(await store.query_spans(rid1)) == 1
    assert len(await store.query_spans(rid2)) == 1


async def test_sequence_id_uniqueness_is_not_enforced(store: LightningStore) -> None:
    rid, aid = await _started(store)
    assert await store.add_span(make_span(rid, aid, 3, span_id="a")) is not None
    assert await store.add_span(make_span(rid, aid, 3, span_id="b")) is not None
    assert sorted(s.span_id for s in await store.query_spans(rid)) == ["a", "b"]


async def test_add_span_is_a_heartbeat(store: LightningStore, clock: FakeClock) -> None:
    rid, aid = await _started(store)
    now = clock.advance(7)
    await store.add_span(make_span(rid, aid))
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    assert attempt.last_heartbeat_time == now
    assert attempt.status == "running"
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None and rollout.status == "running"


async def test_duplicate_span_does_not_refresh_heartbeat(store: LightningStore, clock: FakeClock) -> None:
    rid, aid = await _started(store)
    first = clock.advance(1)
    await store.add_span(make_span(rid, aid, span_id="dup"))
    clock.advance(1)
    assert await store.add_span(make_span(rid, aid, span_id="dup")) is None
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None and attempt.last_heartbeat_time == first


async def test_spans_on_old_attempt_do_not_move_rollout(store: LightningStore, clock: FakeClock) -> None:
    rid, old_aid = await _started(store)
    retried = await store.start_attempt(rid)
    now = clock.advance(2)
    await store.add_span(make_span(rid, old_aid))
    await store.add_many_spans([make_span(rid, old_aid), make_span(rid, old_aid)])
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None and rollout.status == "preparing"
    old, new = await store.query_attempts(rid)
    assert old.status == "preparing" and old.last_heartbeat_time == now  # replaced: fenced, only stamped
    assert new.attempt_id == retried.attempt.attempt_id and new.status == "preparing"
    assert new.last_heartbeat_time is None


async def test_unknown_attempt_still_raises_sequence_counter(store: LightningStore) -> None:
    rid, aid = await _started(store)
    with pytest.raises(ValueError):
        await store.add_span(make_span(rid, "at-missing", 7))
    assert await store.get_next_span_sequence_id(rid, aid) == 8
    assert len(await store.query_spans(rid)) == 0


# -- add_many_spans ---------------------------------------------------------------------------------------------


async def test_add_many_spans_groups_in_first_appearance_order(store: LightningStore) -> None:
    rid1, aid1 = await _started(store)
    rid2, aid2 = await _started(store)
    batch = [
        make_span(rid1, aid1, 1, span_id="a"),
        make_span(rid2, aid2, 1, span_id="b"),
        make_span(rid1, aid1, 2, span_id="c"),
        make_span(rid2, aid2, 2, span_id="d"),
    ]
    stored = await store.add_many_spans(batch)
    assert [s.span_id for s in stored] == ["a", "c", "b", "d"]
    assert [s.span_id for s in await store.query_spans(rid1)] == ["a", "c"]
    assert [s.span_id for s in await store.query_spans(rid2)] == ["b", "d"]


async def test_add_many_spans_empty(store: LightningStore) -> None:
    assert list(await store.add_many_spans([])) == []


async def test_add_many_spans_skips_existing_duplicates(store: LightningStore) -> None:
    rid, aid = await _started(store)
    await store.add_span(make_span(rid, aid, 1, span_id="old", name="original"))
    batch = [
        make_span(rid, aid, 2, span_id="new-1"),
        make_span(rid, aid, 3, span_id="old", name="replacement"),
        make_span(rid, aid, 4, span_id="new-2"),
    ]
    stored = await store.add_many_spans(batch)
    assert [s.span_id for s in stored] == ["new-1", "new-2"]
    spans = await store.query_spans(rid)
    assert (spans[0].span_id, spans[0].name) == ("old", "original")
    assert sorted(s.span_id for s in spans) == ["new-1", "new-2", "old"]


async def test_add_many_spans_duplicate_within_batch_stored_once(store: LightningStore) -> None:
    rid, aid = await _started(store)
    batch = [make_span(rid, aid, 1, span_id="x", name="first"), make_span(rid, aid, 2, span_id="x", name="second")]
    stored = await store.add_many_spans(batch)
    assert [(s.span_id, s.name) for s in stored] == [("x", "first")]
    assert [(s.span_id, s.name) for s in await store.query_spans(rid)] == [("x", "first")]


async def test_add_many_spans_all_duplicates_returns_empty(store: LightningStore) -> None:
    rid, aid = await _started(store)
    await store.add_many_spans([make_span(rid, aid, span_id="p"), make_span(rid, aid, span_id="q")])
    assert list(await store.add_many_spans([make_span(rid, aid, span_id="p"), make_span(rid, aid, span_id="q")])) == []
    assert len(await store.query_spans(rid)) == 2


async def test_add_many_spans_is_all_or_nothing(store: LightningStore) -> None:
    # AGL deviation (docs/compatibility.md): a bad group rejects the whole batch; upstream kept earlier groups.
    rid, aid = await _started(store)
    batch = [make_span(rid, aid, 1, span_id="dropped"), make_span("ro-missing", "at-missing", 1, span_id="bad")]
    with pytest.raises(ValueError, match="ro-missing"):
        await store.add_many_spans(batch)
    assert [s.span_id for s in await store.query_spans(rid)] == []
    stored = await store.add_many_spans([make_span(rid, aid, 1, span_id="dropped")])
    assert [s.span_id for s in stored] == ["dropped"]


async def test_add_many_spans_heartbeat_per_group(store: LightningStore, clock: FakeClock) -> None:
    rid1, aid1 = await _started(store)
    rid2, aid2 = await _started(store)
    now = clock.advance(3)
    await store.add_many_spans([make_span(rid1, aid1), make_span(rid2, aid2), make_span(rid1, aid1)])
    for rid in (rid1, rid2):
        attempt = await store.get_latest_attempt(rid)
        assert attempt is not None and attempt.status == "running" and attempt.last_heartbeat_time == now
        rollout = await store.get_rollout_by_id(rid)
        assert rollout is not None and rollout.status == "running"


async def test_add_many_spans_raises_counter_to_group_max(store: LightningStore) -> None:
    rid, aid = await _started(store)
    await store.add_many_spans([make_span(rid, aid, 9), make_span(rid, aid, 5)])
    assert await store.get_next_span_sequence_id(rid, aid) == 10


# -- sequence ids -----------------------------------------------------------------------------------------------


async def test_sequence_ids_start_at_one_and_increase(store: LightningStore) -> None:
    rid, aid = await _started(store)
    assert [await store.get_next_span_sequence_id(rid, aid) for _ in range(4)] == [1, 2, 3, 4]


async def test_sequence_counter_is_per_rollout_not_per_attempt(store: LightningStore) -> None:
    rid, aid = await _started(store)
    retried = await store.start_attempt(rid)
    other_rid, other_aid = await _started(store)
    assert await store.get_next_span_sequence_id(rid, aid) == 1
    assert await store.get_next_span_sequence_id(rid, retried.attempt.attempt_id) == 2
    assert await store.get_next_span_sequence_id(other_rid, other_aid) == 1
    assert await store.get_next_span_sequence_id(rid, aid) == 3


async def test_many_sequence_ids_interleaved_example(store: LightningStore) -> None:
    r1, a1 = await _started(store)
    r2, a2 = await _started(store)
    for _ in range(3):
        await store.get_next_span_sequence_id(r1, a1)
    await store.get_next_span_sequence_id(r2, a2)
    assert list(await store.get_many_span_sequence_ids([(r1, a1), (r2, a2), (r1, a1)])) == [4, 2, 5]
    assert await store.get_next_span_sequence_id(r1, a1) == 6
    assert await store.get_next_span_sequence_id(r2, a2) == 3


async def test_many_sequence_ids_fresh_rollouts(store: LightningStore) -> None:
    r1, a1 = await _started(store)
    r2, a2 = await _started(store)
    result = await store.get_many_span_sequence_ids([(r1, a1), (r1, a1), (r2, a2), (r1, a1), (r2, a2)])
    assert list(result) == [1, 2, 1, 3, 2]


async def test_many_sequence_ids_empty(store: LightningStore) -> None:
    assert list(await store.get_many_span_sequence_ids([])) == []


async def test_explicit_sequence_id_raises_counter_but_never_lowers_it(store: LightningStore) -> None:
    rid, aid = await _started(store)
    await store.add_span(make_span(rid, aid, 10))
    assert await store.get_next_span_sequence_id(rid, aid) == 11
    await store.add_span(make_span(rid, aid, 5))
    assert await store.get_next_span_sequence_id(rid, aid) == 12


async def test_sequence_ids_are_never_reissued_after_spans(store: LightningStore) -> None:
    rid, aid = await _started(store)
    first = await store.get_next_span_sequence_id(rid, aid)
    await store.add_span(make_span(rid, aid, first))
    second = await store.get_next_span_sequence_id(rid, aid)
    assert second == first + 1


async def test_concurrent_sequence_ids_are_exactly_one_to_twenty(store: LightningStore) -> None:
    rid, aid = await _started(store)
    results = await asyncio.wait_for(
        asyncio.gather(*(store.get_next_span_sequence_id(rid, aid) for _ in range(20))), timeout=10
    )
    assert sorted(results) == list(range(1, 21))


async def test_concurrent_otel_spans_get_distinct_sequence_ids(store: LightningStore) -> None:
    rid, aid = await _started(store)
    spans = [make_otel_span(f"op-{i}") for i in range(20)]
    stored = await asyncio.wait_for(
        asyncio.gather(*(store.add_otel_span(rid, aid, span) for span in spans)), timeout=10
    )
    assert all(s is not None for s in stored)
    assert sorted(s.sequence_id for s in stored if s is not None) == list(range(1, 21))
    assert len(await store.query_spans(rid)) == 20


# -- add_otel_span ----------------------------------------------------------------------------------------------


async def test_add_otel_span_converts_sdk_span(store: LightningStore) -> None:
    rid, aid = await _started(store)
    parent = make_otel_span("agent", attributes={"agent.name": "solver"}, end=False)
    child = make_otel_span("llm.call", attributes={"tokens": 12, "tags": ("a", "b")}, parent=parent)
    parent.end()
    stored_child = await store.add_otel_span(rid, aid, child)
    stored_parent = await store.add_otel_span(rid, aid, parent)
    assert stored_child is not None and stored_parent is not None
    assert stored_child.rollout_id == rid and stored_child.attempt_id == aid
    assert stored_child.sequence_id == 1 and stored_parent.sequence_id == 2
    ctx = child.get_span_context()
    assert stored_child.trace_id == format(ctx.trace_id, "032x")
    assert stored_child.span_id == format(ctx.span_id, "016x")
    assert stored_child.parent_id == format(parent.get_span_context().span_id, "016x")
    assert stored_parent.parent_id is None
    assert stored_child.trace_id == stored_parent.trace_id
    assert stored_child.name == "llm.call"
    assert stored_child.attributes["tokens"] == 12
    assert list(stored_child.attributes["tags"]) == ["a", "b"]
    assert stored_child.start_time == pytest.approx(child.start_time / 1e9)
    assert stored_child.end_time == pytest.approx(child.end_time / 1e9)
    assert stored_child.resource.attributes["service.name"] == "agl-store-tests"
    queried = await store.query_spans(rid)
    assert [s.name for s in queried] == ["llm.call", "agent"]


async def test_add_otel_span_explicit_sequence_id(store: LightningStore) -> None:
    rid, aid = await _started(store)
    stored = await store.add_otel_span(rid, aid, make_otel_span(), sequence_id=7)
    assert stored is not None and stored.sequence_id == 7
    assert await store.get_next_span_sequence_id(rid, aid) == 8


async def test_add_otel_span_duplicate_returns_none(store: LightningStore) -> None:
    rid, aid = await _started(store)
    span = make_otel_span()
    assert await store.add_otel_span(rid, aid, span) is not None
    assert await store.add_otel_span(rid, aid, span) is None
    assert len(await store.query_spans(rid)) == 1


async def test_add_otel_span_is_a_heartbeat(store: LightningStore, clock: FakeClock) -> None:
    rid, aid = await _started(store)
    now = clock.advance(4)
    await store.add_otel_span(rid, aid, make_otel_span())
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None and attempt.status == "running" and attempt.last_heartbeat_time == now


async def test_add_otel_span_unknown_rollout_raises(store: LightningStore) -> None:
    with pytest.raises(ValueError, match="ro-ghost"):
        await store.add_otel_span("ro-ghost", "at-ghost", make_otel_span(), sequence_id=1)
