"""Optimise an agent's system prompt with `agl.APO`, all on this machine.

The agent answers arithmetic questions (tasks.jsonl: 24 for training, up to 16 for validation) with SmolLM2-135M served
by AGL's local model server; its reward is 1 for the right number. APO searches over the system prompt: it runs
the agent, asks a critic model (by default the same local server) what in the prompt explains the misses, asks
for an edited prompt, and keeps the edits that score best on the validation tasks.

    python examples/apo/train.py                  # the full run (see README.md for its settings and time)
    python examples/apo/train.py --short          # a one-round smoke run
    OPENAI_BASE_URL=... OPENAI_API_KEY=... python examples/apo/train.py --critic-model gpt-4.1-mini

The agent's LLM calls go through AGL's LLM proxy, so each conversation is stored as spans of its rollout and the
critic sees what the model answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agl

HERE = Path(__file__).resolve().parent
SEED_PROMPT = "Answer the question."
_INT = re.compile(r"-?\d+")


def load_tasks(path: Path = HERE / "tasks.jsonl") -> list[dict[str, Any]]:
    """The shipped tasks: `{"question": "18 + 15", "answer": 33}` per line."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(reply: str, answer: int) -> float:
    """1.0 when the last integer on the reply's first line is the answer ("18 + 15 = 33" counts)."""
    first_line = reply.strip().split("\n", 1)[0] if reply.strip() else ""
    numbers = _INT.findall(first_line)
    return 1.0 if numbers and int(numbers[-1]) == answer else 0.0


@agl.rollout
async def calculator(task: dict[str, Any], prompt_template: agl.PromptTemplate, llm: agl.LLM) -> float:
    """Ask the model with the candidate system prompt and score its reply."""
    import httpx

    body = {
        "model": llm.model,
        "messages": [
            {"role": "system", "content": prompt_template.format()},
            {"role": "user", "content": f"{task['question']} ="},
        ],
        "temperature": 0.0,
        "max_tokens": int(llm.sampling_parameters.get("max_tokens", 12)),
    }
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(llm.get_base_url().rstrip("/") + "/chat/completions", json=body)
        response.raise_for_status()
    return score(response.json()["choices"][0]["message"]["content"] or "", int(task["answer"]))


@contextlib.contextmanager
def local_model_server(timeout: float = 600.0) -> Iterator[tuple[str, str]]:
    """Start `python -m agl.llm.server` (SmolLM2-135M) on a free port; yields (model name, base URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "agl.llm.server", "--port", "0", "--max-batch-size", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            match = re.match(r"serving (\S+) at (\S+)", line)
            if match:
                yield match.group(1), match.group(2)
                return
            if line.startswith("error:") or time.monotonic() > deadline:
                raise RuntimeError(f"the local model server did not start: {line.strip()}")
        raise RuntimeError(f"the local model server exited with code {process.wait()}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="one round, one edit, 4 validation tasks (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="beam search rounds")
    parser.add_argument("--beam-width", type=int, default=1)
    parser.add_argument("--branch-factor", type=int, default=2)
    parser.add_argument("--gradient-batch-size", type=int, default=2)
    parser.add_argument("--val-batch-size", type=int, default=4)
    parser.add_argument(
        "--val-size", type=int, default=8, help="validation tasks (taken from the last 16 of tasks.jsonl)"
    )
    parser.add_argument("--critic-max-tokens", type=int, default=48)
    parser.add_argument("--critic-model", default=None, help="use this model at OPENAI_BASE_URL as the critic")
    parser.add_argument("--runners", type=int, default=2, help="runner processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="apo-out", help="directory for apo_report.json")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the search; returns the report (also written to OUT/apo_report.json)."""
    args = build_parser().parse_args(argv)
    if args.short:
        args.rounds, args.beam_width, args.branch_factor = 1, 1, 1
        args.gradient_batch_size, args.val_batch_size, args.val_size, args.critic_max_tokens = 2, 2, 4, 32
    if args.critic_model is not None and not os.environ.get("OPENAI_BASE_URL"):
        raise SystemExit("--critic-model needs OPENAI_BASE_URL (and usually OPENAI_API_KEY) to say where it is served")
    agl.setup_logging("WARNING")
    tasks = load_tasks()
    train, val = tasks[:24], tasks[24:][: args.val_size]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with local_model_server() as (model_name, base_url):
        proxy = agl.LLMProxy(
            model_list=[
                {
                    "model_name": model_name,
                    "litellm_params": {"model": f"hosted_vllm/{model_name}", "api_base": base_url},
                }
            ],
            host="127.0.0.1",
        )
        critic: dict[str, Any] = (
            {"gradient_model": args.critic_model, "apply_edit_model": args.critic_model}
            if args.critic_model is not None
            else {
                "base_url": base_url,
                "api_key": "local",
                "gradient_model": model_name,
                "apply_edit_model": model_name,
            }
        )
        algorithm = agl.APO(
            **critic,
            beam_width=args.beam_width,
            branch_factor=args.branch_factor,
            beam_rounds=args.rounds,
            gradient_batch_size=args.gradient_batch_size,
            val_batch_size=args.val_batch_size,
            critic_max_tokens=args.critic_max_tokens,
            diversity_temperature=1.0,
            rollout_batch_timeout=1800,
            seed=args.seed,
            on_log=lambda e: print(
                f"round {e.round}: {e.version} on {len(e.rewards)} {e.scope} tasks: {e.score:.3f} ({e.seconds:.0f} s)",
                flush=True,
            ),
        )
        trainer = agl.Trainer(
            algorithm=algorithm,
            n_runners=args.runners,
            strategy={"type": "cs", "server_port": 0, "graceful_timeout": 10.0},
            tracer=agl.DummyTracer(),  # rewards and the proxy's LLM spans are all APO reads
            runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": 8, "poll_interval": 0.5},
            llm_proxy=proxy,
            initial_resources={
                "prompt_template": agl.PromptTemplate(template=SEED_PROMPT, engine="f-string"),
                "main_llm": proxy.as_resource(sampling_parameters={"max_tokens": 12}),
            },
        )
        trainer.fit(calculator, train, val_dataset=val)
    report = algorithm.report()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["settings"].update(
        {"train_tasks": len(train), "val_tasks": len(val), "runners": args.runners, "short": args.short}
    )
    (out / "apo_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print_summary(report, out / "apo_report.json")
    return report


def print_summary(report: dict[str, Any], path: Path) -> None:
    """Every candidate with its scores, then the seed against the kept prompt."""
    print(f"{'prompt':<7} {'from':<5} {'round':>5} {'batch':>6} {'full':>6}  template")
    for c in report["candidates"]:
        batch = "" if c["batch_score"] is None else f"{c['batch_score']:.3f}"
        full = "" if c["full_score"] is None else f"{c['full_score']:.3f}"
        text = " ".join(c["template"].split())
        print(f"{c['version']:<7} {c['parent'] or '-':<5} {c['round']:>5} {batch:>6} {full:>6}  {text[:70]!r}")
    seed, best = report["seed"], report["best"]
    print(f"\nseed {seed['version']}: validation score {seed['full_score']}")
    print(f"best {best['version']}: validation score {best['full_score']}: {best['template']!r}")
    print(f"{len(report['rejected'])} edits rejected; {report['seconds']} s in all. Report: {path}")


if __name__ == "__main__":
    main()
