"""What the inspection commands share: the store flags, a fail-fast store client, and one-line errors.

`agl rollouts`, `agl workers`, `agl stats` and `agl spans` talk to a store server through `LightningStoreClient`
with short timeouts and at most one quick retry, so a wrong URL or a stopped store is reported in seconds
instead of after the client's usual minute of retries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agl.store.client import LightningStoreClient
from agl.store.http.wire import (
    TOKEN_ENV,
    StoreAuthError,
    StoreHTTPError,
    StoreRequestError,
    StoreUnavailableError,
    describe_detail,
)

__all__ = [
    "DEFAULT_STORE_URL",
    "STORE_URL_ENV",
    "CliError",
    "common_flags",
    "dashboard_get",
    "make_client",
    "run_command",
]

DEFAULT_STORE_URL = "http://127.0.0.1:4747"
"""The store URL used when neither --store nor AGL_STORE_URL is given (where `agl store` listens by default)."""
STORE_URL_ENV = "AGL_STORE_URL"
"""Environment variable naming the store URL the inspection commands talk to."""


class CliError(Exception):
    """A failure the user can fix, printed as one line on stderr (exit status 1)."""


def common_flags() -> argparse.ArgumentParser:
    """A parent parser with the flags every inspection command takes (--store, --token-file, --json, --timeout)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("store connection and output")
    group.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help=f"the store's base URL (default: ${STORE_URL_ENV}, else {DEFAULT_STORE_URL})",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help=f"file holding the store's bearer token (default: ${TOKEN_ENV}, else no token)",
    )
    group.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="seconds one request may take (default 10)"
    )
    return parser


def store_url(args: argparse.Namespace) -> str:
    """The store URL chosen by --store, then AGL_STORE_URL, then the default."""
    url: str = args.store or os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL
    return url.rstrip("/")


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise CliError(f"the token file {path} is empty; write the store's bearer token into it")
    return token


def make_client(args: argparse.Namespace) -> LightningStoreClient:
    """A store client for the parsed flags: one try plus one quick retry, short connect and request timeouts."""
    url = store_url(args)
    token = _read_token(args.token_file) if args.token_file else (os.environ.get(TOKEN_ENV) or None)
    if args.timeout <= 0:
        raise CliError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        return LightningStoreClient(
            url,
            token=token,
            retry_delays=(0.2,),
            health_retry_delays=(),
            request_timeout=args.timeout,
            connection_timeout=min(args.timeout, 3.0),
            max_connections=4,
        )
    except ValueError as exc:
        raise CliError(f"--store {url!r} is not a usable store URL ({exc}); use e.g. {DEFAULT_STORE_URL}") from None


async def dashboard_get(client: LightningStoreClient, path: str, query: Mapping[str, Any] | None = None) -> Any:
    """The JSON of `GET /v1/agl/dashboard<path>`, or None when the server has no dashboard API (404 Not Found).

    Any other error (401, 400, an unknown rollout's 404 with its own message) is raised as the client raises it.
    """
    try:
        return await client.dashboard(path, query)
    except StoreRequestError as exc:
        if exc.status == 404 and exc.detail == "Not Found":
            return None
        raise


def _message(exc: BaseException, url: str) -> str | None:
    """The one-line explanation of a store failure, or None for an unexpected error (shown with its traceback)."""
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, StoreUnavailableError):
        return (
            f"cannot reach the store at {url}. Start one with `agl store` (it listens on {DEFAULT_STORE_URL}), "
            f"or point to a running one with --store URL or {STORE_URL_ENV}."
        )
    if isinstance(exc, StoreAuthError):
        return (
            f"the store at {url} refused the request (HTTP {exc.status}: {exc}). "
            f"Set {TOKEN_ENV} or pass --token-file FILE with the store's token."
        )
    if isinstance(exc, StoreHTTPError):
        return f"the store at {url} answered HTTP {exc.status} to {exc.method} {exc.url}: {describe_detail(exc.detail)}"
    return None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (captured in-process): nothing will be flushed to a closed pipe


def run_command(args: argparse.Namespace, command: Callable[[LightningStoreClient], Awaitable[int]]) -> int:
    """Run `command` with a client for `args` and close it; store failures become one line on stderr and exit 1."""
    url = store_url(args)

    async def main() -> int:
        client = make_client(args)
        try:
            return await command(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()  # the reader (e.g. `| head`) went away: stop quietly, also at interpreter exit
        return 1
    except Exception as exc:
        message = _message(exc, url)
        if message is None:
            raise
        print(f"agl: {message}", file=sys.stderr)
        return 1
