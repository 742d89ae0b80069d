"""Behaviour specific to `InMemoryLightningStore` and `LightningStoreThreaded` (spec §1, §5.4 debounce, §7).

Not part of the shared conformance suite: memory accounting, eviction, debounce, capabilities and threads.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from agl.store.base import LightningStoreCapabilities
from agl.store.errors import StoreFullError
from agl.store.memory import InMemoryLightningStore
from agl.store.threading import LightningStoreThreaded
from agl.types import RolloutConfig, Span
from tests.store.clock import FakeClock
from tests.store.helpers import make_span, sample_resources


def _sized(span: Span) -> int:
    """Span size estimator for tests: the `size` attribute of the span, default 20 bytes."""
    return int(span.attributes.get("size", 20))


@pytest.fixture
async def small_store(clock: FakeClock) -> AsyncIterator[InMemoryLightningStore]:
    """The spec's reference configuration: capacity 100 B, eviction at 50 B, safe at 5 B, spans of 20 B."""
    store = InMemoryLightningStore(
        clock=clock,
        scan_debounce_seconds=0,
        memory_capacity_bytes=100,
        eviction_memory_threshold=0.5,
        safe_memory_threshold=0.05,
        span_size_estimator=_sized,
    )
    yield store
    await store.close()


async def _rollout_with_span(store: InMemoryLightningStore, clock: FakeClock, size: int = 20) -> str:
    clock.advance(1)
    rollout = await store.start_rollout(input="x")
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, attributes={"size": size}))
    return rollout.rollout_id


# -- capabilities and statistics (§1) ---------------------------------------------------------------------------


def test_capabilities_default(clock: FakeClock) -> None:
    caps = InMemoryLightningStore(clock=clock).capabilities
    assert caps.get("async_safe") is True
    assert not caps.get("zero_copy")
    assert not caps.get("otlp_traces")
    # AGL deviation (docs/compatibility.md): always thread-safe, whatever the constructor argument says.
    assert caps.get("thread_safe") is True


def test_capabilities_thread_safe_argument(clock: FakeClock) -> None:
    caps = InMemoryLightningStore(clock=clock, thread_safe=True).capabilities
    assert caps.get("thread_safe") is True and caps.get("async_safe") is True


def test_threaded_capabilities(clock: FakeClock) -> None:
    caps = LightningStoreThreaded(InMemoryLightningStore(clock=clock)).capabilities
    assert caps.get("thread_safe") is True
    assert caps.get("async_safe") is True
    assert not caps.get("zero_copy")
    assert not caps.get("otlp_traces")


def test_no_otlp_endpoint(clock: FakeClock) -> None:
    with pytest.raises(NotImplementedError):
        InMemoryLightningStore(clock=clock).otlp_traces_endpoint()
    with pytest.raises(NotImplementedError):
        LightningStoreThreaded(InMemoryLightningStore(clock=clock)).otlp_traces_endpoint()


async def test_statistics_keys_and_counts(clock: FakeClock) -> None:
    store = InMemoryLightningStore(
        clock=clock, memory_capacity_bytes=1000, eviction_memory_threshold=0.5, span_size_estimator=_sized
    )
    started = await store.start_rollout(input="x", worker_id="Worker-0")
    await store.enqueue_rollout(input="y")
    await store.start_attempt(started.rollout_id)
    await store.add_resources(sample_resources())
    await store.add_span(make_span(started.rollout_id, started.attempt.attempt_id, attributes={"size": 33}))
    clock.advance(5)
    stats = await store.statistics()
    expected_keys = {
        "name",
        "total_rollouts",
        "total_attempts",
        "total_spans",
        "total_resources",
        "total_workers",
        "uptime",
        "total_span_bytes",
        "eviction_threshold_bytes",
        "safe_threshold_bytes",
        "memory_capacity_bytes",
    }
    assert expected_keys <= set(stats)
    assert stats["name"] == "InMemoryLightningStore"
    assert stats["total_rollouts"] == 2
    assert stats["total_attempts"] == 2
    assert stats["total_spans"] == 1
    assert stats["total_resources"] == 1
    assert stats["total_workers"] == 1
    assert stats["uptime"] == pytest.approx(5.0)
    assert stats["total_span_bytes"] == 33
    assert stats["memory_capacity_bytes"] == 1000
    assert stats["eviction_threshold_bytes"] == 500
    assert stats["safe_threshold_bytes"] == 400
    await store.close()


