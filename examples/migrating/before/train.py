"""Teach a math agent to use its calculator by editing its system prompt.

The agent answers arithmetic questions with an OpenAI-compatible chat model; it can call a `calculator` tool and
is rewarded 1.0 for a right answer. `PromptEditor`, the algorithm, runs the training tasks with the current
system prompt, reads every rollout's reward and spans back from the store, and when rollouts failed without ever
calling the tool it publishes an edited prompt that asks for the tool. It then validates the best prompt.

The model is `toy_llm.py`, a deterministic stand-in started by this script, so the run needs no network:

    python train.py                        # 2 runner processes
    python train.py --output result.json   # also write the outcome as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import statistics
from typing import Any

import agentlightning as agl
from openai import AsyncOpenAI
from toy_llm import MODEL_NAME, ToyLLMServer

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with two integers and one of + - *.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
TOOL_HINT = "Use the calculator tool for every computation."


def calculator(expression: str) -> int:
    """The tool: evaluate `a op b` exactly."""
    match = re.fullmatch(r"\s*(-?\d+)\s*([+*-])\s*(-?\d+)\s*", expression)
    if match is None:
        raise ValueError(f"cannot evaluate {expression!r}")
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return a + b if op == "+" else a - b if op == "-" else a * b


@agl.rollout
async def math_agent(task: dict[str, Any], llm: agl.LLM, prompt_template: agl.PromptTemplate) -> float:
    """Ask the model, run the tool calls it makes; the reward (returned) is 1.0 for a right final answer."""
    client = AsyncOpenAI(base_url=llm.endpoint, api_key="offline", max_retries=0)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": prompt_template.format(subject="arithmetic")},
        {"role": "user", "content": task["question"]},
    ]
    response = await client.chat.completions.create(
        model=llm.model, messages=messages, tools=[CALCULATOR_TOOL], **llm.sampling_parameters
    )
    message = response.choices[0].message
    if message.tool_calls:
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            expression = json.loads(call.function.arguments)["expression"]
            with agl.operation(name="calculator", expression=expression) as op:
                result = calculator(expression)
                op.set_output(result)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(result)})
        response = await client.chat.completions.create(
            model=llm.model, messages=messages, tools=[CALCULATOR_TOOL], **llm.sampling_parameters
        )
        message = response.choices[0].message
    numbers = re.findall(r"-?\d+", message.content or "")
    answer = int(numbers[-1]) if numbers else None
    return 1.0 if answer == task["answer"] else 0.0


class PromptEditor(agl.Algorithm):
    """Runs the tasks, reads rewards and tool spans from the store, and publishes an edited system prompt."""

    def __init__(self, max_rounds: int = 3, timeout: float = 120.0) -> None:
        super().__init__()
        self.max_rounds = max_rounds
        self.timeout = timeout
        self.history: list[dict[str, Any]] = []
        self.published: list[str] = []

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        initial = self.get_initial_resources() or {}
        llm, prompt = initial["main_llm"], initial["system_prompt"]
        best: tuple[float, str] | None = None
        for round_index in range(self.max_rounds):
            published = await store.add_resources({"main_llm": llm, "system_prompt": prompt})
            outcome = await self.evaluate(list(train_dataset or []), "train", published.resources_id)
            self.history.append({"round": round_index, "prompt": prompt.template, **outcome})
            if best is None or outcome["mean_reward"] > best[0]:
                best = (outcome["mean_reward"], published.resources_id)
            if outcome["mean_reward"] == 1.0 or TOOL_HINT in prompt.template:
                break
            if outcome["failed_without_tool"]:
                prompt = agl.PromptTemplate(template=f"{prompt.template} {TOOL_HINT}", engine="f-string")
        assert best is not None
        if val_dataset:
            outcome = await self.evaluate(list(val_dataset), "val", best[1])
            self.history.append({"round": "val", "resources_id": best[1], **outcome})
        self.published = [update.resources_id for update in await store.query_resources()]

    async def evaluate(self, tasks: list[dict[str, Any]], mode: str, resources_id: str) -> dict[str, Any]:
        """Run `tasks` with the resources `resources_id`; their statuses, rewards and tool use, read from the store."""
        store = self.get_store()
        rollouts = [await store.enqueue_rollout(task, mode=mode, resources_id=resources_id) for task in tasks]
        ids = [rollout.rollout_id for rollout in rollouts]
        finished: dict[str, agl.Rollout] = {}
        deadline = asyncio.get_running_loop().time() + self.timeout
        while len(finished) < len(ids):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(ids) - len(finished)} rollouts did not finish in {self.timeout} s")
            waiting = [i for i in ids if i not in finished]
            for rollout in await store.wait_for_rollouts(rollout_ids=waiting, timeout=0.5):
                finished[rollout.rollout_id] = rollout
        rewards: list[float | None] = []
        tool_spans = failed_without_tool = 0
        for rollout_id in ids:
            spans = await store.query_spans(rollout_id, "latest")
            reward = agl.find_final_reward(spans)
            used_tool = any(
                span.name == "agentlightning.operation"
                and span.attributes.get("agentlightning.operation.name") == "calculator"
                for span in spans
            )
            rewards.append(reward)
            tool_spans += used_tool
            if reward is not None and reward < 1.0 and not used_tool:
                failed_without_tool += 1
        return {
            "statuses": [finished[i].status for i in ids],
            "rewards": rewards,
            "mean_reward": statistics.fmean(r or 0.0 for r in rewards),
            "rollouts_with_tool_spans": tool_spans,
            "failed_without_tool": failed_without_tool,
        }


def make_tasks(pairs: list[tuple[int, str, int]]) -> list[dict[str, Any]]:
    return [{"question": f"What is {a} {op} {b}?", "answer": calculator(f"{a} {op} {b}")} for a, op, b in pairs]


TRAIN = make_tasks([(3, "*", 4), (17, "*", 23), (5, "+", 8), (48, "*", 12), (91, "-", 37), (6, "*", 7)])
VAL = make_tasks([(2, "+", 9), (34, "*", 27), (75, "-", 18), (8, "*", 9)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--output", help="write the outcome to this JSON file")
    args = parser.parse_args(argv)

    with ToyLLMServer() as model:
        algorithm = PromptEditor()
        trainer = agl.Trainer(
            algorithm=algorithm,
            n_runners=args.runners,
            tracer=agl.OtelTracer(),
            strategy={"type": "cs", "server_port": free_port()},
            initial_resources={
                "main_llm": agl.LLM(endpoint=model.endpoint, model=MODEL_NAME, sampling_parameters={"temperature": 0}),
                "system_prompt": agl.PromptTemplate(template="You are good at {subject}.", engine="f-string"),
            },
        )
        trainer.fit(math_agent, train_dataset=TRAIN, val_dataset=VAL)

    for entry in algorithm.history:
        print(f"round {entry['round']}: mean reward {entry['mean_reward']:.2f}, statuses {set(entry['statuses'])}")
    print(f"{len(algorithm.published)} resource versions published")
    result = {"history": algorithm.history, "published": algorithm.published}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
