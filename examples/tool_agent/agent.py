"""A multi-turn agent that answers arithmetic word problems with a calculator tool, over the OpenAI tools API.

One episode: the model sees the problem and the `calculator` tool; when it calls the tool (`tool_calls` in the
answer) the agent evaluates the expression and sends the result back as a `role: tool` message; the model then
answers. The reward is 1 when the last number in the final answer is the right result, else 0 — whatever the
route (a model that does the sum in its head and gets it right also scores 1).
"""

from __future__ import annotations

import ast
import json
import operator
import re
from typing import Any

import agl

__all__ = ["CALCULATOR_TOOL", "SYSTEM_PROMPT", "calculate", "first_messages", "score", "tool_agent"]

SYSTEM_PROMPT = "You are a math assistant. Use the calculator tool to compute, then reply with only the number."

CALCULATOR_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example 12 * 3"}},
            "required": ["expression"],
        },
    },
}

# One worked episode shown before every problem: a 135M model imitates a format far better than it follows
# instructions, and without it the model almost never calls the tool (so GRPO would have nothing to reinforce).
_EXAMPLE: list[dict[str, Any]] = [
    {"role": "user", "content": "A farm has 14 rows of 36 trees. How many trees are there?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_example",
                "type": "function",
                "function": {"name": "calculator", "arguments": json.dumps({"expression": "14 * 36"})},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_example", "content": "504"},
    {"role": "assistant", "content": "504"},
]

MAX_TURNS = 3
"""LLM calls per episode at most (a model that keeps calling the tool is stopped and scored on what it said)."""

_OPS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (+ - * / and parentheses on numbers), or an error message."""
    try:
        tree = ast.parse(expression.replace("x", "*").replace("×", "*"), mode="eval")
        value = _evaluate(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as exc:
        return f"error: {exc}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


def _evaluate(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        if abs(node.value) > 10**12:
            raise ValueError("number too large")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def first_messages(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation the agent opens with: instructions, the worked example, the problem."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, *_EXAMPLE, {"role": "user", "content": task["question"]}]


def score(answer: str | None, task: dict[str, Any]) -> float:
    """1.0 when the last number in the final answer equals the task's answer, else 0.0."""
    numbers = _NUMBER.findall((answer or "").replace(",", ""))
    return 1.0 if numbers and float(numbers[-1]) == float(task["answer"]) else 0.0


_clients: dict[str, Any] = {}


def _client(base_url: str) -> Any:
    # One connection pool per runner process; each attempt's proxy URL is given per request.
    from openai import AsyncOpenAI

    client = _clients.get("default")
    if client is None:
        # A long timeout: on a shared CPU one batch of episodes can take minutes.
        client = _clients["default"] = AsyncOpenAI(base_url=base_url, api_key="agl-local", max_retries=0, timeout=1800)
    return client.with_options(base_url=base_url)


async def run_episode(task: dict[str, Any], llm: agl.LLM) -> tuple[float, list[dict[str, Any]]]:
    """Play one episode; returns the reward and the whole conversation."""
    params = llm.sampling_parameters
    client = _client(llm.get_base_url())
    messages = first_messages(task)
    answer: str | None = None
    for _ in range(MAX_TURNS):
        response = await client.chat.completions.create(
            model=llm.model,
            messages=messages,
            tools=[CALCULATOR_TOOL],
            temperature=float(params.get("temperature", 0.7)),
            max_tokens=int(params.get("max_tokens", 40)),
        )
        message = response.choices[0].message
        answer = message.content
        calls = message.tool_calls or []
        if not calls:
            messages.append({"role": "assistant", "content": answer})
            break
        messages.append(message.model_dump(include={"role", "content", "tool_calls"}))
        for call in calls:
            try:
                expression = str(json.loads(call.function.arguments).get("expression", ""))
            except (ValueError, AttributeError):
                expression = ""
            messages.append({"role": "tool", "tool_call_id": call.id, "content": calculate(expression)})
    return score(answer, task), messages


@agl.llm_rollout
async def tool_agent(task: dict[str, Any], llm: agl.LLM) -> float:
    """Solve one word problem with the calculator tool; the reward checks the final answer."""
    reward, _ = await run_episode(task, llm)
    return reward
