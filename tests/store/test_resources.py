"""Resources snapshots: add, upsert, versions and "latest" (spec §2.4)."""

from __future__ import annotations

from agl.store.base import LightningStore
from agl.types import LLM, PromptTemplate, ResourcesUpdate
from tests.store.clock import FakeClock
from tests.store.helpers import sample_resources


async def test_add_resources(store: LightningStore, clock: FakeClock) -> None:
    resources = sample_resources("a")
    added = await store.add_resources(resources)
    assert isinstance(added, ResourcesUpdate)
    assert added.resources_id.startswith("rs-")
    assert added.version == 1
    assert added.create_time == added.update_time == clock()
    assert added.resources == resources


async def test_add_resources_round_trips_resource_types(store: LightningStore) -> None:
    added = await store.add_resources(sample_resources("a"))
    fetched = await store.get_resources_by_id(added.resources_id)
    assert fetched is not None
    assert isinstance(fetched.resources["main_llm"], LLM)
    assert fetched.resources["main_llm"].model == "model-a"
    assert fetched.resources["main_llm"].sampling_parameters == {"t": 0.5}
    assert isinstance(fetched.resources["prompt"], PromptTemplate)
    assert fetched.resources["prompt"].format(name="Bob") == "Hello Bob from a"


async def test_add_resources_ids_are_distinct(store: LightningStore) -> None:
    ids = {(await store.add_resources(sample_resources(str(i)))).resources_id for i in range(5)}
    assert len(ids) == 5


async def test_get_resources_by_id_unknown_is_none(store: LightningStore) -> None:
    assert await store.get_resources_by_id("rs-missing") is None


async def test_latest_resources_none_initially(store: LightningStore) -> None:
    assert await store.get_latest_resources() is None


async def test_latest_resources_is_last_added(store: LightningStore, clock: FakeClock) -> None:
    await store.add_resources(sample_resources("a"))
    clock.advance(1)
    second = await store.add_resources(sample_resources("b"))
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id == second.resources_id


async def test_update_resources_bumps_version_and_keeps_create_time(store: LightningStore, clock: FakeClock) -> None:
    added = await store.add_resources(sample_resources("a"))
    now = clock.advance(5)
    updated = await store.update_resources(added.resources_id, sample_resources("b"))
    assert updated.resources_id == added.resources_id
    assert updated.version == 2
    assert updated.create_time == added.create_time
    assert updated.update_time == now
    assert updated.resources["main_llm"].model == "model-b"  # type: ignore[union-attr]
    fetched = await store.get_resources_by_id(added.resources_id)
    assert fetched is not None
    assert (fetched.version, fetched.create_time, fetched.update_time) == (2, added.create_time, now)
    assert fetched.resources["main_llm"].model == "model-b"  # type: ignore[union-attr]


async def test_update_resources_repeatedly(store: LightningStore, clock: FakeClock) -> None:
    added = await store.add_resources(sample_resources("a"))
    for expected in (2, 3, 4):
        clock.advance(1)
        updated = await store.update_resources(added.resources_id, sample_resources(str(expected)))
        assert updated.version == expected
    assert len(await store.query_resources()) == 1


async def test_update_resources_becomes_latest(store: LightningStore, clock: FakeClock) -> None:
    first = await store.add_resources(sample_resources("a"))
    clock.advance(1)
    await store.add_resources(sample_resources("b"))
    clock.advance(1)
    await store.update_resources(first.resources_id, sample_resources("c"))
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id == first.resources_id and latest.version == 2


async def test_update_resources_unknown_id_upserts(store: LightningStore, clock: FakeClock) -> None:
    await store.add_resources(sample_resources("a"))
    now = clock.advance(2)
    created = await store.update_resources("rs-custom", sample_resources("b"))
    assert created.resources_id == "rs-custom"
    assert created.version == 1
    assert created.create_time == created.update_time == now
    fetched = await store.get_resources_by_id("rs-custom")
    assert fetched is not None and fetched.version == 1
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id == "rs-custom"
    assert len(await store.query_resources()) == 2


async def test_add_after_update_becomes_latest(store: LightningStore, clock: FakeClock) -> None:
    first = await store.add_resources(sample_resources("a"))
    clock.advance(1)
    await store.update_resources(first.resources_id, sample_resources("b"))
    clock.advance(1)
    third = await store.add_resources(sample_resources("c"))
    latest = await store.get_latest_resources()
    assert latest is not None and latest.resources_id == third.resources_id


async def test_new_rollouts_use_resources_current_at_creation(store: LightningStore, clock: FakeClock) -> None:
    first = await store.add_resources(sample_resources("a"))
    early = await store.enqueue_rollout(input=1)
    clock.advance(1)
    second = await store.add_resources(sample_resources("b"))
    late = await store.enqueue_rollout(input=2)
    assert early.resources_id == first.resources_id
    assert late.resources_id == second.resources_id
    fetched = await store.get_rollout_by_id(early.rollout_id)
    assert fetched is not None and fetched.resources_id == first.resources_id
