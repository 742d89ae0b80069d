"""What APO asks its critic model: a critique of a prompt from rollouts (the textual gradient), then an edit.

Also the checks on what comes back: the edited template is read from `<prompt>...</prompt>` and must keep the
parent's placeholders, so the agent can still fill it in.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RolloutOutcome",
    "critique_messages",
    "edit_messages",
    "extract_template",
    "placeholders",
]

_TAGGED = re.compile(r"<prompt>(.*?)(?:</prompt>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\n?|\n?```$")
_DOUBLE_BRACES = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_TEXT_LIMIT = 600


@dataclass
class RolloutOutcome:
    """What one rollout with a candidate prompt gave: its task, status, reward and recorded conversations."""

    rollout_id: str
    task: Any
    status: str
    reward: float | None
    conversations: list[list[dict[str, Any]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _clip(text: str, limit: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def _describe(outcome: RolloutOutcome, index: int) -> str:
    try:
        task = json.dumps(outcome.task, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        task = repr(outcome.task)
    reward = "none (failed or gave no reward)" if outcome.reward is None else f"{outcome.reward:g}"
    lines = [f"### Example {index}", f"Task: {_clip(task)}", f"Status: {outcome.status}; reward: {reward}"]
    for conversation in outcome.conversations[-2:]:
        for message in conversation:
            content = message.get("content")
            if isinstance(content, str) and message.get("role") != "system":
                lines.append(f"{message.get('role')}: {_clip(content)}")
    lines += [f"note: {_clip(m)}" for m in outcome.messages[-3:]]
    return "\n".join(lines)


def critique_messages(template: str, outcomes: Sequence[RolloutOutcome]) -> list[dict[str, str]]:
    """The chat that asks the critic what in `template` made the agent score as it did on `outcomes`."""
    examples = "\n\n".join(_describe(o, i + 1) for i, o in enumerate(outcomes))
    return [
        {
            "role": "system",
            "content": "You review the instructions given to an AI agent and find what keeps it from scoring well.",
        },
        {
            "role": "user",
            "content": (
                "An agent was run with this prompt template:\n<prompt>\n"
                f"{template}\n</prompt>\n\n"
                "Some of its runs, each with its reward (higher is better):\n\n"
                f"{examples}\n\n"
                "Which shortcomings of the prompt explain the low rewards, and what exactly should change in it? "
                "Answer in a few short points."
            ),
        },
    ]


def edit_messages(template: str, critique: str, required: Sequence[str]) -> list[dict[str, str]]:
    """The chat that asks the editor for a new template acting on `critique`, keeping `required` placeholders."""
    keep = (
        "Keep these placeholders exactly as written, each at least once: " + ", ".join(required) + ". "
        if required
        else "Do not add placeholders in braces. "
    )
    return [
        {"role": "system", "content": "You rewrite the instructions given to an AI agent."},
        {
            "role": "user",
            "content": (
                f"The current prompt template:\n<prompt>\n{template}\n</prompt>\n\n"
                f"A reviewer's feedback on it:\n{critique.strip()}\n\n"
                "Write an improved prompt template that acts on the feedback. "
                f"{keep}Reply with the new template only, between <prompt> and </prompt>."
            ),
        },
    ]


def extract_template(reply: str) -> str:
    """The template in the editor's reply: the text inside `<prompt>` tags (or the whole reply), trimmed."""
    match = _TAGGED.search(reply)
    text = (match.group(1) if match else reply).strip()
    text = _FENCE.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def placeholders(template: str, engine: str) -> frozenset[str] | None:
    """The placeholders of `template` as written (`{a}` for f-string, `{{ a }}` otherwise); None if it is malformed."""
    if engine != "f-string":
        return frozenset("{{ " + name + " }}" for name in _DOUBLE_BRACES.findall(template))
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:  # an unmatched brace: str.format would fail on it
        return None
    if any(name == "" or name.isdigit() for name in fields):
        return None  # positional fields cannot be filled by name
    return frozenset("{" + name + "}" for name in fields)