async def test_threaded_statistics_come_from_wrapped_store(clock: FakeClock) -> None:
    store = LightningStoreThreaded(InMemoryLightningStore(clock=clock, memory_capacity_bytes=1000))
    await store.enqueue_rollout(input="x")
    stats = await store.statistics()
    assert stats["total_rollouts"] == 1
    assert stats["memory_capacity_bytes"] == 1000
    await store.close()


# -- thresholds (§7.2) ------------------------------------------------------------------------------------------


async def _thresholds(store: InMemoryLightningStore) -> tuple[int, int, int]:
    stats = await store.statistics()
    return stats["memory_capacity_bytes"], stats["eviction_threshold_bytes"], stats["safe_threshold_bytes"]


async def test_default_thresholds(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock, memory_capacity_bytes=1000)
    assert await _thresholds(store) == (1000, 700, 560)


async def test_default_capacity_is_physical_memory(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock)
    capacity, eviction, safe = await _thresholds(store)
    assert capacity == psutil.virtual_memory().total
    assert eviction == int(0.7 * capacity)
    assert safe == int(0.8 * eviction)


@pytest.mark.parametrize(
    ("eviction", "safe", "expected"),
    [
        (0.25, None, (250, 200)),
        (300, None, (300, 240)),
        (0.5, 0.1, (500, 100)),
        (0.5, 50, (500, 50)),
        (1.0, 0.0, (1000, 0)),
        (1, 0, (1, 0)),
        (2000, 1500, (2000, 1500)),
    ],
)
async def test_threshold_ratio_or_bytes(clock: FakeClock, eviction: Any, safe: Any, expected: tuple[int, int]) -> None:
    store = InMemoryLightningStore(
        clock=clock, memory_capacity_bytes=1000, eviction_memory_threshold=eviction, safe_memory_threshold=safe
    )
    assert (await _thresholds(store))[1:] == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eviction_memory_threshold": 0.0}, r"eviction_memory_threshold.*ratio must be greater than 0 and at most 1"),
        ({"eviction_memory_threshold": 1.5}, r"eviction_memory_threshold.*ratio must be greater than 0 and at most 1"),
        ({"eviction_memory_threshold": -0.5}, r"eviction_memory_threshold.*ratio must be greater than 0 and at most 1"),
        ({"eviction_memory_threshold": -1}, r"eviction_memory_threshold.*must be non-negative"),
        ({"eviction_memory_threshold": 0}, r"eviction_memory_threshold.*must be at least 1 bytes"),
        ({"eviction_memory_threshold": 0.0001}, r"eviction_memory_threshold.*must be at least 1 bytes"),
        ({"safe_memory_threshold": -0.1}, r"safe_memory_threshold.*ratio must be between 0 and 1 inclusive"),
        ({"safe_memory_threshold": 1.1}, r"safe_memory_threshold.*ratio must be between 0 and 1 inclusive"),
        ({"safe_memory_threshold": -1}, r"safe_memory_threshold.*must be non-negative"),
        (
            {"eviction_memory_threshold": 0.5, "safe_memory_threshold": 0.6},
            "safe_memory_threshold must be smaller than eviction_memory_threshold",
        ),
        (
            {"eviction_memory_threshold": 500, "safe_memory_threshold": 500},
            "safe_memory_threshold must be smaller than eviction_memory_threshold",
        ),
        (
            {"eviction_memory_threshold": 0.3, "safe_memory_threshold": 1.0},
            "safe_memory_threshold must be smaller than eviction_memory_threshold",
        ),
    ],
)
def test_threshold_validation(clock: FakeClock, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InMemoryLightningStore(clock=clock, memory_capacity_bytes=1000, **kwargs)


@pytest.mark.parametrize("capacity", [0, -5])
def test_capacity_must_be_positive(clock: FakeClock, capacity: int) -> None:
    with pytest.raises(ValueError):
        InMemoryLightningStore(clock=clock, memory_capacity_bytes=capacity)


# -- span accounting and spill (§7.2, with AGL's spill-instead-of-drop) -------------------------------------


async def test_reference_configuration_spills_instead_of_dropping(
    small_store: InMemoryLightningStore, clock: FakeClock
) -> None:
    rollout_ids = [await _rollout_with_span(small_store, clock) for _ in range(4)]
    # The third span would cross 50 B: the two oldest rollouts' spans move to disk first.
    stats = await small_store.statistics()
    assert stats["total_span_bytes"] == 40
    assert (stats["spilled_rollouts"], stats["spilled_spans"], stats["spilled_span_bytes"]) == (2, 2, 40)
    for rid in rollout_ids:  # nothing is lost: spilled spans are read back transparently
        (span,) = await small_store.query_spans(rid)
        assert span.rollout_id == rid


async def test_no_spill_at_threshold(small_store: InMemoryLightningStore, clock: FakeClock) -> None:
    first = await _rollout_with_span(small_store, clock, size=25)
    second = await _rollout_with_span(small_store, clock, size=25)  # exactly 50 B: not above the threshold
    assert len(await small_store.query_spans(first)) == 1
    assert len(await small_store.query_spans(second)) == 1
    stats = await small_store.statistics()
    assert stats["total_span_bytes"] == 50 and stats["spilled_rollouts"] == 0


async def test_spill_order_follows_rollout_start_time(clock: FakeClock) -> None:
    store = InMemoryLightningStore(
        clock=clock,
        scan_debounce_seconds=0,
        memory_capacity_bytes=100,
        eviction_memory_threshold=0.5,
        safe_memory_threshold=0.45,
        span_size_estimator=_sized,
    )
    old = await store.start_rollout(input="old")
    clock.advance(1)
    new = await store.start_rollout(input="new")
    await store.add_span(make_span(new.rollout_id, new.attempt.attempt_id, attributes={"size": 30}))
    await store.add_span(make_span(old.rollout_id, old.attempt.attempt_id, attributes={"size": 10}))
    await store.add_span(make_span(new.rollout_id, new.attempt.attempt_id, attributes={"size": 15}))  # 55 B > 50
    # The oldest rollout (by start time) goes first even though its span arrived later; 45 B <= 45 B stops.
    stats = await store.statistics()
    assert (stats["total_span_bytes"], stats["spilled_span_bytes"], stats["spilled_rollouts"]) == (45, 10, 1)
    assert len(await store.query_spans(old.rollout_id)) == 1
    assert len(await store.query_spans(new.rollout_id)) == 2
    await store.close()


async def test_writer_itself_may_be_spilled(small_store: InMemoryLightningStore, clock: FakeClock) -> None:
    rollout = await small_store.start_rollout(input="x")
    aid = rollout.attempt.attempt_id
    await small_store.add_many_spans([make_span(rollout.rollout_id, aid, i) for i in (1, 2)])
    await small_store.add_span(make_span(rollout.rollout_id, aid, 3))  # 60 B: its own older spans go to disk
    stats = await small_store.statistics()
    assert (stats["total_span_bytes"], stats["spilled_spans"]) == (20, 2)
    assert [s.sequence_id for s in await small_store.query_spans(rollout.rollout_id)] == [1, 2, 3]


async def test_spilled_rollout_takes_new_spans_and_still_rejects_duplicates(
    small_store: InMemoryLightningStore, clock: FakeClock
) -> None:
    rollout_ids = [await _rollout_with_span(small_store, clock) for _ in range(3)]
    first = rollout_ids[0]
    (spilled,) = await small_store.query_spans(first)
    assert await small_store.add_span(spilled) is None  # a duplicate of a span that is on disk
    fresh = make_span(first, spilled.attempt_id, 2)
    assert await small_store.add_span(fresh) is not None
    assert [s.span_id for s in await small_store.query_spans(first)] == [spilled.span_id, fresh.span_id]
    assert [s.span_id for s in await small_store.query_spans(first, "latest")] == [spilled.span_id, fresh.span_id]


def _disk_bytes(directory: Any) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


async def test_full_spill_refuses_new_spans_and_keeps_old_ones(tmp_path: Any, clock: FakeClock) -> None:
    # Real sizes: spans of ~20 KB, 50 KB of span memory, and a 64 KiB disk budget for the spill.
    store = InMemoryLightningStore(
        clock=clock,
        memory_capacity_bytes=100_000,
        eviction_memory_threshold=0.5,
        safe_memory_threshold=0.05,
        spill_dir=str(tmp_path),
        spill_max_bytes=64 * 1024,
    )
    text = "x" * 20_000
    stored: list[str] = []
    with pytest.raises(StoreFullError, match="retry later"):
        for _ in range(20):
            clock.advance(1)
            rollout = await store.start_rollout(input="x")
            await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, attributes={"t": text}))
            stored.append(rollout.rollout_id)
            assert _disk_bytes(tmp_path) <= 64 * 1024
    assert 3 <= len(stored) < 20
    assert _disk_bytes(tmp_path) <= 64 * 1024
    refused = rollout.rollout_id  # the rollout whose span was refused
    assert refused not in stored and len(await store.query_spans(refused)) == 0  # the refused call stored nothing
    late = make_span(refused, rollout.attempt.attempt_id, attributes={"t": text})
    with pytest.raises(StoreFullError):
        await store.add_many_spans([late])
    for rid in stored:  # nothing acknowledged was lost, spilled or not
        (span,) = await store.query_spans(rid)
        assert span.attributes["t"] == text
    stats = await store.statistics()
    assert stats["spilled_spans"] >= 1 and stats["total_spans"] == len(stored)
    assert 0 <= stats["spill_room_bytes"] < 64 * 1024
    await store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget", [1, 20, 64 * 1024 - 1, -1])
