"""The `agl` command: `agl store` serves a store over HTTP, `agl demo` trains a small model end to end, and
`agl rollouts` / `workers` / `stats` / `spans` inspect a running store."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# Subcommand -> (module with a `main(argv) -> int`, one-line help). Modules are imported only when chosen.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "store": ("agl.cli.store", "serve a LightningStore over HTTP (memory or SQLite backend)"),
    "runner": ("agl.cli.runner", "run an agent's runners on this machine against a store served elsewhere"),
    "demo": ("agl.cli.demo", "train a small language model with GRPO through the whole AGL loop, on CPU"),
    "rollouts": ("agl.cli.rollouts", "list a store's rollouts (ls) or show one with its attempts and span tree"),
    "workers": ("agl.cli.workers", "a store's workers: status, current rollout, heartbeat age, last error"),
    "stats": ("agl.cli.stats", "one screen about a store: counts by status, queue, throughput, memory"),
    "spans": ("agl.cli.spans", "export a rollout's spans as JSON lines or OTLP/JSON"),
}

# Agent Lightning 0.3's subcommands that AGL does not have -> why, and what to use instead (exit status 2).
NOT_PROVIDED: dict[str, str] = {
    "vllm": (
        "AGL does not wrap vLLM (upstream patches its internals): run `vllm serve MODEL` yourself, give the agent its "
        "URL as an LLM resource, and put agl.LLMProxy in front of it to record token ids (docs/llm.md)"
    ),
    "prometheus": (
        "AGL's store serves its Prometheus metrics itself at /metrics, runners with metrics_port (docs/metrics.md)"
    ),
    "agentops": (
        "AGL does not use AgentOps, so no AgentOps server is needed: OtelTracer records spans without one "
        "(docs/tracing.md)"
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl <subcommand> [args...]`; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="agl", description="AGL: train any AI agent.")
    parser.add_argument("-V", "--version", action="store_true", help="print AGL's version and exit")
    parser.add_argument(
        "subcommand", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items())
    )
    if args and args[0] in ("-V", "--version"):
        from agl import __version__

        print(f"agl {__version__}")
        return 0
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] in NOT_PROVIDED:
        print(f"agl {args[0]}: not provided by AGL. {NOT_PROVIDED[args[0]]}", file=sys.stderr)
        return 2
    if args[0] not in SUBCOMMANDS:
        parser.parse_args(args[:1])  # prints the usage error and exits with status 2
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    result = module.main(args[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
