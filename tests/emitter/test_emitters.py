"""emit_annotation, emit_message, emit_object, emit_exception and their readers."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agl.emitter import (
    emit_annotation,
    emit_exception,
    emit_message,
    emit_object,
    flatten_attributes,
    get_message_value,
    get_object_value,
)
from agl.tracer import DummyTracer
from agl.types.tracer import SpanCoreFields


def test_annotation_is_flattened() -> None:
    span = emit_annotation(
        {"agentlightning.tag.0": "math", "meta": {"difficulty": 3, "steps": [{"kind": "a"}, {"kind": "b"}]}},
        propagate=False,
    )
    assert span.name == "agentlightning.annotation"
    assert span.attributes == {
        "agentlightning.tag.0": "math",
        "meta.difficulty": 3,
        "meta.steps.0.kind": "a",
        "meta.steps.1.kind": "b",
    }


@pytest.mark.parametrize("bad", [[1, "a"], [[1, 2]], [{"a": 1}, 2], [object()]])
def test_annotation_rejects_mixed_or_non_primitive_lists(bad: list[Any]) -> None:
    with pytest.raises(ValueError, match="Attribute 'x'"):
        emit_annotation({"x": bad}, propagate=False)


def test_annotation_must_be_a_dict() -> None:
    with pytest.raises(TypeError, match="annotation must be a dict"):
        emit_annotation(["a"], propagate=False)  # type: ignore[arg-type]


def test_emitters_need_an_active_tracer() -> None:
    with pytest.raises(RuntimeError, match="No active tracer found"):
        emit_annotation({"a": 1})
    with pytest.raises(RuntimeError, match="No active tracer found"):
        emit_message("hi")
    with pytest.raises(RuntimeError, match="No active tracer found"):
        emit_object(1)
    with pytest.raises(RuntimeError, match="No active tracer found"):
        emit_exception(ValueError())


def test_message(active: DummyTracer, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[SpanCoreFields] = []
    original = active.create_span
    monkeypatch.setattr(active, "create_span", lambda *a, **k: recorded.append(original(*a, **k)) or recorded[-1])
    assert emit_message("hello", attributes={"step": 2}) is None
    (span,) = recorded
    assert span.name == "agentlightning.message"
    assert span.attributes == {"step": 2, "agentlightning.message.body": "hello"}
    assert get_message_value(span) == "hello"
    assert get_message_value(SpanCoreFields(name="other", attributes={"agentlightning.message.body": "x"})) is None


@pytest.mark.parametrize("bad", [1, None, b"bytes", ["a"]])
def test_message_must_be_a_str(bad: Any) -> None:
    with pytest.raises(TypeError, match="message must be a str"):
        emit_message(bad, propagate=False)


@pytest.mark.parametrize(
    ("obj", "type_name", "literal"),
    [
        ("text", "str", "text"),
        (42, "int", "42"),
        (2.5, "float", "2.5"),
        (True, "bool", "True"),
        (False, "bool", "False"),
    ],
)
def test_object_literals(obj: Any, type_name: str, literal: str) -> None:
    span = emit_object(obj, propagate=False)
    assert span.name == "agentlightning.object"
    assert span.attributes == {"agentlightning.object.type": type_name, "agentlightning.object.literal": literal}
    value = get_object_value(span)
    assert value == obj and type(value) is type(obj)


def test_object_bytes_are_base64() -> None:
    span = emit_object(b"\x00\xffabc", propagate=False)
    assert span.attributes["agentlightning.object.type"] == "bytes"
    assert span.attributes["agentlightning.object.literal"] == base64.b64encode(b"\x00\xffabc").decode()
    assert get_object_value(span) == b"\x00\xffabc"


@pytest.mark.parametrize(
    ("obj", "type_name"),
    [({"a": [1, {"b": None}]}, "builtins.dict"), ([1, "x"], "builtins.list"), (None, "builtins.NoneType")],
)
def test_object_json(obj: Any, type_name: str) -> None:
    span = emit_object(obj, attributes={"source": "test"}, propagate=False)
    assert span.attributes["agentlightning.object.type"] == type_name
    assert "agentlightning.object.json" in span.attributes
    assert span.attributes["source"] == "test"
    assert get_object_value(span) == obj


def test_object_not_json_serialisable() -> None:
    class Opaque:
        pass

    with pytest.raises(RuntimeError, match="Opaque is not JSON-serialisable"):
        emit_object(Opaque(), propagate=False)


def test_object_reader_on_other_spans() -> None:
    assert get_object_value(SpanCoreFields(name="x")) is None
    bad = SpanCoreFields(
        name="agentlightning.object",
        attributes={"agentlightning.object.type": "complex", "agentlightning.object.literal": "1j"},
    )
    with pytest.raises(ValueError, match="unknown literal type"):
        get_object_value(bad)


def test_exception(active: DummyTracer, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[SpanCoreFields] = []
    original = active.create_span
    monkeypatch.setattr(active, "create_span", lambda *a, **k: recorded.append(original(*a, **k)) or recorded[-1])
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        assert emit_exception(exc, attributes={"phase": "parse"}) is None
    (span,) = recorded
    assert span.name == "agentlightning.exception"
    assert span.status.status_code == "OK"
    assert span.attributes["exception.type"] == "ValueError"
    assert span.attributes["exception.message"] == "bad value"
    assert span.attributes["exception.escaped"] is True
    assert 'raise ValueError("bad value")' in span.attributes["exception.stacktrace"]
    assert span.attributes["phase"] == "parse"


def test_exception_must_be_an_exception() -> None:
    with pytest.raises(TypeError, match="exception must be an exception"):
        emit_exception("oops", propagate=False)  # type: ignore[arg-type]


def test_flatten_rules() -> None:
    assert flatten_attributes(
        {
            "ints": [1, 2],
            "mixed_numbers": [1, 2.5],
            "bools": [True, False],
            "empty": [],
            "empty_dict": {},
            "none": None,
            "tuple": ("a", "b"),
            "mixed": [1, "a"],
            "nested": {"list": [{"x": {"y": 1}}]},
            "a_set": {1},
        }
    ) == {
        "ints": [1, 2],
        "mixed_numbers": [1.0, 2.5],
        "bools": [True, False],
        "empty": [],
        "empty_dict": "{}",
        "none": "null",
        "tuple": ["a", "b"],
        "mixed": '[1, "a"]',
        "nested.list.0.x.y": 1,
        "a_set": '"{1}"',
    }
    assert flatten_attributes({"when": object})["when"].startswith('"<class')
    with pytest.raises(TypeError, match="attributes must be a dict"):
        flatten_attributes([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attributes must be a dict"):
        emit_message("x", attributes=[1], propagate=False)  # type: ignore[arg-type]