def test_spill_budget_must_be_zero_or_room_for_a_spill(budget: int) -> None:
    with pytest.raises(ValueError, match="spill_max_bytes must be 0"):
        InMemoryLightningStore(spill_max_bytes=budget)


async def test_a_batch_bigger_than_the_budget_is_a_clear_error(
    small_store: InMemoryLightningStore, clock: FakeClock
) -> None:
    rollout = await small_store.start_rollout(input="x")
    huge = make_span(rollout.rollout_id, rollout.attempt.attempt_id, attributes={"size": 60})
    with pytest.raises(ValueError, match="more than the whole span memory budget"):
        await small_store.add_span(huge)


async def test_spill_directory_is_private_and_removed_on_close(tmp_path: Any, clock: FakeClock) -> None:
    store = InMemoryLightningStore(
        clock=clock,
        memory_capacity_bytes=100,
        eviction_memory_threshold=0.5,
        safe_memory_threshold=0.05,
        span_size_estimator=_sized,
        spill_dir=str(tmp_path),
    )
    for _ in range(3):
        await _rollout_with_span(store, clock)
    (spill_dir,) = list(tmp_path.iterdir())
    assert spill_dir.name.startswith("agl-spill-") and any(spill_dir.iterdir())
    await store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not exist"):
        InMemoryLightningStore(spill_dir=str(tmp_path / "missing"))


