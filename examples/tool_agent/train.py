"""Train SmolLM2-135M-Instruct with GRPO to solve word problems with a calculator tool, on CPU.

The agent (agent.py) talks to the model through AGL's LLM proxy with the OpenAI tools API; the proxy records every
LLM call's prompt and completion token ids; GRPO trains on every call of every episode. See README.md.

    python examples/tool_agent/train.py                      # the full run
    python examples/tool_agent/train.py --short              # a few minutes: 2 steps, 8 held-out problems
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the runner processes import `agent` by name


def load_problems(name: str) -> list[dict[str, Any]]:
    """A shipped problem set: `train` or `held_out`."""
    path = HERE / "data" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The options of a training run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path (.gguf file or HF directory); default: SmolLM2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tasks-per-step", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--eval-size", type=int, default=32, help="held-out problems to score (at most 64)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="peak; cosine decay to a tenth")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="weight of KL to the starting model")
    parser.add_argument(
        "--compute-dtype",
        default="bfloat16",
        help="dtype of the matrix products in generation and update (weights stay float32); bfloat16 is ~2x faster "
        "on CPUs with AVX512-BF16 or AMX, float32 is the choice elsewhere (see README)",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        default=16,
        help="samples per forward/backward pass of the update; the prompt prefix they share runs once per pass",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=870.0,
        help="seconds from the start (model loading included) after which no step starts that could not finish "
        "with its evaluations; 0: none. The default keeps the run under 15 minutes",
    )
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="tool-agent-output", help="directory for the log and checkpoints")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default). 1 is far faster on a CPU other jobs keep busy (see README)",
    )
    parser.add_argument("--short", action="store_true", help="a quick check: 2 steps of 2x4 rollouts, 8 held-out")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, print the before/after table, write the log; returns the summary."""
    import agl
    from agl.algorithm.grpo import GRPO, GRPOConfig
    from agl.demo.report import Progress, before_after_table, write_json
    from agl.tracer.dummy import DummyTracer

    started = time.monotonic()
    args = build_parser().parse_args(argv)
    if args.short:
        args.steps, args.tasks_per_step, args.group_size, args.eval_size, args.eval_every = 2, 2, 4, 8, 2
    agl.setup_logging("WARNING")
    if args.torch_threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # read when torch loads, for every thread
        import torch

        torch.set_num_threads(args.torch_threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from agent import tool_agent

    config = GRPOConfig(
        steps=args.steps,
        tasks_per_step=args.tasks_per_step,
        group_size=args.group_size,
        learning_rate=args.learning_rate,
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        kl_coef=args.kl_coef,
        compute_dtype=args.compute_dtype,
        micro_batch_size=args.micro_batch_size,
        keep_best=True,
        checkpoint_dir=args.out,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        seed=args.seed,
        rollout_timeout=1800.0,
    )
    # The margin covers the report and shutdown after training.
    deadline = started + args.time_budget - 15.0 if args.time_budget else None
    algorithm = GRPO(config, model=args.model, on_log=Progress(args.steps), deadline=deadline)
    trainer = agl.Trainer(
        algorithm=algorithm,
        n_runners=args.runners,
        strategy={"type": "cs", "server_port": 0, "graceful_timeout": 10.0},
        tracer=DummyTracer(),
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": args.concurrency, "poll_interval": 0.5},
    )
    print(
        f"tool agent: GRPO on {args.model or 'SmolLM2-135M-Instruct'}, {args.steps} steps of "
        f"{args.tasks_per_step}x{args.group_size} episodes, {args.eval_size} held-out problems, seed {args.seed}",
        flush=True,
    )
    trainer.fit(tool_agent, load_problems("train"), val_dataset=load_problems("held_out"))
    seconds = time.monotonic() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**asdict(config), "runners": args.runners, "model": args.model, "seconds": seconds}
    write_json(out / "tool_agent_log.json", algorithm.history, settings)
    print()
    print(before_after_table(algorithm.history))
    print(f"\n{seconds:.0f} s in all (load average {os.getloadavg()[0]:.1f}). Log: {out / 'tool_agent_log.json'}")
    evals = [h for h in algorithm.history if h.kind == "eval"]
    return {
        "before": evals[0].reward_mean if evals else None,
        "after": evals[-1].reward_mean if evals else None,
        "seconds": seconds,
        "history": algorithm.history,
    }


if __name__ == "__main__":
    main()
