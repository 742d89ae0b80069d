"""The demo's task: add two small numbers, with a reward anyone can verify.

Why this task: SmolLM2-135M-Instruct gets it right only some of the time before training (about 30 % with greedy
decoding for operands 1-20, measured; it mostly answers "The answer is N." with a wrong N), so there is room to
learn and enough right answers to learn from; the answer is checked exactly without a judge model; and a reply
needs only a few tokens, so a GRPO step costs seconds on a CPU.
"""

from __future__ import annotations

import random
import re
from typing import Any

from agl.litagent.decorator import llm_rollout
from agl.types.resources import LLM

__all__ = ["SYSTEM_PROMPT", "arithmetic_agent", "make_tasks", "messages_for", "score"]

SYSTEM_PROMPT = "You are a calculator. Reply with only the number."

_INT = re.compile(r"-?\d+")


def make_tasks(n: int, seed: int, low: int = 1, high: int = 20) -> list[dict[str, int]]:
    """`n` addition problems with operands in [low, high]."""
    rng = random.Random(seed)
    return [{"a": rng.randint(low, high), "b": rng.randint(low, high)} for _ in range(n)]


def messages_for(task: dict[str, int]) -> list[dict[str, str]]:
    """The chat messages for a task."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"{task['a']} + {task['b']} ="}]


def score(reply: str, task: dict[str, int]) -> float:
    """1.0 if the last integer on the reply's first line is the sum, else 0.0."""
    first_line = reply.strip().split("\n", 1)[0] if reply.strip() else ""
    numbers = _INT.findall(first_line)
    return 1.0 if numbers and int(numbers[-1]) == task["a"] + task["b"] else 0.0


_clients: dict[str, Any] = {}


def _client(base_url: str) -> Any:
    # One HTTP connection pool per runner process; the per-attempt base URL is given per request.
    from openai import AsyncOpenAI

    client = _clients.get("default")
    if client is None:
        client = _clients["default"] = AsyncOpenAI(base_url=base_url, api_key="agl-local", max_retries=0)
    return client.with_options(base_url=base_url)


@llm_rollout
async def arithmetic_agent(task: dict[str, int], llm: LLM) -> float:
    """Ask the model through the OpenAI client and score its reply."""
    params = llm.sampling_parameters
    response = await _client(llm.get_base_url()).chat.completions.create(
        model=llm.model,
        messages=messages_for(task),
        temperature=float(params.get("temperature", 0.7)),
        max_tokens=int(params.get("max_tokens", 12)),
    )
    return score(response.choices[0].message.content or "", task)