async def test_spill_keeps_rollouts_attempts_and_status_flow(
    small_store: InMemoryLightningStore, clock: FakeClock
) -> None:
    rollout_ids = [await _rollout_with_span(small_store, clock) for _ in range(3)]
    first = rollout_ids[0]
    fetched = await small_store.get_rollout_by_id(first)
    assert fetched is not None and fetched.status == "running"
    assert len(await small_store.query_attempts(first)) == 1
    await small_store.update_attempt(first, "latest", status="succeeded")
    done = await small_store.wait_for_rollouts(rollout_ids=[first], timeout=0)
    assert [r.status for r in done] == ["succeeded"]


async def test_negative_estimate_is_clamped(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock, memory_capacity_bytes=1000, span_size_estimator=lambda span: -50)
    rollout = await store.start_rollout(input="x")
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    assert (await store.statistics())["total_span_bytes"] == 0


async def test_default_estimator_counts_bytes(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock)
    rollout = await store.start_rollout(input="x")
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    small = (await store.statistics())["total_span_bytes"]
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, attributes={"blob": "x" * 10_000}))
    total = (await store.statistics())["total_span_bytes"]
    assert small > 0
    assert total - small >= 10_000


async def test_held_span_memory_is_close_to_the_counted_json_bytes(clock: FakeClock) -> None:
    # Parsed, a span with token ids and text takes ~3× its JSON; the store keeps the JSON so the budget means memory.
    store = InMemoryLightningStore(clock=clock)
    rollout = await store.start_rollout(input="x")
    attempt_id = rollout.attempt.attempt_id
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        incoming = [
            Span.model_validate_json(
                make_span(
                    rollout.rollout_id,
                    attempt_id,
                    i + 1,
                    attributes={"prompt_token_ids": list(range(1000 + i, 2000 + i)), "text": "word " * 1000},
                ).model_dump_json()
            )
            for i in range(200)
        ]
        await store.add_many_spans(incoming)
        del incoming
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = (await store.statistics())["total_span_bytes"]
    assert counted > 200 * 10_000
    assert held < 1.1 * counted


