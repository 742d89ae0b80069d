"""OTLP/HTTP ingest at /v1/traces, fed by the real OpenTelemetry OTLP exporter."""

from __future__ import annotations

import httpx
import orjson
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from agl.store.client import LightningStoreClient
from agl.store.server import LightningStoreServer


async def test_real_otlp_exporter_spans_land_in_the_store(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    attempted = await client.start_rollout({"q": 1})
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    resource = Resource.create(
        {"agentlightning.rollout_id": rid, "agentlightning.attempt_id": aid, "service.name": "t"}
    )
    provider = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=server.otlp_traces_endpoint(), timeout=10)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("agent", attributes={"k": "v", "n": 3, "xs": [1, 2]}) as parent:
            parent.add_event("thinking", {"step": 1})
            with tracer.start_as_current_span("llm") as child:
                child.set_status(Status(StatusCode.ERROR, "boom"))
        # A span tagged for another rollout id on the span itself wins over the resource.
        other = await client.start_rollout({"q": 2})
        with tracer.start_as_current_span(
            "elsewhere",
            attributes={
                "agentlightning.rollout_id": other.rollout_id,
                "agentlightning.attempt_id": other.attempt.attempt_id,
                "agentlightning.span_sequence_id": 7,
            },
        ):
            pass
    finally:
        provider.shutdown()

    spans = list(await client.query_spans(rid))
    assert [s.name for s in spans] == ["llm", "agent"]
    llm, agent = spans
    assert llm.parent_id == agent.span_id
    assert llm.status.status_code == "ERROR" and llm.status.description == "boom"
    assert agent.attributes == {"k": "v", "n": 3, "xs": [1, 2]}
    assert agent.events[0].name == "thinking" and agent.events[0].attributes == {"step": 1}
    assert agent.resource.attributes["service.name"] == "t"
    assert len(agent.trace_id) == 32 and len(agent.span_id) == 16
    assert agent.start_time is not None and 1e9 < agent.start_time < 1e10  # seconds
    assert sorted(s.sequence_id for s in spans) == [1, 2]
    moved = list(await client.query_spans(other.rollout_id))
    assert [(s.name, s.sequence_id) for s in moved] == [("elsewhere", 7)]


async def test_otlp_json_and_bad_requests(server: LightningStoreServer, client: LightningStoreClient) -> None:
    attempted = await client.start_rollout({"q": 1})
    payload = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "agentlightning.rollout_id", "value": {"stringValue": attempted.rollout_id}},
                        {"key": "agentlightning.attempt_id", "value": {"stringValue": attempted.attempt.attempt_id}},
                    ]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203331",
                                "name": "json-span",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000001000000000",
                                "attributes": [{"key": "a", "value": {"intValue": "5"}}],
                            },
                            {
                                "traceId": "0af7651916cd43dd8448eb211c80319c",
                                "spanId": "b7ad6b7169203332",
                                "name": "untagged",
                            },
                        ]
                    }
                ],
            },
            {"scopeSpans": [{"spans": [{"traceId": "01", "spanId": "02", "name": "no ids anywhere"}]}]},
        ]
    }
    url = f"{server.endpoint}/v1/traces"
    async with httpx.AsyncClient() as http:
        ok = await http.post(url, content=orjson.dumps(payload), headers={"Content-Type": "application/json"})
        assert ok.status_code == 200, ok.text
        wrong_type = await http.post(url, content=b"x", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 400
        assert b"Unsupported Content-Type 'text/plain'" in wrong_type.content
        garbage = await http.post(url, content=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"})
        assert garbage.status_code == 400
        assert b"Unable to parse OTLP traces payload" in garbage.content
    spans = list(await client.query_spans(attempted.rollout_id))
    assert [s.name for s in spans] == ["json-span", "untagged"]
    assert spans[0].trace_id == "0af7651916cd43dd8448eb211c80319c" and spans[0].span_id == "b7ad6b7169203331"
    assert spans[0].attributes == {"a": 5}
    assert spans[0].start_time == 1700000000.0
