"""Bad input: unknown ids on mutating calls, invalid values, bad pagination and sorting (spec §0, §2, §4)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agl.store.base import LightningStore
from agl.store.query import compile_filter
from tests.store.helpers import make_otel_span, make_span

MISSING = "ro-does-not-exist-42"


# -- unknown ids on mutating calls ------------------------------------------------------------------------------


async def test_update_rollout_unknown_id(store: LightningStore) -> None:
    with pytest.raises(ValueError, match=re.escape(MISSING)):
        await store.update_rollout(MISSING, status="succeeded")


async def test_start_attempt_unknown_id(store: LightningStore) -> None:
    with pytest.raises(ValueError, match=rf"Rollout {re.escape(MISSING)} not found"):
        await store.start_attempt(MISSING)


async def test_update_attempt_unknown_rollout(store: LightningStore) -> None:
    with pytest.raises(ValueError, match=rf"Rollout {re.escape(MISSING)} not found"):
        await store.update_attempt(MISSING, "at-whatever", status="running")


@pytest.mark.parametrize("attempt_id", ["latest", "at-whatever"])
async def test_update_attempt_rollout_without_attempts(store: LightningStore, attempt_id: str) -> None:
    rollout = await store.enqueue_rollout(input="x")
    with pytest.raises(ValueError, match=rf"No attempts found for rollout {re.escape(rollout.rollout_id)}"):
        await store.update_attempt(rollout.rollout_id, attempt_id, status="running")


async def test_update_attempt_unknown_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid = re.escape(rollout.rollout_id)
    with pytest.raises(ValueError, match=rf"Attempt at-missing-7 not found for rollout {rid}"):
        await store.update_attempt(rollout.rollout_id, "at-missing-7", status="running")


async def test_update_attempt_of_other_rollout_is_unknown(store: LightningStore) -> None:
    mine = await store.start_rollout(input="x")
    other = await store.start_rollout(input="y")
    with pytest.raises(ValueError, match=re.escape(other.attempt.attempt_id)):
        await store.update_attempt(mine.rollout_id, other.attempt.attempt_id, status="running")
    attempt = await store.get_latest_attempt(other.rollout_id)
    assert attempt is not None and attempt.status == "preparing"


async def test_add_span_unknown_rollout(store: LightningStore) -> None:
    with pytest.raises(ValueError, match=rf"Rollout {re.escape(MISSING)} not found"):
        await store.add_span(make_span(MISSING, "at-1"))


async def test_add_span_unknown_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    rid = re.escape(rollout.rollout_id)
    with pytest.raises(ValueError, match=rf"Attempt at-missing-7 not found for rollout {rid}"):
        await store.add_span(make_span(rollout.rollout_id, "at-missing-7"))


async def test_add_span_attempt_of_other_rollout(store: LightningStore) -> None:
    mine = await store.start_rollout(input="x")
    other = await store.start_rollout(input="y")
    with pytest.raises(ValueError, match=re.escape(other.attempt.attempt_id)):
        await store.add_span(make_span(mine.rollout_id, other.attempt.attempt_id))


async def test_add_many_spans_unknown_rollout(store: LightningStore) -> None:
    with pytest.raises(ValueError, match=re.escape(MISSING)):
        await store.add_many_spans([make_span(MISSING, "at-1")])


async def test_add_many_spans_unknown_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    with pytest.raises(ValueError, match="at-missing-7"):
        await store.add_many_spans([make_span(rollout.rollout_id, "at-missing-7")])
    assert list(await store.query_spans(rollout.rollout_id)) == []


async def test_add_otel_span_unknown_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    with pytest.raises(ValueError, match="at-missing-7"):
        await store.add_otel_span(rollout.rollout_id, "at-missing-7", make_otel_span(), sequence_id=1)


async def test_failed_span_write_changes_no_state(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    with pytest.raises(ValueError):
        await store.add_span(make_span(rollout.rollout_id, "at-missing-7"))
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "preparing"
    assert fetched.attempt.last_heartbeat_time is None  # type: ignore[attr-defined]


# -- invalid field values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("status", "exploded"), ("mode", "production")])
async def test_update_rollout_invalid_value_names_field(store: LightningStore, field: str, value: str) -> None:
    rollout = await store.enqueue_rollout(input="x", mode="train")
    with pytest.raises(ValueError, match=field):
        await store.update_rollout(rollout.rollout_id, **{field: value})
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "queuing" and fetched.mode == "train"


async def test_update_attempt_invalid_status_names_field(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    with pytest.raises(ValueError, match="status"):
        await store.update_attempt(rollout.rollout_id, "latest", status="cancelled")  # not an attempt status
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing"
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "preparing"


@pytest.mark.parametrize("how", ["start", "enqueue"])
async def test_create_with_invalid_mode_names_field(store: LightningStore, how: str) -> None:
    create = store.start_rollout if how == "start" else store.enqueue_rollout
    with pytest.raises(ValueError, match="mode"):
        await create(input="x", mode="production")  # type: ignore[arg-type]
    assert len(await store.query_rollouts()) == 0


# -- pagination, sorting and filter logic -----------------------------------------------------------------------

Query = Callable[..., Awaitable[Any]]


async def _queries(store: LightningStore) -> dict[str, Query]:
    rollout = await store.start_rollout(input="x")
    rid = rollout.rollout_id
    return {
        "query_rollouts": store.query_rollouts,
        "query_attempts": lambda **kw: store.query_attempts(rid, **kw),
        "query_spans": lambda **kw: store.query_spans(rid, **kw),
        "query_resources": store.query_resources,
        "query_workers": store.query_workers,
    }


QUERY_NAMES = ["query_rollouts", "query_attempts", "query_spans", "query_resources", "query_workers"]


@pytest.mark.parametrize("method", QUERY_NAMES)
@pytest.mark.parametrize("limit", [-2, -100])
async def test_bad_limit(store: LightningStore, method: str, limit: int) -> None:
    query = (await _queries(store))[method]
    with pytest.raises(ValueError, match="limit"):
        await query(limit=limit)


@pytest.mark.parametrize("method", QUERY_NAMES)
async def test_bad_offset(store: LightningStore, method: str) -> None:
    query = (await _queries(store))[method]
    with pytest.raises(ValueError, match="offset"):
        await query(offset=-1)


@pytest.mark.parametrize("method", QUERY_NAMES)
async def test_invalid_sort_by(store: LightningStore, method: str) -> None:
    query = (await _queries(store))[method]
    with pytest.raises(ValueError, match="no_such_field"):
        await query(sort_by="no_such_field")


SORTABLE = {
    "query_rollouts": "rollout_id",
    "query_attempts": "sequence_id",
    "query_spans": "sequence_id",
    "query_resources": "resources_id",
    "query_workers": "worker_id",
}


@pytest.mark.parametrize("method", QUERY_NAMES)
async def test_invalid_sort_order(store: LightningStore, method: str) -> None:
    query = (await _queries(store))[method]
    with pytest.raises(ValueError, match="sideways"):
        await query(sort_by=SORTABLE[method], sort_order="sideways")


@pytest.mark.parametrize("method", ["query_rollouts", "query_spans", "query_workers"])
async def test_invalid_filter_logic(store: LightningStore, method: str) -> None:
    query = (await _queries(store))[method]
    with pytest.raises(ValueError, match="xor"):
        await query(filter_logic="xor")


async def test_sort_by_incomparable_field_is_an_error(store: LightningStore) -> None:
    await store.enqueue_rollout(input="x", metadata={"a": 1})
    await store.enqueue_rollout(input="y", metadata={"b": 2})
    with pytest.raises((ValueError, TypeError)):
        await store.query_rollouts(sort_by="metadata")


# -- the shared filter compiler (not a store call: unknown operators cannot be sent through the protocol) -------


def test_compile_filter_unknown_operator() -> None:
    with pytest.raises(ValueError, match="startswith"):
        compile_filter({"rollout_id": {"startswith": "ro-"}})


def test_compile_filter_unknown_aggregate() -> None:
    with pytest.raises(ValueError, match="nand"):
        compile_filter({"_aggregate": "nand", "rollout_id": {"exact": "x"}})


def test_compile_filter_must_operator_twice() -> None:
    with pytest.raises(ValueError, match="exact"):
        compile_filter({"_must": [{"rollout_id": {"exact": "a"}}, {"rollout_id": {"exact": "b"}}]})


def test_compile_filter_empty_or_pool_matches_everything() -> None:
    predicate = compile_filter({"_aggregate": "or", "name": {"exact": None}, "_must": {"rollout_id": {"exact": "r"}}})
    assert predicate is not None

    class Item:
        def __init__(self, rollout_id: str, name: str) -> None:
            self.rollout_id = rollout_id
            self.name = name

    assert predicate(Item("r", "anything"))
    assert not predicate(Item("other", "anything"))
