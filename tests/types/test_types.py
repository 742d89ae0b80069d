"""The data model: sentinels, wire shapes, resource rules, span round-trips."""

from __future__ import annotations

import logging
import pickle

import pytest
from pydantic import ValidationError

import agl
from agl.types import (
    LLM,
    UNSET,
    Attempt,
    AttemptedRollout,
    PaginatedResult,
    PromptTemplate,
    ProxyLLM,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    Span,
    Unset,
)


def test_unset_is_a_falsy_singleton_that_survives_pickling() -> None:
    assert Unset() is UNSET
    assert repr(UNSET) == "UNSET"
    assert not UNSET
    assert pickle.loads(pickle.dumps(UNSET)) is UNSET


def test_rollout_config_defaults_and_bounds() -> None:
    config = RolloutConfig()
    assert (config.timeout_seconds, config.unresponsive_seconds, config.max_attempts, config.retry_condition) == (
        None,
        None,
        1,
        [],
    )
    with pytest.raises(ValidationError, match="max_attempts"):
        RolloutConfig(max_attempts=0)
    with pytest.raises(ValidationError, match="retry_condition"):
        RolloutConfig(retry_condition=["exploded"])  # type: ignore[list-item]


def test_rollout_rejects_unknown_status_and_mode() -> None:
    with pytest.raises(ValidationError, match="status"):
        Rollout(rollout_id="ro-1", start_time=1.0, status="done")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="mode"):
        Rollout(rollout_id="ro-1", start_time=1.0, mode="eval")  # type: ignore[arg-type]


def test_attempted_rollout_requires_its_own_attempt() -> None:
    attempt = Attempt(rollout_id="ro-2", attempt_id="at-1", sequence_id=1, start_time=1.0)
    with pytest.raises(ValidationError, match=r"attempt\.rollout_id"):
        AttemptedRollout(rollout_id="ro-1", start_time=1.0, attempt=attempt)
    ok = AttemptedRollout(rollout_id="ro-2", start_time=1.0, attempt=attempt)
    assert ok.model_dump(mode="json")["attempt"]["attempt_id"] == "at-1"


def test_wire_shape_of_rollout_has_every_field() -> None:
    data = Rollout(rollout_id="ro-1", start_time=1.0).model_dump(mode="json")
    assert set(data) == {
        "rollout_id", "input", "start_time", "end_time", "mode", "resources_id", "status", "config", "metadata",
    }  # fmt: skip
    assert data["config"] == {
        "timeout_seconds": None,
        "unresponsive_seconds": None,
        "max_attempts": 1,
        "retry_condition": [],
    }


def test_paginated_result_is_a_read_only_sequence() -> None:
    page = PaginatedResult[int](items=[3, 4, 5], limit=3, offset=2, total=10)
    assert len(page) == 3 and page[0] == 3 and page[-1] == 5 and page[1:] == [4, 5]
    assert list(page) == [3, 4, 5] and 4 in page
    assert page == [3, 4, 5]
    assert page.model_dump() == {"items": [3, 4, 5], "limit": 3, "offset": 2, "total": 10}


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://h:4000/v1/", "http://h:4000/rollout/R/attempt/A/v1"),
        ("http://h:4000/v1", "http://h:4000/rollout/R/attempt/A/v1"),
        ("http://h:4000", "http://h:4000/rollout/R/attempt/A"),
        ("http://h:4000/", "http://h:4000/rollout/R/attempt/A"),
    ],
)
def test_proxy_llm_url_rule(endpoint: str, expected: str) -> None:
    assert ProxyLLM(endpoint=endpoint, model="m").get_base_url("R", "A") == expected


def test_proxy_llm_raw_endpoint_and_argument_check() -> None:
    llm = ProxyLLM(endpoint="http://h:4000/v1", model="m")
    assert llm.get_base_url() == "http://h:4000/v1"
    with pytest.raises(ValueError, match="rollout_id and attempt_id must be strings"):
        llm.get_base_url("R", None)


def test_proxy_llm_warns_on_direct_endpoint_access(caplog: pytest.LogCaptureFixture) -> None:
    llm = ProxyLLM(endpoint="http://h:4000/v1", model="m")
    with caplog.at_level(logging.WARNING):
        _ = llm.endpoint
    assert "get_base_url" in caplog.text


