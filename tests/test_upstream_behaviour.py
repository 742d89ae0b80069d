"""Behaviour of the names added for Agent Lightning compatibility (the surface test checks they exist)."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import pytest

import agl
from agl.store.state import is_finished, is_queuing, is_running
from agl.tracer.base import Tracer, get_active_tracer, with_active_tracer_context


def _rollout(status: str) -> agl.Rollout:
    return agl.Rollout(rollout_id="ro-1", input=1, start_time=time.time(), status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "queuing", "running", "finished"),
    [("queuing", True, False, False), ("requeuing", True, False, False), ("preparing", False, True, False),
     ("running", False, True, False), ("succeeded", False, False, True), ("failed", False, False, True),
     ("cancelled", False, False, True)],
)  # fmt: skip
def test_status_predicates_take_a_rollout_or_a_status(
    status: str, queuing: bool, running: bool, finished: bool
) -> None:
    for value in (status, _rollout(status)):
        assert (is_queuing(value), is_running(value), is_finished(value)) == (queuing, running, finished)
    from agl.store.base import is_finished as from_base

    assert from_base(_rollout(status)) is finished


def test_client_addresses_follow_upstream() -> None:
    client = agl.LightningStoreClient("http://127.0.0.1:4747/")
    assert client.server_address_root == "http://127.0.0.1:4747"
    assert client.server_address == "http://127.0.0.1:4747/v1/agl"
    assert client.otlp_traces_endpoint() == "http://127.0.0.1:4747/v1/traces"


def test_memory_store_keeps_the_tracker_and_waits_for_one_rollout() -> None:
    import asyncio

    tracker = object()
    store = agl.InMemoryLightningStore(tracker=tracker)
    assert store.tracker is tracker

    async def scenario() -> None:
        rollout = await store.enqueue_rollout(input=1)
        assert await store.wait_for_rollout(rollout.rollout_id, timeout=0) is None
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        await store.update_attempt(rollout.rollout_id, attempted.attempt.attempt_id, status="succeeded")
        done = await store.wait_for_rollout(rollout.rollout_id, timeout=5)
        assert done is not None and done.status == "succeeded"

    asyncio.run(scenario())


def test_runner_worker_id_is_public() -> None:
    runner = agl.LitAgentRunner(agl.DummyTracer())
    assert runner.worker_id is None
    runner.init_worker(3, agl.InMemoryLightningStore())
    assert runner.worker_id == 3 and runner.get_worker_id() == "Worker-3"
    runner.teardown_worker(3)
    assert runner.worker_id is None


def test_span_from_attributes_fills_the_rest() -> None:
    span = agl.Span.from_attributes(attributes={"k": 1})
    assert (span.name, span.rollout_id, span.sequence_id, span.status.status_code) == (
        "agentlightning.virtual",
        "",
        0,
        "OK",
    )
    assert len(span.trace_id) == 32 and len(span.span_id) == 16 and span.parent is None
    child = agl.Span.from_attributes(attributes={}, name="n", trace_id=span.trace_id, parent_id=span.span_id)
    assert child.parent is not None and child.parent.span_id == span.span_id
    core = agl.SpanCoreFields(name="x", attributes={"a": 1})
    assert agl.Span.from_core_fields(core).start_time is not None


def test_span_parts_from_opentelemetry() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider()
    otel_span = provider.get_tracer("t").start_span("s", attributes={"a": [1, 2]})
    otel_span.add_event("e", {"x": 1})
    otel_span.set_status(Status(StatusCode.ERROR, "bad"))
    otel_span.end()
    assert agl.TraceStatus.from_opentelemetry(otel_span.status).status_code == "ERROR"
    context = agl.SpanContext.from_opentelemetry(otel_span.get_span_context())
    assert len(context.trace_id) == 32
    assert agl.Event.from_opentelemetry(otel_span.events[0]).attributes == {"x": 1}
    assert agl.OtelResource.from_opentelemetry(otel_span.resource).attributes["telemetry.sdk.language"] == "python"


async def test_with_active_tracer_context_activates_the_tracer_for_the_block() -> None:
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    class Recording(Tracer):
        @with_active_tracer_context
        @asynccontextmanager
        async def block(self, value: int) -> AsyncIterator[int]:
            yield value

    tracer = Recording()
    assert get_active_tracer() is None
    async with tracer.block(7) as value:
        assert value == 7 and get_active_tracer() is tracer
    assert get_active_tracer() is None


def test_encode_object_and_upstream_parameter_names() -> None:
    from agl.emitter.object import encode_object

    assert encode_object(3) == {"agentlightning.object.type": "int", "agentlightning.object.literal": "3"}
    assert encode_object({"a": 1})["agentlightning.object.json"] == '{"a": 1}'
    span = agl.emit_object(object=[1], propagate=False)
    assert agl.get_object_value(span) == [1]
    agl.emit_exception(exception=ValueError("x"), propagate=False)


def test_placeholders_raise_naming_what_to_use() -> None:
    with pytest.raises(NotImplementedError, match="GRPO"):
        agl.VERL()
    with pytest.raises(NotImplementedError, match="OtelTracer"):
        agl.AgentOpsTracer()
    with pytest.raises(AttributeError, match="LightningStoreClient"):
        agl.AgentLightningClient  # noqa: B018


def test_reward_module_is_deprecated_but_works() -> None:
    sys.modules.pop("agl.reward", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import agl.reward as reward_module
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert reward_module.emit_reward is agl.emit_reward


class _Config:
    def __init__(self, lr: float, steps: int = 3, name: str | None = None, flags: list[int] | None = None,
                 verbose: bool = False) -> None:  # fmt: skip
        self.args: dict[str, Any] = {"lr": lr, "steps": steps, "name": name, "flags": flags, "verbose": verbose}


def test_lightning_cli_builds_objects_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [
        "prog",
        "--_config.lr",
        "0.5",
        "--_config.name",
        "null",
        "--_config.flags",
        "1",
        "2",
        "--_config.verbose",
        "yes",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    built = agl.lightning_cli(_Config)
    assert built.args == {"lr": 0.5, "steps": 3, "name": None, "flags": [1, 2], "verbose": True}
    monkeypatch.setattr(sys, "argv", ["prog"])
    with pytest.raises(SystemExit):
        agl.lightning_cli(_Config)  # --_config.lr is required
    assert agl.lightning_cli() == ()


def test_utils() -> None:
    from agl.utils.id import generate_id
    from agl.utils.otel import filter_and_unflatten_attributes, filter_attributes, unflatten_attributes

    ids = {generate_id(12) for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 12 for i in ids)
    assert unflatten_attributes({"a.0.b": 1, "a.1.b": 2, "c": 3}) == {"a": [{"b": 1}, {"b": 2}], "c": 3}
    attrs = {"p": 0, "p.x": 1, "px": 2}
    assert filter_attributes(attrs, "p") == {"p": 0, "p.x": 1}
    with pytest.raises(ValueError, match="equals the prefix"):
        filter_and_unflatten_attributes(attrs, "p")
    assert filter_and_unflatten_attributes({"p.x": 1}, "p") == {"x": 1}


def test_strategy_registry_and_build_component_are_exported() -> None:
    from agl.trainer.registry import ExecutionStrategyRegistry

    strategy = agl.build_component("shm", expected_type=agl.ExecutionStrategy, spec_name="strategy",
                                   registry=ExecutionStrategyRegistry)  # fmt: skip
    assert isinstance(strategy, agl.SharedMemoryExecutionStrategy)
