"""Quickstart: train your own agent with AGL in one file.

The agent answers addition problems through any OpenAI-compatible endpoint, with a system prompt it receives as a
resource; the algorithm tries several system prompts on the training set, keeps the one with the highest mean
reward, and scores it on held-out problems. Offline by default (AGL's embedded SmolLM2-135M model server):

    python examples/quickstart/train.py
    OPENAI_BASE_URL=https://… OPENAI_API_KEY=… MODEL=… python examples/quickstart/train.py   # a hosted endpoint
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
from typing import Any

from openai import AsyncOpenAI

import agl

CANDIDATES = [
    "Answer the question.",
    "You are a calculator. Reply with only the number.",
    "You add numbers. Reply with the sum as digits and nothing else.",
]


# 1. The agent: any code that takes a task and resources and returns a reward (or emits one with agl.emit_reward).
@agl.rollout
async def adder(task: dict[str, int], llm: agl.LLM, prompt_template: agl.PromptTemplate) -> float:
    client = AsyncOpenAI(base_url=llm.get_base_url(), api_key=os.environ.get("OPENAI_API_KEY", "local"))
    reply = await client.chat.completions.create(
        model=llm.model,
        messages=[
            {"role": "system", "content": prompt_template.format()},
            {"role": "user", "content": f"{task['a']} + {task['b']} ="},
        ],
        temperature=0.0,
        max_tokens=12,
    )
    numbers = re.findall(r"-?\d+", reply.choices[0].message.content or "")
    return 1.0 if numbers and int(numbers[-1]) == task["a"] + task["b"] else 0.0


# 2. The algorithm: reads rewards from the store and publishes better resources.
async def mean_reward(store: agl.LightningStore, tasks: list[Any], resources_id: str) -> float:
    rollouts = [await store.enqueue_rollout(task, mode="train", resources_id=resources_id) for task in tasks]
    await store.wait_for_rollouts(rollout_ids=[r.rollout_id for r in rollouts], timeout=600)
    rewards = [agl.find_final_reward(await store.query_spans(r.rollout_id)) for r in rollouts]
    return statistics.fmean(reward or 0.0 for reward in rewards)


@agl.algo
async def pick_best_prompt(
    store: agl.LightningStore, initial_resources: agl.NamedResources, train_dataset: Any, val_dataset: Any
) -> None:
    llm = initial_resources["llm"]
    scores: dict[str, float] = {}
    for text in CANDIDATES:
        update = await store.add_resources({"llm": llm, "prompt": agl.PromptTemplate(template=text, engine="f-string")})
        scores[text] = await mean_reward(store, list(train_dataset), update.resources_id)
        print(f"train reward {scores[text]:.2f}  {text!r}  (resources {update.resources_id})")
    best = max(scores, key=lambda text: scores[text])
    final = await store.add_resources({"llm": llm, "prompt": agl.PromptTemplate(template=best, engine="f-string")})
    held_out = await mean_reward(store, list(val_dataset), final.resources_id)
    print(f"best prompt {best!r}: held-out reward {held_out:.2f}")


def tasks(n: int, seed: int) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [{"a": rng.randint(1, 20), "b": rng.randint(1, 20)} for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=24, help="training problems (held-out: half as many)")
    parser.add_argument("--runners", type=int, default=2)
    args = parser.parse_args(argv)
    agl.setup_logging("WARNING")

    # 3. Fit: the trainer serves the store, starts the runners and runs the algorithm until it returns.
    def fit(llm: agl.LLM) -> None:
        trainer = agl.Trainer(algorithm=pick_best_prompt, n_runners=args.runners, initial_resources={"llm": llm})
        trainer.fit(adder, tasks(args.tasks, seed=0), val_dataset=tasks(args.tasks // 2, seed=1))

    if "OPENAI_BASE_URL" in os.environ:
        fit(agl.LLM(endpoint=os.environ["OPENAI_BASE_URL"], model=os.environ.get("MODEL", "gpt-4o-mini")))
        return
    from agl.llm.model import load_model
    from agl.llm.server import ModelServer

    model, tokenizer = load_model()  # the embedded SmolLM2-135M-Instruct: no download
    with ModelServer(model, tokenizer, host="127.0.0.1", port=0) as server:
        fit(server.as_resource())


if __name__ == "__main__":
    main()