async def test_stored_spans_are_copies(clock: FakeClock, tmp_path: Any) -> None:
    store = InMemoryLightningStore(clock=clock, eviction_memory_threshold=3000, spill_dir=str(tmp_path))
    rollout = await store.start_rollout(input="x")
    first = (await store.start_attempt(rollout.rollout_id)).attempt.attempt_id
    second = (await store.start_attempt(rollout.rollout_id)).attempt.attempt_id
    span = make_span(rollout.rollout_id, first, 1, span_id="a", attributes={"k": "before"})
    await store.add_span(span)
    span.attributes["k"] = "after"  # the caller's object is not the stored one
    got = (await store.query_spans(rollout.rollout_id)).items
    assert [s.attributes["k"] for s in got] == ["before"]
    got[0].attributes["k"] = "changed"  # nor is a query's answer
    assert (await store.query_spans(rollout.rollout_id)).items[0].attributes["k"] == "before"
    # Spilled spans filtered by attempt come back too, in sequence order with the held ones.
    for i in range(2, 12):
        await store.add_span(
            make_span(rollout.rollout_id, first if i % 2 else second, i, attributes={"pad": "x" * 400})
        )
    assert (await store.statistics())["spilled_spans"] > 0
    assert [s.sequence_id for s in (await store.query_spans(rollout.rollout_id, first)).items] == [1, 3, 5, 7, 9, 11]
    assert [s.sequence_id for s in (await store.query_spans(rollout.rollout_id, "latest")).items] == [2, 4, 6, 8, 10]
    await store.close()


async def test_duplicate_span_is_not_counted(small_store: InMemoryLightningStore) -> None:
    rollout = await small_store.start_rollout(input="x")
    span = make_span(rollout.rollout_id, rollout.attempt.attempt_id, span_id="dup")
    await small_store.add_span(span)
    await small_store.add_span(span)
    assert (await small_store.statistics())["total_span_bytes"] == 20


# -- health-scan debounce (§5.4) --------------------------------------------------------------------------------


async def test_debounce_delays_timeout_detection(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=10)
    start = clock()
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=1.0))  # first call scans
    for at in (2.0, 5.0, 9.9):
        clock.advance(start + at - clock())
        fetched = await store.get_rollout_by_id(rollout.rollout_id)
        assert fetched is not None and fetched.status == "preparing", at
    clock.advance(start + 10.0 - clock())
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "failed"
    assert fetched.attempt.status == "timeout"  # type: ignore[attr-defined]


async def test_default_debounce_is_ten_seconds(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock)
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=1.0))
    clock.advance(9.5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing"
    clock.advance(0.5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "timeout"


@pytest.mark.parametrize("debounce", [0, -1.0])
async def test_nonpositive_debounce_scans_every_call(clock: FakeClock, debounce: float) -> None:
    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=debounce)
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=1.0))
    clock.advance(1.5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "timeout"


async def test_debounce_window_restarts_at_each_scan(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=10)
    await store.query_workers()  # scan at t=0
    clock.advance(10)
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=1.0))  # scan at t=10
    clock.advance(5)  # t=15: attempt timed out, but no scan until t=20
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing"
    clock.advance(5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "timeout"


# -- threads, pickling and the threaded wrapper (§7.1) ----------------------------------------------------------


def _allocate_from_threads(store: Any, rollout_id: str, attempt_id: str, threads: int, each: int) -> list[int]:
    results: list[int] = []
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        async def run() -> list[int]:
            return [await store.get_next_span_sequence_id(rollout_id, attempt_id) for _ in range(each)]

        try:
            got = asyncio.run(run())
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            return
        with guard:
            results.extend(got)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(10)
    assert not errors, errors
    return results


class _NotThreadSafeStore(InMemoryLightningStore):
    """An in-memory store that claims not to be thread-safe, so the wrapper must confine it to one loop."""

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        return LightningStoreCapabilities(thread_safe=False, async_safe=True, zero_copy=False, otlp_traces=False)


@pytest.mark.parametrize("kind", ["memory", "threaded", "threaded-over-unsafe"])
async def test_sequence_ids_unique_across_threads(clock: FakeClock, kind: str) -> None:
    if kind == "memory":
        store: Any = InMemoryLightningStore(clock=clock, thread_safe=True)
    elif kind == "threaded":
        store = LightningStoreThreaded(InMemoryLightningStore(clock=clock, thread_safe=True))
    else:
        store = LightningStoreThreaded(_NotThreadSafeStore(clock=clock))
    rollout = await store.start_rollout(input="x")
    results = await asyncio.to_thread(
        _allocate_from_threads, store, rollout.rollout_id, rollout.attempt.attempt_id, 4, 25
    )
    assert sorted(results) == list(range(1, 101))
    await store.close()


async def test_threaded_wrapper_over_unsafe_store_runs_the_protocol(clock: FakeClock) -> None:
    store = LightningStoreThreaded(_NotThreadSafeStore(clock=clock, scan_debounce_seconds=0))
    rollout = await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="Worker-0")
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    await store.add_span(make_span(rollout.rollout_id, claimed.attempt.attempt_id))
    assert len(await store.query_spans(rollout.rollout_id)) == 1

    async def finish() -> None:
        await asyncio.sleep(0.05)
        await store.update_attempt(rollout.rollout_id, "latest", status="succeeded")

    task = asyncio.create_task(finish())
    started = time.perf_counter()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=3), 5)
    await task
    assert time.perf_counter() - started < 1.0
    assert [r.status for r in done] == ["succeeded"]
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.status == "idle"
    await store.close()


