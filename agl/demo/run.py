"""Wire the demo: tasks, the GRPO algorithm, the `cs` strategy with runner processes, and the reports."""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "run_demo"]

logger = logging.getLogger("agl.demo")


def build_parser() -> argparse.ArgumentParser:
    """The `agl demo` options."""
    parser = argparse.ArgumentParser(
        prog="agl demo",
        description="Train SmolLM2-135M-Instruct with GRPO to add numbers, through the whole AGL loop, on CPU or a CUDA GPU.",
    )
    parser.add_argument("--model", default=None, help="model path (.gguf file or HF directory); default: SmolLM2")
    parser.add_argument(
        "--device",
        default="auto",
        help='where the model trains and generates: "auto" (CUDA when available, else CPU), "cpu", "cuda" or '
        '"cuda:N" (default auto; docs/gpu.md)',
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue from a checkpoint: a demo output directory (its best/) or a checkpoint directory in it",
    )
    parser.add_argument("--steps", type=int, default=20, help="GRPO steps in all, resumed ones included (default 20)")
    parser.add_argument("--runners", type=int, default=2, help="runner processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="rollouts each runner runs at once (default 16)")
    parser.add_argument("--tasks-per-step", type=int, default=4, help="problems per step (default 4)")
    parser.add_argument("--group-size", type=int, default=8, help="samples per problem (default 8)")
    parser.add_argument("--eval-size", type=int, default=64, help="held-out problems (default 64)")
    parser.add_argument("--eval-every", type=int, default=2, help="evaluate every N steps (default 2)")
    parser.add_argument("--max-value", type=int, default=20, help="largest operand (default 20)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    parser.add_argument("--lr-schedule", default="cosine", choices=["constant", "linear", "cosine"])
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final / peak learning rate (default 0.1)")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="weight of KL to the starting model (0.05)")
    parser.add_argument(
        "--patience", type=int, default=4, help="stop after N evaluations without a new best (default 4; 0: never)"
    )
    parser.add_argument(
        "--time-budget", type=float, default=540.0,
        help="seconds for the whole demo; no step starts that would end after it (default 540; 0: none)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="agl-demo-output", help="directory for checkpoints, the PNG and JSON log")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def split_tasks(max_value: int, eval_size: int, seed: int) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """Every addition problem with operands 1..max_value, shuffled, split into disjoint train and held-out sets."""
    pairs = [{"a": a, "b": b} for a in range(1, max_value + 1) for b in range(1, max_value + 1)]
    random.Random(seed).shuffle(pairs)
    if eval_size >= len(pairs):
        raise ValueError(f"--eval-size {eval_size} leaves no training problems (only {len(pairs)} exist)")
    return pairs[eval_size:], pairs[:eval_size]


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns a summary (before/best/final success, paths, seconds)."""
    started = time.monotonic()
    load_at_start = _load_average()
    from agl.algorithm.grpo import GRPO, GRPOConfig
    from agl.algorithm.grpo_checkpoint import find_checkpoint, read_state
    from agl.demo.arithmetic import arithmetic_agent
    from agl.demo.report import Progress, before_after_table, write_json, write_png
    from agl.llm.model import default_gguf_path
    from agl.logging import setup
    from agl.tracer.dummy import DummyTracer
    from agl.trainer.trainer import Trainer

    setup(args.log_level)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars over the demo's own
    if args.model is not None and args.resume is not None:
        raise ValueError("give --model or --resume, not both (--resume loads the checkpoint's weights)")
    if args.model is not None and not Path(args.model).exists():
        raise FileNotFoundError(f"--model {args.model!r} does not exist (give a .gguf file or a model directory)")
    model, resume, split = (
        args.model,
        None,
        {"seed": args.seed, "max_value": args.max_value, "eval_size": args.eval_size},
    )
    if args.resume is not None:
        checkpoint = find_checkpoint(args.resume)
        resume = read_state(checkpoint)
        model = str(checkpoint)
        split = dict(resume.extra.get("split") or split)  # the same held-out problems, so scores compare
        if resume.step >= args.steps:
            raise ValueError(
                f"--resume {args.resume!r}: the checkpoint is at step {resume.step}; give --steps larger than that "
                "(it is the total number of steps)"
            )
    elif args.model is None:
        default_gguf_path()  # a clear error now, naming the pip command, if the model package is missing
    from agl.llm.device import resolve_device

    device = resolve_device(args.device, option="--device")  # a wrong --device fails now, before any loading
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = GRPOConfig(
        steps=args.steps,
        tasks_per_step=args.tasks_per_step,
        group_size=args.group_size,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        kl_coef=args.kl_coef,
        eval_every=args.eval_every,
        eval_size=int(split["eval_size"]),
        early_stop_patience=args.patience,
        keep_best=True,
        checkpoint_dir=str(out),
        seed=args.seed,
        device=str(device),
    )
    train, held_out = split_tasks(int(split["max_value"]), int(split["eval_size"]), int(split["seed"]))
    progress = Progress(args.steps, resumed_from=resume.weights_version if resume is not None else None)
    # The whole demo's budget, from its start; the margin covers the reports and shutdown after training.
    deadline = started + args.time_budget - 15.0 if args.time_budget else None
    algorithm = GRPO(
        config,
        model=model,
        on_log=progress,
        resume=resume,
        checkpoint_extra={"split": split, "kind": "agl demo"},
        deadline=deadline,
    )
    trainer = Trainer(
        algorithm=algorithm,
        n_runners=args.runners,
        strategy={"type": "cs", "server_port": 0, "graceful_timeout": 10.0},
        tracer=DummyTracer(),
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": args.concurrency, "poll_interval": 0.5},
    )
    name = "SmolLM2-135M-Instruct" if model is None else model
    first = f"from step {resume.step} " if resume is not None else ""
    print(
        f"AGL demo: GRPO on {name}, {first}to step {args.steps}, {args.tasks_per_step}×{args.group_size} rollouts "
        f"per step, {args.runners} runners (cs strategy), seed {args.seed}, on {device}",
        flush=True,
    )
    trainer.fit(arithmetic_agent, train, val_dataset=held_out)
    progress.close()
    seconds = time.monotonic() - started
    history = algorithm.history
    settings = {**asdict(config), "runners": args.runners, "concurrency": args.concurrency, "model": model,
                "resume": args.resume, "split": split, "seconds": seconds, "stop_reason": algorithm.stop_reason,
                "time_budget": args.time_budget, "load_average_start": load_at_start, "load_average_end": _load_average()}  # fmt: skip
    json_path, png_path = out / "demo_log.json", out / "reward_curve.png"
    write_json(json_path, history, settings)
    write_png(png_path, history, f"AGL demo: GRPO on SmolLM2-135M (seed {args.seed})")
    stopped = {"steps": "", "early stop": " (stopped early: no new best)", "time budget": " (time budget reached)"}
    print(f"\ntraining ended at step {max((h.step for h in history), default=0)}{stopped[algorithm.stop_reason]}")
    print(before_after_table(history))
    print(f"\n{seconds:.0f} s in all. Model: {out / 'best'}  Reward curve: {png_path}  Log: {json_path}")
    print(f"Serve it: python -m agl.llm.server --model {out / 'best'}   Continue: agl demo --resume {out} --steps N")
    evals = [h for h in history if h.kind == "eval"]
    return {
        "before": evals[0].reward_mean if evals else None,
        "best": max(h.reward_mean for h in evals) if evals else None,
        "after": evals[-1].reward_mean if evals else None,
        "seconds": seconds,
        "png": str(png_path),
        "json": str(json_path),
        "checkpoint": str(out / "best"),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on every platform
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`agl demo`: returns 0 on success, 1 with a clear message on a bad option or a failure."""
    args = build_parser().parse_args(argv)
    try:
        run_demo(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"agl demo failed: {exc}")  # once: not also through the logger
        return 1
    return 0
