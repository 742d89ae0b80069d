"""`agl store`: serve a LightningStore over HTTP until Ctrl+C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from agl.cli.sizes import memory_size, size
from agl.cli.store_limits import add_limit_arguments, limits_from_args

__all__ = ["main"]

logger = logging.getLogger("agl.cli.store")


def build_parser() -> argparse.ArgumentParser:
    """The `agl store` argument parser."""
    parser = argparse.ArgumentParser(prog="agl store", description="Serve a LightningStore over HTTP under /v1/agl.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only; any other address needs a "
                        "token or --insecure)")  # fmt: skip
    parser.add_argument("--port", type=int, default=4747, help="port to bind (default: 4747; 0 picks a free one)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE", default=None,
                       help="file holding the bearer token every route but health requires (stripped; not readable "
                       "by every user) (default: $AGL_STORE_TOKEN, else none)")  # fmt: skip
    token.add_argument("--token", default=None,
                       help="the bearer token itself; every user of the machine sees it in `ps`: prefer "
                       "--token-file or $AGL_STORE_TOKEN")  # fmt: skip
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback --host without a token (anyone who can reach it can read and change "
                        "the store)")  # fmt: skip
    parser.add_argument("--backend", choices=["memory", "sqlite", "postgres", "mongo"], default="memory",
                        help="memory (default), sqlite (durable, one file) or postgres (durable, several servers may "
                        "share one database); mongo is Agent Lightning's and not provided")  # fmt: skip
    parser.add_argument("--path", default=None, help="database file (required with --backend sqlite)")
    parser.add_argument("--dsn", default=None, metavar="URL",
                        help="PostgreSQL database, e.g. postgresql://user@host:5432/db (with --backend postgres; "
                        "default: $AGL_STORE_DSN); prefer a password in ~/.pgpass or $PGPASSWORD to one in the URL, "
                        "which `ps` shows")  # fmt: skip
    parser.add_argument("--pg-pool-size", type=int, default=8, metavar="N",
                        help="most connections this server opens to PostgreSQL (default 8)")  # fmt: skip
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="FULL survives power loss, NORMAL survives a process crash (default: FULL)")  # fmt: skip
    parser.add_argument("--memory-budget", type=memory_size(), default=None, metavar="SIZE",
                        help="memory the server process may use, in bytes with an optional unit (512M, 2GiB) or as a "
                        "share of RAM (70%%); spans beyond it spill to disk (memory backend)")  # fmt: skip
    parser.add_argument("--spill-dir", default=None, help="where spilled spans go (memory backend)")
    parser.add_argument("--spill-max-bytes", type=size, default=None, metavar="SIZE",
                        help="disk budget of the spill (bytes, or with a unit: 512M, 2GiB)")  # fmt: skip
    parser.add_argument("--health-check-interval", type=float, default=1.0,
                        help="seconds between the server's timeout/unresponsive checks (0: off; default 1)")  # fmt: skip
    parser.add_argument("--claim-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="return a claimed rollout to the queue when its runner sends no heartbeat, span or "
                        "status for this long (0: off; default 30)")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="on Ctrl+C or SIGTERM, how long to keep serving while runners finish their rollouts and "
                        "hear that the store drains, so they exit (a second signal stops at once; default 10)")  # fmt: skip
    parser.add_argument("--metrics-public", action="store_true",
                        help="serve Prometheus metrics (/metrics) without the token (default: the token is required)")  # fmt: skip
    parser.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                        help="a browser origin allowed to call the store from its pages (repeatable; * = any)")  # fmt: skip
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="INFO")
    # Agent Lightning 0.3's flags, accepted with the same meaning where AGL has it:
    parser.add_argument("--tracker", nargs="+", choices=["prometheus", "console"], default=None,
                        help="prometheus: the metrics at /metrics (always on in AGL); console is not provided")  # fmt: skip
    parser.add_argument("--n-workers", type=int, default=1,
                        help="server processes; AGL serves a store from one process (only 1 is accepted)")  # fmt: skip
    parser.add_argument("--mongo-uri", default=None, help=argparse.SUPPRESS)
    add_limit_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns 2 on a refused command line (bad arguments, token file, a non-loopback host without
    a token), 1 on a start-up failure (port in use, unreadable database)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend == "sqlite" and not args.path:
        parser.error("--backend sqlite needs --path FILE (the database file to create or resume)")
    if args.backend != "sqlite" and args.path:
        parser.error("--path is only for --backend sqlite")
    if args.backend == "postgres":
        args.dsn = args.dsn or os.environ.get("AGL_STORE_DSN") or None
        if not args.dsn:
            parser.error("--backend postgres needs --dsn postgresql://user@host:5432/dbname (or $AGL_STORE_DSN)")
        if args.pg_pool_size < 1:
            parser.error(f"--pg-pool-size {args.pg_pool_size}: give the most connections to open, 1 or more")
    elif args.dsn:
        parser.error("--dsn is only for --backend postgres")
    if args.backend == "mongo" or args.mongo_uri is not None:
        parser.error("the MongoDB backend is Agent Lightning's and AGL does not provide it: use --backend sqlite "
                     "--path FILE for a durable store")  # fmt: skip
    if args.n_workers != 1:
        parser.error(f"--n-workers {args.n_workers}: AGL serves a store from one process (it handles thousands of "
                     "calls per second); pass --n-workers 1 or leave it out")  # fmt: skip
    if not 0 <= args.drain_timeout < float("inf"):
        parser.error(f"--drain-timeout {args.drain_timeout}: give the seconds to drain, 0 or more (0 stops at once)")
    if not args.claim_timeout >= 0 or args.claim_timeout == float("inf"):
        parser.error(f"--claim-timeout {args.claim_timeout}: give the seconds a claimed rollout may stay silent "
                     "(a finite number >= 0; 0 turns the timeout off)")  # fmt: skip
    if args.tracker and "console" in args.tracker:
        parser.error("--tracker console is not provided; the metrics are at /metrics (--tracker prometheus) and "
                     "`agl stats` prints them in a terminal")  # fmt: skip
    max_body_bytes, limits = limits_from_args(parser, args)
    from agl.store.exposure import InsecureBindError, TokenError, is_loopback, refusal_message, resolve_token

    try:
        token, token_source = resolve_token(args.token, args.token_file)
    except TokenError as exc:
        parser.exit(2, f"agl store: error: {exc}\n")
    if not token and not args.insecure and not is_loopback(args.host):
        parser.exit(2, f"agl store: error: {refusal_message(args.host)}\n")
    from agl.logging import set_role, setup

    set_role("store")  # after the argument checks: a refused command line changes no process-wide state
    setup(args.log_level)
    if token_source == "--token":
        logger.warning("--token is visible to every user of this machine (`ps`); prefer --token-file FILE or "
                       "AGL_STORE_TOKEN")  # fmt: skip

    from agl.store.base import LightningStore
    from agl.store.server import LightningStoreServer

    try:
        store: LightningStore
        if args.backend == "sqlite":
            from agl.store.sqlite import SqliteLightningStore

            store = SqliteLightningStore(
                os.path.abspath(args.path),
                synchronous=args.sqlite_synchronous,
                claim_timeout_seconds=args.claim_timeout,
            )
        elif args.backend == "postgres":
            from agl.store.postgres import PostgresLightningStore, PostgresStoreError

            try:
                store = PostgresLightningStore(
                    args.dsn, claim_timeout_seconds=args.claim_timeout, max_connections=args.pg_pool_size
                )
            except (PostgresStoreError, ImportError) as exc:  # unreachable, refused, or psycopg not installed
                logger.error("agl store could not start: %s", exc)
                return 1
            where = store.dsn
        else:
            from agl.store.memory import InMemoryLightningStore

            budget = args.memory_budget
            store = InMemoryLightningStore(
                eviction_memory_threshold=budget,
                safe_memory_threshold=int(budget * 0.8) if budget is not None else None,
                process_memory_limit=budget,  # the budget bounds the server process, not only its span bytes
                spill_dir=args.spill_dir,
                spill_max_bytes=args.spill_max_bytes,
                claim_timeout_seconds=args.claim_timeout,
            )
        server = LightningStoreServer(
            store,
            host=args.host,
            port=args.port,
            token=token,
            health_check_interval=args.health_check_interval,
            metrics_public=args.metrics_public,
            cors_allow_origins=args.cors_origin,
            max_body_bytes=max_body_bytes,
            limits=limits,
            limit_concurrency=args.limit_concurrency,
        )
        server.insecure = args.insecure or server.insecure
        if args.backend != "postgres":
            where = args.path or "in memory"
        logger.info("Serving a %s store (%s)", args.backend, where)
        server.serve(drain_timeout=args.drain_timeout)
    except InsecureBindError as exc:  # the name given resolved to loopback, the address bound is not
        logger.error("agl store: %s", exc)
        return 2
    except (OSError, RuntimeError, ValueError) as exc:
        logger.error("agl store could not start: %s", exc)
        return 1
    return 0