async def test_wait_wakes_when_finished_from_another_thread(clock: FakeClock) -> None:
    store = InMemoryLightningStore(clock=clock, thread_safe=True)
    rollout = await store.start_rollout(input="x")

    def finish_in_thread() -> None:
        time.sleep(0.05)
        asyncio.run(store.update_rollout(rollout.rollout_id, status="succeeded"))

    thread = threading.Thread(target=finish_in_thread)
    started = time.perf_counter()
    thread.start()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=3), 5)
    await asyncio.to_thread(thread.join, 5)
    assert time.perf_counter() - started < 1.0
    assert [r.rollout_id for r in done] == [rollout.rollout_id]


async def test_store_survives_pickling() -> None:
    store = InMemoryLightningStore()  # real clock: the FakeClock holds a lock and cannot be pickled
    rollout = await store.start_rollout(input={"q": 1})
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, span_id="s"))
    await store.enqueue_rollout(input="queued")
    copy = pickle.loads(pickle.dumps(store))
    fetched = await copy.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.input == {"q": 1} and fetched.status == "running"
    assert [s.span_id for s in await copy.query_spans(rollout.rollout_id)] == ["s"]
    claimed = await copy.dequeue_rollout()
    assert claimed is not None and claimed.input == "queued"
    assert await copy.get_next_span_sequence_id(rollout.rollout_id, rollout.attempt.attempt_id) == 2


async def test_process_memory_limit_spills_earlier_and_recovers(clock: FakeClock) -> None:
    store = InMemoryLightningStore(
        clock=clock,
        memory_capacity_bytes=10_000_000,
        eviction_memory_threshold=1_000_000,
        span_size_estimator=lambda span: 100_000,
        process_memory_limit=6_400_000,  # RSS is read after every 100 000 new span bytes
    )
    rss = [0]
    store._read_rss = lambda: rss[0]  # the process's resident memory, as the test decides
    rollout = await store.start_rollout(input="x")
    aid = rollout.attempt.attempt_id
    rss[0] = 5_000_000  # under the limit: span bytes alone decide
    for i in range(6):
        await store.add_span(make_span(rollout.rollout_id, aid, i + 1))
    assert (await store.statistics())["spilled_spans"] == 0
    rss[0] = 6_800_000  # 400 000 bytes over the process limit: spans spill although under the span budget
    await store.add_span(make_span(rollout.rollout_id, aid, 10))
    stats = await store.statistics()
    assert stats["spilled_spans"] >= 6 and stats["total_span_bytes"] <= 300_000
    assert len(await store.query_spans(rollout.rollout_id)) == 7  # nothing lost
    rss[0] = 1_000_000  # well under the limit again: the span limit grows back
    other = await store.start_rollout(input="y")
    for i in range(8):
        await store.add_span(make_span(other.rollout_id, other.attempt.attempt_id, i + 1))
    assert (await store.statistics())["total_span_bytes"] > 300_000
    with pytest.raises(ValueError, match="process_memory_limit"):
        InMemoryLightningStore(process_memory_limit=0)
    await store.close()
