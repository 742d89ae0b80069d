"""`agl store`'s request-limit flags: what one request may ask of the server (see docs/http.md, "Limits")."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agl.cli.sizes import size

if TYPE_CHECKING:
    from agl.store.http.limits import RequestLimits

__all__ = ["add_limit_arguments", "limits_from_args"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the limit flags (defaults: `RequestLimits`' and a 64 MiB body)."""
    group = parser.add_argument_group("request limits (a request beyond one is answered 4xx naming it)")
    group.add_argument("--max-body-size", type=size, default=64 * 1024 * 1024, metavar="SIZE",
                       help="largest request body, also after gzip decoding (default 64MiB) → 413")  # fmt: skip
    group.add_argument("--max-json-depth", type=_positive_int, default=64, metavar="N",
                       help="deepest nesting of arrays/objects in a JSON body, at most 200 (default 64) → 422")  # fmt: skip
    group.add_argument("--max-batch-items", type=_positive_int, default=10_000, metavar="N",
                       help="items in one list of a request (rollouts enqueued, spans in a batch, ids) and the "
                       "limit of a dequeue (default 10000) → 422")  # fmt: skip
    group.add_argument("--max-url-bytes", type=_positive_int, default=8192, metavar="N",
                       help="longest request target, path and query (default 8192) → 414")  # fmt: skip
    group.add_argument("--max-header-bytes", type=size, default=64 * 1024, metavar="SIZE",
                       help="largest total of a request's header names and values (default 64KiB) → 431")  # fmt: skip
    group.add_argument("--max-headers", type=_positive_int, default=100, metavar="N",
                       help="most header lines in a request (default 100) → 431")  # fmt: skip
    group.add_argument("--limit-concurrency", type=_positive_int, default=None, metavar="N",
                       help="answer 503 to new requests beyond N open connections or requests in flight "
                       "(default: no limit)")  # fmt: skip
    group.add_argument("--keep-alive", type=_seconds, default=75.0, metavar="SECONDS",
                       help="close a kept-alive connection idle this long between requests (default 75)")  # fmt: skip
    group.add_argument("--head-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                       help="time to receive a request head, from its first byte or the connection's opening "
                       "(default 30) → 408")  # fmt: skip
    group.add_argument("--body-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                       help="time to receive a whole request body once its head arrived (default 60) → 408")  # fmt: skip
    group.add_argument("--max-validation-errors", type=_positive_int, default=20, metavar="N",
                       help="errors listed in a 422 answer (default 20)")  # fmt: skip
    group.add_argument("--max-watchers", type=_positive_int, default=10_000, metavar="N",
                       help="drain watchers (GET /v1/agl/health?watcher=ID) remembered (default 10000)")  # fmt: skip
    group.add_argument("--watcher-ttl", type=_seconds, default=600.0, metavar="SECONDS",
                       help="forget a drain watcher silent for this long (default 600)")  # fmt: skip


def limits_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[int, RequestLimits]:
    """`(max_body_bytes, RequestLimits)` from parsed flags; a refused combination exits 2 through `parser`."""
    from agl.store.http.limits import RequestLimits

    try:
        limits = RequestLimits(
            max_json_depth=args.max_json_depth,
            max_batch_items=args.max_batch_items,
            max_url_bytes=args.max_url_bytes,
            max_header_bytes=args.max_header_bytes,
            max_header_count=args.max_headers,
            body_timeout_seconds=args.body_timeout,
            head_timeout_seconds=args.head_timeout,
            keep_alive_seconds=args.keep_alive,
            max_validation_errors=args.max_validation_errors,
            max_watchers=args.max_watchers,
            watcher_ttl_seconds=args.watcher_ttl,
        )
    except ValueError as exc:
        parser.error(str(exc).replace("max_json_depth", "--max-json-depth"))
    return args.max_body_size, limits
