"""LitAgentRunner against a real in-memory store: results, failures, hooks, loop control, heartbeats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from agl.litagent import LitAgent, llm_rollout
from agl.runner import Hook, LitAgentRunner
from agl.store.memory import InMemoryLightningStore
from agl.tracer.dummy import DummyTracer
from agl.types import LLM, Rollout, RolloutConfig, Span, SpanCoreFields


class Returns(LitAgent[Any]):
    """Returns whatever the task says (or raises it)."""

    def rollout(self, task: Any, resources: Any, rollout: Rollout) -> Any:
        if isinstance(task, BaseException):
            raise task
        if callable(task):
            return task(rollout)
        return task


class AsyncReturns(LitAgent[Any]):
    async def rollout_async(self, task: Any, resources: Any, rollout: Rollout) -> Any:
        if isinstance(task, float) and task < 0:
            await asyncio.sleep(-task)
            return 1.0
        return task


def make_runner(agent: LitAgent[Any], store: InMemoryLightningStore, **kwargs: Any) -> LitAgentRunner[Any]:
    kwargs.setdefault("heartbeat_interval", 0)
    runner = LitAgentRunner[Any](DummyTracer(), **kwargs)
    runner.init(agent)
    runner.init_worker(0, store)
    return runner


async def run_one(task: Any, agent: LitAgent[Any] | None = None, **enqueue: Any) -> tuple[InMemoryLightningStore, str]:
    store = InMemoryLightningStore()
    rollout = await store.enqueue_rollout(task, **enqueue)
    runner = make_runner(agent or Returns(), store, max_rollouts=1)
    await asyncio.wait_for(runner.iter(), 5)
    return store, rollout.rollout_id


def reward_values(spans: Sequence[Span]) -> list[float]:
    return [s.attributes["agentlightning.reward.0.value"] for s in spans if s.name == "agentlightning.annotation"]


async def test_float_result_becomes_a_stored_reward_span() -> None:
    store, rid = await run_one(0.75)
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None and rollout.status == "succeeded"
    spans = await store.query_spans(rid)
    assert reward_values(spans) == [0.75] and spans[0].sequence_id == 1


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (True, 1.0), (0, 0.0)])
async def test_int_and_bool_results_are_rewards_with_a_warning(
    value: Any, expected: float, caplog: pytest.LogCaptureFixture
) -> None:
    store, rid = await run_one(value)
    assert reward_values(await store.query_spans(rid)) == [expected]
    assert "using it as a float reward" in caplog.text


async def test_none_result_succeeds_with_the_traced_spans() -> None:
    store, rid = await run_one(None)
    assert (await store.get_rollout_by_id(rid)).status == "succeeded"  # type: ignore[union-attr]
    assert len(await store.query_spans(rid)) == 0


async def test_span_list_result_is_stored_in_one_batch() -> None:
    def spans(rollout: Any) -> list[Span]:
        return [
            Span(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id, sequence_id=i, trace_id="a" * 32,
                 span_id=f"{i:016x}", name=f"s{i}")
            for i in (1, 2, 3)
        ]  # fmt: skip

    store, rid = await run_one(spans)
    assert [s.name for s in await store.query_spans(rid)] == ["s1", "s2", "s3"]


async def test_core_fields_result_gets_sequence_ids() -> None:
    store, rid = await run_one(lambda r: [SpanCoreFields(name="a"), SpanCoreFields(name="b")])
    stored = await store.query_spans(rid)
    assert [(s.name, s.sequence_id) for s in stored] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize(
    ("task", "error_type", "message"),
    [
        (lambda r: [SpanCoreFields(name="a"), "b"], "ValueError", "one kind"),
        (lambda r: {"reward": 1}, "TypeError", "must return None, a number or a list"),
        (RuntimeError("tool crashed"), "RuntimeError", "tool crashed"),
    ],
)
async def test_bad_results_and_exceptions_fail_the_attempt_with_the_error(
    task: Any, error_type: str, message: str
) -> None:
    store, rid = await run_one(task)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None and attempt.status == "failed"
    assert attempt.metadata is not None
    assert attempt.metadata["error"]["type"] == error_type and message in attempt.metadata["error"]["message"]
    assert (await store.get_rollout_by_id(rid)).status == "failed"  # type: ignore[union-attr]


async def test_failed_attempt_is_retried_per_config() -> None:
    store = InMemoryLightningStore()
    calls: list[int] = []

    def flaky(rollout: Any) -> float:
        calls.append(rollout.attempt.sequence_id)
        if len(calls) == 1:
            raise RuntimeError("first try fails")
        return 1.0

    rollout = await store.enqueue_rollout(flaky, config=RolloutConfig(max_attempts=2, retry_condition=["failed"]))
    runner = make_runner(Returns(), store, max_rollouts=2)
    await asyncio.wait_for(runner.iter(), 5)
    assert calls == [1, 2]
    assert (await store.get_rollout_by_id(rollout.rollout_id)).status == "succeeded"  # type: ignore[union-attr]


class Recorder(Hook):
    def __init__(self, log: list[str], fail_on: str = "") -> None:
        self.log, self.fail_on = log, fail_on

    async def on_rollout_start(self, *, agent: Any, runner: Any, rollout: Rollout) -> None:
        self.log.append("rollout_start")
        if self.fail_on == "rollout_start":
            raise RuntimeError("hook bug")

    async def on_trace_start(self, *, agent: Any, runner: Any, tracer: Any, rollout: Rollout) -> None:
        self.log.append("trace_start")

    async def on_trace_end(self, *, agent: Any, runner: Any, tracer: Any, rollout: Rollout) -> None:
        self.log.append("trace_end")

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Rollout, spans: Sequence[Span]) -> None:
        self.log.append(f"rollout_end:{len(spans)}")


async def test_hooks_run_in_order_and_their_errors_are_swallowed() -> None:
    store = InMemoryLightningStore()
    log: list[str] = []
    await store.enqueue_rollout(0.5)
    await store.enqueue_rollout(RuntimeError("boom"))
    runner = LitAgentRunner[Any](DummyTracer(), max_rollouts=2, heartbeat_interval=0)
    runner.init(Returns(), hooks=[Recorder(log, fail_on="rollout_start")])
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), 5)
    assert log == [
        "rollout_start", "trace_start", "trace_end", "rollout_end:1",
        "rollout_start", "trace_start", "rollout_end:0",  # trace_end is skipped when the agent raised
    ]  # fmt: skip
    statuses = [r.status for r in await store.query_rollouts()]
    assert statuses == ["succeeded", "failed"]


async def test_training_and_validation_variants_follow_the_mode() -> None:
    class Modes(LitAgent[Any]):
        def training_rollout(self, task: Any, resources: Any, rollout: Rollout) -> float:
            return 1.0

        def validation_rollout(self, task: Any, resources: Any, rollout: Rollout) -> float:
            return 0.0

    store = InMemoryLightningStore()
    train = await store.enqueue_rollout("x", mode="train")
    val = await store.enqueue_rollout("x", mode="val")
    await asyncio.wait_for(make_runner(Modes(), store, max_rollouts=2).iter(), 5)
    assert reward_values(await store.query_spans(train.rollout_id)) == [1.0]
    assert reward_values(await store.query_spans(val.rollout_id)) == [0.0]


async def test_sync_agent_does_not_block_the_event_loop() -> None:
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    await run_one(lambda r: time.sleep(0.4) or 1.0)
    task.cancel()
    during = [t for t in ticks if started + 0.05 < t < started + 0.35]
    assert len(during) >= 5, f"the loop was blocked: only {len(during)} ticks while the agent slept"


async def test_event_stops_the_loop_and_max_rollouts_caps_it() -> None:
    store = InMemoryLightningStore()
    for _ in range(5):
        await store.enqueue_rollout(1.0)
    await asyncio.wait_for(make_runner(Returns(), store, max_rollouts=3).iter(), 5)
    assert len(await store.query_rollouts(status_in=["succeeded"])) == 3

    event = threading.Event()
    runner = make_runner(Returns(), InMemoryLightningStore(), poll_interval=0.05)
    loop_task = asyncio.create_task(runner.iter(event=event))
    await asyncio.sleep(0.1)
    event.set()
    started = time.monotonic()
    await asyncio.wait_for(loop_task, 2)
    assert time.monotonic() - started < 0.3


async def test_runner_claims_a_late_rollout_quickly() -> None:
    store = InMemoryLightningStore()
    event = threading.Event()
    runner = make_runner(Returns(), store, poll_interval=5.0)
    loop_task = asyncio.create_task(runner.iter(event=event))
    await asyncio.sleep(0.15)
    rollout = await store.enqueue_rollout(1.0)
    enqueued = time.monotonic()
    finished = await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=5)
    latency = time.monotonic() - enqueued
    event.set()
    await asyncio.wait_for(loop_task, 2)
    assert finished and latency < 0.5


async def test_interrupted_rollout_is_failed_not_succeeded() -> None:
    store = InMemoryLightningStore()
    rollout = await store.enqueue_rollout(-5.0)  # AsyncReturns sleeps 5 s
    runner = make_runner(AsyncReturns(), store)
    loop_task = asyncio.create_task(runner.iter())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if (await store.get_rollout_by_id(rollout.rollout_id)).status == "preparing":  # type: ignore[union-attr]
            break
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "failed"
    assert attempt.metadata is not None and attempt.metadata["error"]["type"] == "RolloutInterrupted"


async def test_resources_by_id_latest_or_a_clear_error() -> None:
    @llm_rollout
    def agent(task: Any, llm: LLM) -> float:
        return 1.0 if llm.model == task else 0.0

    store = InMemoryLightningStore()
    old = await store.add_resources({"llm": LLM(endpoint="http://a/v1", model="old")})
    await store.add_resources({"llm": LLM(endpoint="http://a/v1", model="new")})
    pinned = await store.enqueue_rollout("old", resources_id=old.resources_id)
    latest = await store.enqueue_rollout("new")
    missing = await store.enqueue_rollout("x", resources_id="rs-missing")
    await asyncio.wait_for(make_runner(agent, store, max_rollouts=3).iter(), 5)
    assert reward_values(await store.query_spans(pinned.rollout_id)) == [1.0]
    assert reward_values(await store.query_spans(latest.rollout_id)) == [1.0]
    attempt = await store.get_latest_attempt(missing.rollout_id)
    assert attempt is not None and attempt.status == "failed"
    assert "rs-missing" in attempt.metadata["error"]["message"]  # type: ignore[index]


async def test_no_resources_at_all_fails_an_agent_that_needs_an_llm_clearly() -> None:
    @llm_rollout
    def agent(task: Any, llm: LLM) -> float:
        return 1.0

    store, rid = await run_one("x", agent)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None and attempt.status == "failed"
    assert "No LLM resource found" in attempt.metadata["error"]["message"]  # type: ignore[index]


async def test_step_runs_one_task_and_raises_agent_errors() -> None:
    store = InMemoryLightningStore()
    runner = make_runner(Returns(), store)
    finished = await runner.step(0.25, resources={"llm": LLM(endpoint="e", model="m")}, mode="val")
    assert finished.status == "succeeded" and finished.mode == "val" and finished.resources_id is not None
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.status == "idle"
    with pytest.raises(RuntimeError, match="kaput"):
        await runner.step(RuntimeError("kaput"))


@pytest.mark.parametrize("mode", ["thread", "asyncio"])
async def test_heartbeats_reach_the_store(mode: str) -> None:
    store = InMemoryLightningStore()
    event = threading.Event()
    runner = make_runner(Returns(), store, heartbeat_interval=0.05, interval_jitter=0.0, heartbeat_launch_mode=mode)
    loop_task = asyncio.create_task(runner.iter(event=event))
    worker = None
    for _ in range(100):
        await asyncio.sleep(0.02)
        worker = await store.get_worker_by_id("Worker-0")
        if worker is not None and worker.heartbeat_stats:
            break
    event.set()
    await asyncio.wait_for(loop_task, 3)
    assert worker is not None and worker.heartbeat_stats is not None
    assert {"cpu_usage_pct", "mem_total_gb", "host"} <= set(worker.heartbeat_stats)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        LitAgentRunner(DummyTracer(), poll_interval=0)
    with pytest.raises(ValueError, match="heartbeat_launch_mode"):
        LitAgentRunner(DummyTracer(), heartbeat_launch_mode="process")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="init_worker"):
        LitAgentRunner(DummyTracer()).get_store()


async def test_concurrency_runs_rollouts_side_by_side() -> None:
    store = InMemoryLightningStore()
    ids = [(await store.enqueue_rollout(-0.3)).rollout_id for _ in range(6)]  # each sleeps 0.3 s
    runner = make_runner(AsyncReturns(), store, concurrency=3, max_rollouts=6)
    started = time.monotonic()
    await asyncio.wait_for(runner.iter(), 5)
    elapsed = time.monotonic() - started
    finished = await store.wait_for_rollouts(rollout_ids=ids, timeout=0)
    assert [r.status for r in finished] == ["succeeded"] * 6
    assert elapsed < 1.2, f"6 rollouts of 0.3 s with concurrency 3 took {elapsed:.2f}s"


async def test_stop_event_lets_concurrent_rollouts_finish() -> None:
    store = InMemoryLightningStore()
    ids = [(await store.enqueue_rollout(-0.2)).rollout_id for _ in range(2)]
    event = threading.Event()
    runner = make_runner(AsyncReturns(), store, concurrency=2)
    loop_task = asyncio.create_task(runner.iter(event=event))
    await asyncio.sleep(0.05)
    event.set()
    await asyncio.wait_for(loop_task, 2)
    assert [r.status for r in await store.wait_for_rollouts(rollout_ids=ids, timeout=0)] == ["succeeded"] * 2


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LitAgentRunner(DummyTracer(), concurrency=0)


class EmitsItsOwnSpans(LitAgent[Any]):
    async def rollout_async(self, task: Any, resources: Any, rollout: Rollout) -> float:
        from agl.emitter import emit_annotation

        for step in range(3):
            emit_annotation({"task": str(task), "step": step})
            await asyncio.sleep(0.02)  # interleave with the other rollouts in flight
        return 1.0


async def test_concurrent_rollouts_keep_their_spans_apart_with_the_otel_tracer() -> None:
    from agl.tracer.otel import OtelTracer

    store = InMemoryLightningStore()
    ids = {f"t{i}": (await store.enqueue_rollout(f"t{i}")).rollout_id for i in range(4)}
    runner = LitAgentRunner[Any](OtelTracer(), concurrency=4, max_rollouts=4, heartbeat_interval=0)
    runner.init(EmitsItsOwnSpans())
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), 10)
    for task, rollout_id in ids.items():
        spans = await store.query_spans(rollout_id)
        annotations = [s for s in spans if "task" in s.attributes]
        assert [s.attributes["task"] for s in annotations] == [task] * 3
        assert [s.attributes.get("agentlightning.reward.0.value") for s in spans if s not in annotations] == [1.0]


@pytest.mark.parametrize("over_http", [False, True])
async def test_a_runner_abandons_a_rollout_that_moved_on_and_takes_new_work(
    over_http: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled while its agent runs, a rollout stays cancelled: the runner's late result is refused (fencing)."""
    from agl.store.client import LightningStoreClient
    from agl.store.server import LightningStoreServer

    store = InMemoryLightningStore(thread_safe=True)
    first = await store.enqueue_rollout(-0.3)  # the agent sleeps 0.3 s, then returns 1.0
    second = await store.enqueue_rollout(0.5)
    server = LightningStoreServer(store, host="127.0.0.1", port=0) if over_http else None
    client = None
    if server is not None:
        await server.start_async()
        client = LightningStoreClient(server.endpoint)
    try:
        runner = make_runner(AsyncReturns(), client or store, max_rollouts=2)  # type: ignore[arg-type]
        running = asyncio.ensure_future(runner.iter())
        while (await store.get_rollout_by_id(first.rollout_id)).status == "queuing":  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        await store.update_rollout(first.rollout_id, status="cancelled")
        await asyncio.wait_for(running, 5)
    finally:
        if client is not None:
            await client.close()
        if server is not None:
            await server.stop_async()
    assert (await store.get_rollout_by_id(first.rollout_id)).status == "cancelled"  # type: ignore[union-attr]
    assert (await store.get_rollout_by_id(second.rollout_id)).status == "succeeded"  # type: ignore[union-attr]
    assert "moved on; abandoning attempt" in caplog.text
    # The late reward span is kept on the cancelled rollout's attempt (nothing is lost).
    assert reward_values(await store.query_spans(first.rollout_id)) == [1.0]