def test_proxy_llm_with_attempted_rollout_gives_a_plain_llm() -> None:
    llm = ProxyLLM(endpoint="http://h:4000/v1", model="m", api_key="k", sampling_parameters={"temperature": 0.5})
    attempt = Attempt(rollout_id="R", attempt_id="A", sequence_id=1, start_time=1.0)
    plain = llm.with_attempted_rollout(AttemptedRollout(rollout_id="R", start_time=1.0, attempt=attempt))
    assert type(plain) is LLM
    assert plain.get_base_url() == "http://h:4000/rollout/R/attempt/A/v1"
    assert (plain.model, plain.api_key, plain.sampling_parameters) == ("m", "k", {"temperature": 0.5})


def test_prompt_template_formats_f_strings_only() -> None:
    assert PromptTemplate(template="Hi {name}", engine="f-string").format(name="Ada") == "Hi Ada"
    with pytest.raises(NotImplementedError, match="f-string"):
        PromptTemplate(template="Hi {{ name }}", engine="jinja").format(name="Ada")


def test_resources_are_discriminated_by_resource_type() -> None:
    update = ResourcesUpdate.model_validate(
        {
            "resources_id": "rs-1",
            "create_time": 1.0,
            "update_time": 2.0,
            "version": 3,
            "resources": {
                "a": {"resource_type": "llm", "endpoint": "http://x/v1", "model": "m"},
                "b": {"resource_type": "proxy_llm", "endpoint": "http://x/v1", "model": "m"},
                "c": {"resource_type": "prompt_template", "template": "t", "engine": "f-string"},
            },
        }
    )
    assert [type(r).__name__ for r in update.resources.values()] == ["LLM", "ProxyLLM", "PromptTemplate"]
    with pytest.raises(ValidationError, match="resource_type"):
        ResourcesUpdate.model_validate(
            {"resources_id": "x", "create_time": 1, "update_time": 1, "resources": {"a": {"resource_type": "gpu"}}}
        )


def test_span_keeps_extra_keys_through_a_json_round_trip() -> None:
    span = Span.model_validate(
        {
            "rollout_id": "ro-1",
            "attempt_id": "at-1",
            "sequence_id": 1,
            "trace_id": "a" * 32,
            "span_id": "b" * 16,
            "name": "llm",
            "custom_field": {"nested": [1, 2]},
            "status": {"status_code": "OK", "extra_status": 1},
        }
    )
    again = Span.model_validate_json(span.model_dump_json())
    assert again.model_dump() == span.model_dump()
    assert again.model_dump()["custom_field"] == {"nested": [1, 2]}
    assert again.status.model_dump()["extra_status"] == 1


def test_span_from_a_real_opentelemetry_span() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent"):
        with tracer.start_as_current_span("child", attributes={"k": "v", "n": [1, 2]}) as child:
            child.add_event("ev", {"x": 1})
    span = Span.from_opentelemetry(child, "ro-1", "at-1", 7)  # type: ignore[arg-type]
    assert (span.rollout_id, span.attempt_id, span.sequence_id, span.name) == ("ro-1", "at-1", 7, "child")
    assert len(span.trace_id) == 32 and len(span.span_id) == 16 and span.parent_id is not None
    assert span.attributes == {"k": "v", "n": [1, 2]}
    assert span.events[0].name == "ev" and span.events[0].attributes == {"x": 1}
    assert span.resource.attributes["service.name"] == "svc"
    assert span.start_time is not None and span.end_time is not None and span.end_time >= span.start_time


def test_public_names_are_importable_from_agl() -> None:
    for name in [
        "Rollout", "AttemptedRollout", "Attempt", "RolloutConfig", "EnqueueRolloutRequest", "Span", "SpanCoreFields",
        "LLM", "ProxyLLM", "PromptTemplate", "NamedResources", "ResourcesUpdate", "Worker", "WorkerStatus",
        "PaginatedResult", "FilterOptions", "FilterField", "SortOptions", "Triplet", "LightningStore",
        "InMemoryLightningStore", "LightningStoreThreaded", "LightningStoreCapabilities", "LightningStoreStatistics",
        "UNSET",
    ]:  # fmt: skip
        assert getattr(agl, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agl.Nope  # noqa: B018
