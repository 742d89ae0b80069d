"""`agl runner`: run an agent's runners on this machine against a store served elsewhere (`agl store`, a trainer)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = ["build_parser", "load_agent", "main"]

logger = logging.getLogger("agl.cli.runner")


def build_parser() -> argparse.ArgumentParser:
    """The `agl runner` argument parser."""
    parser = argparse.ArgumentParser(
        prog="agl runner",
        description="Run N runner processes of an agent on this machine; they take rollouts from the store at "
        "--store until it drains (Ctrl+C or SIGTERM stops them at once).",
    )
    parser.add_argument("--store", required=True, action="append", metavar="URL",
                        help="the store server, e.g. http://10.0.0.5:4747; several servers of one database: "
                        "repeat --store or separate the URLs by commas (calls are spread over them and fail over "
                        "when one dies)")  # fmt: skip
    parser.add_argument("--agent", required=True, metavar="MODULE:NAME",
                        help="the agent: a LitAgent instance, a LitAgent class (built with no arguments) or a "
                        "@rollout function, as MODULE:NAME importable from the working directory")  # fmt: skip
    parser.add_argument("--n-runners", type=int, default=1, metavar="N", help="runner processes (default: 1)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE", default=None,
                       help="file holding the store's bearer token (default: $AGL_STORE_TOKEN)")  # fmt: skip
    token.add_argument("--token", default=None, help="the token itself (visible in `ps`: prefer --token-file)")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the store to answer before giving up (default: 60)")  # fmt: skip
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO")
    return parser


def load_agent(spec: str) -> Any:
    """The LitAgent named by `MODULE:NAME`; ValueError saying what is wrong otherwise."""
    from agl.litagent import LitAgent

    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"--agent must look like MODULE:NAME (e.g. my_agent:agent), got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the user's module sits in the working directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ValueError(f"--agent: no module {module_name!r} importable from {os.getcwd()}") from exc
        raise
    try:
        value = getattr(module, name)
    except AttributeError:
        raise ValueError(f"--agent: module {module_name!r} has no attribute {name!r}") from None
    if isinstance(value, type) and issubclass(value, LitAgent):
        value = value()
    if not isinstance(value, LitAgent):
        raise ValueError(
            f"--agent: {spec} is a {type(value).__name__}, not a LitAgent (use a LitAgent instance or subclass, or a "
            "function decorated with @agl.rollout)"
        )
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl runner`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_runners < 1:
        parser.error(f"--n-runners must be at least 1, got {args.n_runners}")
    stores = [part.strip() for value in args.store for part in value.split(",")]
    for store in stores:
        url = urlsplit(store)
        if url.scheme != "http" or not url.hostname or url.path not in ("", "/"):
            parser.error(f"--store must be http://HOST:PORT (the server's base address), got {store!r}")
        try:
            _ = url.port
        except ValueError:
            parser.error(f"--store has an invalid port: {store!r}")
    if len(set(s.rstrip("/") for s in stores)) < len(stores):
        parser.error(f"--store lists a server twice: {', '.join(stores)}")
    from agl.store.exposure import TokenError, resolve_token
    from agl.store.http.wire import TOKEN_ENV

    try:
        token, _ = resolve_token(args.token, args.token_file)
        agent = load_agent(args.agent)
    except (TokenError, ValueError) as exc:
        print(f"agl runner: {exc}", file=sys.stderr)
        return 2
    if token is not None:
        os.environ[TOKEN_ENV] = token  # the runner processes' store clients read it
    from agl.env_var import LightningEnvVar

    # Runners on several machines share one store: their worker ids must differ (`Worker-0` exists on each).
    os.environ.setdefault(LightningEnvVar.AGL_WORKER_ID_PREFIX.value, f"{socket.gethostname()}-{os.getpid()}-")
    if args.token is not None:
        print("agl runner: warning: --token is visible to every user of this machine (`ps`); prefer --token-file "
              "FILE or AGL_STORE_TOKEN", file=sys.stderr)  # fmt: skip
    from agl.logging import setup

    setup(args.log_level)
    from agl.execution.client_server import ClientServerExecutionStrategy
    from agl.trainer import Trainer

    strategy = ClientServerExecutionStrategy(
        role="runner", n_runners=args.n_runners, server_wait_timeout=args.wait, store_url=stores
    )
    logger.info("running %d runner(s) of %s against %s", args.n_runners, args.agent, ", ".join(stores))
    try:
        Trainer(strategy=strategy).fit(agent)
    except ConnectionError as exc:
        print(f"agl runner: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
