"""docs/algorithms.md: the class-based algorithm shown on the page runs as written through the Trainer."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import agl

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def shown_algorithm() -> type[agl.Algorithm]:
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S) if "class " in b
    ]
    namespace: dict[str, Any] = {}
    exec(compile(block, str(DOC), "exec"), namespace)  # the page's own example, run as written
    cls = namespace["RetryHardTasks"]
    assert issubclass(cls, agl.Algorithm)
    return cls


attempts_seen: dict[int, int] = {}


@agl.rollout
def flaky(task: dict[str, int], prompt_template: agl.PromptTemplate) -> float:
    # Task k succeeds from its k-th try on (counting every attempt of every round); task 0 raises once first.
    index = task["index"]
    attempts_seen[index] = attempts_seen.get(index, 0) + 1
    if index == 0 and attempts_seen[index] == 1:
        raise RuntimeError("a transient failure: retried by the rollout's config")
    return 1.0 if attempts_seen[index] >= index else 0.0


def test_the_page_algorithm_reruns_unsolved_tasks_until_each_is_solved() -> None:
    algorithm = shown_algorithm()(rounds=4)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    trainer = agl.Trainer(
        algorithm=algorithm,
        strategy={"type": "shm", "n_runners": 1},
        initial_resources={"prompt": agl.PromptTemplate(template="solve {index}", engine="f-string")},
        port=port,
    )
    attempts_seen.clear()
    trainer.fit(flaky, [{"index": k} for k in range(4)])
    # Task 0 failed once and its second attempt solved it in round 1; task k ≥ 1 needs k tries, one per round.
    assert algorithm.solved_in_round == {0: 1, 1: 1, 2: 2, 3: 3}
    assert attempts_seen == {0: 2, 1: 1, 2: 2, 3: 3}
