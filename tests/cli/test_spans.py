"""`agl spans export` against a real store server: JSON lines, and OTLP/JSON parsed back with opentelemetry-proto."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from agl.cli import main
from agl.store.http.otlp import convert_request, decode_request
from agl.types import Span
from tests.cli.conftest import Filled


def export(capsys: pytest.CaptureFixture[str], filled: Filled, *argv: str) -> tuple[int, str, str]:
    code = main(["spans", "export", *argv, "--store", filled.url])
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_is_one_stored_span_per_line(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = export(capsys, filled, filled.succeeded, "--format", "jsonl")
    assert code == 0, err
    lines = out.splitlines()
    assert [Span.model_validate_json(line) for line in lines] == filled.spans[filled.succeeded]


def test_jsonl_of_all_attempts_or_only_the_latest(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = export(capsys, filled, filled.failed)
    assert code == 0
    assert [Span.model_validate_json(line) for line in out.splitlines()] == filled.spans[filled.failed]
    code, out, _ = export(capsys, filled, filled.failed, "--attempt", "latest")
    assert code == 0
    assert [Span.model_validate_json(line) for line in out.splitlines()] == filled.spans[filled.failed][1:]


def _hex_ids_as_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON parser reads bytes fields as base64."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode()
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str)
            else _hex_ids_as_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids_as_base64(item) for item in node]
    return node


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return None if kind is None else getattr(any_value, kind)


def test_otlp_parses_back_into_an_export_trace_service_request(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = export(capsys, filled, filled.succeeded, "--format", "otlp")
    assert code == 0, err
    document = json.loads(out)
    span_json = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span_json["traceId"] == "0af7651916cd43dd8448eb211c80319c"  # hex ids, as OTLP/JSON requires
    assert isinstance(span_json["startTimeUnixNano"], str)  # 64-bit integers as strings
    request = json_format.Parse(json.dumps(_hex_ids_as_base64(document)), ExportTraceServiceRequest())

    (resource_spans,) = request.resource_spans
    resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
    originals = filled.spans[filled.succeeded]
    assert resource == {
        "agentlightning.rollout_id": filled.succeeded,
        "agentlightning.attempt_id": originals[0].attempt_id,
    }
    parsed = [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert len(parsed) == len(originals)
    for got, want in zip(parsed, originals, strict=True):
        assert got.trace_id.hex() == want.trace_id and got.span_id.hex() == want.span_id
        assert (got.parent_span_id.hex() or None) == want.parent_id
        assert got.name == want.name
        assert want.start_time is not None and want.end_time is not None
        assert abs(got.start_time_unix_nano - want.start_time * 1e9) < 1000
        assert abs(got.end_time_unix_nano - want.end_time * 1e9) < 1000
        assert got.trace_state == "vendor=x1"
        attributes = {kv.key: _value(kv.value) for kv in got.attributes}
        assert attributes == {**want.attributes, "agentlightning.span_sequence_id": want.sequence_id}
    llm = parsed[1].attributes
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in llm}
    assert kinds["gen_ai.usage.prompt_tokens"] == "int_value" and kinds["temperature"] == "double_value"
    assert kinds["flag"] == "bool_value" and kinds["nested"] == "kvlist_value"
    assert kinds["prompt_token_ids"] == "array_value"


def test_otlp_of_an_error_span_keeps_status_and_exception_event(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = export(capsys, filled, filled.failed, "--format", "otlp")
    assert code == 0
    request = json_format.Parse(json.dumps(_hex_ids_as_base64(json.loads(out))), ExportTraceServiceRequest())
    assert len(request.resource_spans) == 2  # one per attempt
    for resource_spans, want in zip(request.resource_spans, filled.spans[filled.failed], strict=True):
        (span,) = resource_spans.scope_spans[0].spans
        assert span.status.code == 2 and span.status.message == "ZeroDivisionError: division by zero"
        (event,) = span.events
        assert event.name == "exception"
        assert {kv.key: _value(kv.value) for kv in event.attributes} == want.events[0].attributes
        assert want.events[0].timestamp is not None
        assert abs(event.time_unix_nano - want.events[0].timestamp * 1e9) < 1000


def test_otlp_export_is_what_the_store_ingests_back(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    """The store's own OTLP/JSON ingest reads the export into the same spans (ids, names, times, attributes)."""
    code, out, _ = export(capsys, filled, filled.succeeded, "--format", "otlp")
    assert code == 0
    converted = convert_request(decode_request(out.encode(), is_json=True))
    originals = filled.spans[filled.succeeded]
    assert [seq for _, seq in converted] == [s.sequence_id for s in originals]
    for (fields, seq), want in zip(converted, originals, strict=True):
        span = Span(sequence_id=seq, **fields)
        assert (span.rollout_id, span.attempt_id, span.trace_id, span.span_id, span.parent_id, span.name) == (
            want.rollout_id,
            want.attempt_id,
            want.trace_id,
            want.span_id,
            want.parent_id,
            want.name,
        )
        attributes = dict(span.attributes)
        assert attributes.pop("agentlightning.span_sequence_id") == want.sequence_id
        assert attributes == want.attributes
        assert span.start_time == pytest.approx(want.start_time, abs=1e-6)


def test_output_file_with_a_json_summary(filled: Filled, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "spans.jsonl"
    code, out, _ = export(capsys, filled, filled.succeeded, "--output", str(target), "--json")
    assert code == 0
    assert json.loads(out) == {"rollout_id": filled.succeeded, "format": "jsonl", "spans": 4, "output": str(target)}
    assert [Span.model_validate_json(line) for line in target.read_text().splitlines()] == filled.spans[
        filled.succeeded
    ]
    assert not (tmp_path / "spans.jsonl.part").exists()
    code, out, err = export(capsys, filled, filled.succeeded, "-o", str(tmp_path / "t.json"), "--format", "otlp")
    assert code == 0 and out == "" and err == f"wrote 4 spans of {filled.succeeded} to {tmp_path / 't.json'} (otlp)\n"
    assert json.loads((tmp_path / "t.json").read_text())["resourceSpans"]


def test_unknown_rollout_exits_1_and_writes_nothing(
    filled: Filled, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "none.jsonl"
    code, out, err = export(capsys, filled, "ro-nope", "--output", str(target))
    assert code == 1 and out == "" and "no rollout 'ro-nope'" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_clear_error(filled: Filled, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = export(capsys, filled, filled.succeeded, "--output", str(tmp_path / "missing-dir" / "x.jsonl"))
    assert code == 1 and err.startswith(f"agl: cannot write {tmp_path / 'missing-dir' / 'x.jsonl'}: ")
