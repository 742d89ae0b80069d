"""A minimal AGL training run: a rule-based agent, the Baseline algorithm, 4 runner processes (`cs` strategy).

The agent answers arithmetic questions using a prompt template it receives as a resource, and reports a reward
of 1 for a correct answer. Everything runs offline on this machine:

    python examples/baseline_cs/train.py                 # 4 runners, 24 tasks
    python examples/baseline_cs/train.py --runners 2 --tasks 8
"""

from __future__ import annotations

import argparse
import random
from typing import Any

import agl


@agl.prompt_rollout
def calculator(task: dict[str, Any], prompt_template: agl.PromptTemplate) -> float:
    """Fill the prompt, 'answer' it with a rule, and score the answer."""
    prompt = prompt_template.format(a=task["a"], b=task["b"])
    answer = sum(int(token) for token in prompt.split() if token.isdigit())
    agl.emit_annotation({"prompt": prompt, "answer": answer})
    return 1.0 if answer == task["a"] + task["b"] else 0.0


def make_tasks(n: int, seed: int = 0) -> list[dict[str, int]]:
    rng = random.Random(seed)
    return [{"a": rng.randint(1, 50), "b": rng.randint(1, 50)} for _ in range(n)]


def main(argv: list[str] | None = None) -> list[agl.Rollout]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--port", type=int, default=0, help="store server port (0: any free port)")
    args = parser.parse_args(argv)

    agl.setup_logging("WARNING")
    tasks = make_tasks(args.tasks)
    algorithm = agl.Baseline(polling_interval=0.2, max_queue_length=8, span_verbosity="none")
    trainer = agl.Trainer(
        algorithm=algorithm,
        n_runners=args.runners,
        strategy={"type": "cs", "server_port": args.port, "graceful_timeout": 5.0},
        initial_resources={"prompt": agl.PromptTemplate(template="What is {a} + {b} ?", engine="f-string")},
    )
    trainer.fit(calculator, tasks[: len(tasks) // 2], val_dataset=tasks[len(tasks) // 2 :])

    rewards = [r for r in algorithm.results if r.status == "succeeded"]
    print(f"{len(rewards)}/{len(tasks)} rollouts succeeded across {args.runners} runners")
    return algorithm.results


if __name__ == "__main__":
    main()
