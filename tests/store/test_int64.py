"""Integers a store keeps in integer columns stay within signed 64-bit: larger ones are refused with an error naming
the field before they reach a database, and the largest one works (every backend, in process and over HTTP)."""

from __future__ import annotations

import pytest

from agl.store.base import LightningStore
from agl.store.client import LightningStoreClient
from tests.store.helpers import make_span

INT64_MAX = 2**63 - 1


async def _started(store: LightningStore) -> tuple[str, str]:
    rollout = await store.start_rollout(input="x")
    return rollout.rollout_id, rollout.attempt.attempt_id


@pytest.mark.parametrize("sequence_id", [INT64_MAX + 1, 2**64, -(2**63) - 1])
async def test_a_span_sequence_id_beyond_64_bits_is_refused_naming_the_field(
    store: LightningStore, sequence_id: int
) -> None:
    rid, aid = await _started(store)
    with pytest.raises(ValueError, match="sequence_id"):
        await store.add_span(make_span(rid, aid, sequence_id))
    with pytest.raises(ValueError, match="sequence_id"):
        await store.add_many_spans([make_span(rid, aid, 1), make_span(rid, aid, sequence_id)])
    # Nothing was stored and the rollout goes on as before.
    assert list(await store.query_spans(rid)) == []
    assert await store.get_next_span_sequence_id(rid, aid) == 1
    await store.add_span(make_span(rid, aid, 2))
    done = await store.update_attempt(rid, aid, status="succeeded")
    assert done.status == "succeeded"


async def test_the_largest_sequence_id_is_stored_and_the_counter_then_refuses_cleanly(store: LightningStore) -> None:
    rid, aid = await _started(store)
    if isinstance(store, LightningStoreClient):
        # Over HTTP a sequence id is a JSON-safe integer (at most 2**53 - 1): larger ones are a 400 naming it.
        with pytest.raises(ValueError, match="sequence_id"):
            await store.add_span(make_span(rid, aid, INT64_MAX, span_id="last"))
        assert (await store.update_attempt(rid, aid, status="succeeded")).status == "succeeded"
        return
    stored = await store.add_span(make_span(rid, aid, INT64_MAX, span_id="last"))
    assert stored is not None and stored.sequence_id == INT64_MAX
    (queried,) = await store.query_spans(rid)
    assert queried.sequence_id == INT64_MAX
    # The counter stands at the largest id: the next one does not exist, and asking is refused, never wrapped.
    with pytest.raises(ValueError, match="exhausted"):
        await store.get_next_span_sequence_id(rid, aid)
    with pytest.raises(ValueError, match="exhausted"):
        await store.get_many_span_sequence_ids([(rid, aid)])
    # The rollout is not broken: it still takes spans with explicit ids and finishes.
    assert await store.add_span(make_span(rid, aid, 5, span_id="later")) is not None
    done = await store.update_attempt(rid, aid, status="succeeded")
    assert done.status == "succeeded"
    assert {s.sequence_id for s in await store.query_spans(rid)} == {INT64_MAX, 5}


async def test_a_counter_one_below_the_largest_gives_it_once(store: LightningStore) -> None:
    if isinstance(store, LightningStoreClient):
        pytest.skip("over HTTP a sequence id stops at 2**53 - 1 (the test above checks that refusal)")
    rid, aid = await _started(store)
    await store.add_span(make_span(rid, aid, INT64_MAX - 1))
    assert await store.get_next_span_sequence_id(rid, aid) == INT64_MAX
    with pytest.raises(ValueError, match="exhausted"):
        await store.get_next_span_sequence_id(rid, aid)
    other_rid, other_aid = await _started(store)
    # A batch that would pass the end is refused whole; the other rollout's counter is untouched.
    await store.add_span(make_span(rid, aid, INT64_MAX, span_id="top"))
    with pytest.raises(ValueError, match="exhausted"):
        await store.get_many_span_sequence_ids([(other_rid, other_aid), (rid, aid)])
    assert await store.get_next_span_sequence_id(other_rid, other_aid) == 1


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"limit": INT64_MAX + 1}, "limit"),
        ({"offset": INT64_MAX + 1}, "offset"),
        ({"offset": 2**100}, "offset"),
        ({"start_time_from": 10**400}, "start_time_from"),
        ({"start_time_to": -(10**400)}, "start_time_to"),
    ],
)
async def test_query_arguments_beyond_64_bits_are_refused_naming_the_field(
    store: LightningStore, arguments: dict[str, int], field: str
) -> None:
    await store.enqueue_rollout(input="x")
    with pytest.raises(ValueError, match=field):
        await store.query_rollouts(**arguments)  # type: ignore[arg-type]


async def test_the_largest_limit_and_offset_work(store: LightningStore) -> None:
    queued = await store.enqueue_rollout(input="x")
    page = await store.query_rollouts(limit=INT64_MAX, offset=0)
    assert [r.rollout_id for r in page] == [queued.rollout_id]
    assert list(await store.query_rollouts(limit=1, offset=INT64_MAX)) == []
