"""`agl spans export ID`: every span of a rollout as JSON lines or as OTLP/JSON, to stdout or a file."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import orjson

from agl.cli.output import Output
from agl.cli.remote import CliError, common_flags, run_command, store_url
from agl.store.client import LightningStoreClient
from agl.types.tracer import Span, span_json

__all__ = ["build_parser", "main"]

PAGE = 2000
"""Spans fetched per request."""


def build_parser() -> argparse.ArgumentParser:
    """The `agl spans` parser with its `export` subcommand."""
    parser = argparse.ArgumentParser(prog="agl spans", description="Export the spans a store holds.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{export}")
    export = sub.add_parser(
        "export",
        parents=[common_flags()],
        help="write a rollout's spans as JSON lines or OTLP/JSON",
        description="Write every span of a rollout (all attempts, in sequence order) as JSON lines (one stored "
        "Span per line) or as one OTLP/JSON ExportTraceServiceRequest. With --json and --output, a JSON summary "
        "of what was written goes to stdout.",
    )
    export.add_argument("rollout_id", metavar="ID", help="the rollout id")
    export.add_argument("--format", choices=["jsonl", "otlp"], default="jsonl", help="output format (default jsonl)")
    export.add_argument("--output", "-o", metavar="FILE", default=None, help="write to FILE instead of stdout")
    export.add_argument("--attempt", metavar="ATTEMPT_ID", default=None,
                        help="only this attempt's spans (an attempt id, or 'latest')")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl spans export`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_command(args, lambda client: _export(client, args))


async def _pages(client: LightningStoreClient, rollout_id: str, attempt_id: str | None) -> AsyncIterator[list[Span]]:
    offset = 0
    while True:
        page = await client.query_spans(rollout_id, attempt_id, limit=PAGE, offset=offset)
        if page.items:
            yield list(page.items)
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return


async def _write(client: LightningStoreClient, args: argparse.Namespace, stream: TextIO) -> int:
    count = 0
    if args.format == "jsonl":
        async for spans in _pages(client, args.rollout_id, args.attempt):
            stream.write("".join(span_json(s).decode() + "\n" for s in spans))
            count += len(spans)
        return count
    from agl.cli.otlp_json import spans_to_otlp

    collected: list[Span] = []
    async for spans in _pages(client, args.rollout_id, args.attempt):
        collected.extend(spans)
    stream.write(orjson.dumps(spans_to_otlp(collected)).decode() + "\n")
    return len(collected)


async def _export(client: LightningStoreClient, args: argparse.Namespace) -> int:
    found = await client.query_rollouts(rollout_id_in=[args.rollout_id], limit=1)
    if not found.items:
        raise CliError(
            f"no rollout {args.rollout_id!r} in the store at {store_url(args)}; list them with `agl rollouts ls`"
        )
    if args.output is None:
        await _write(client, args, sys.stdout)
        return 0
    partial = f"{args.output}.part"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            count = await _write(client, args, f)
        os.replace(partial, args.output)  # a failed export leaves no half-written file under the requested name
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    summary = {"rollout_id": args.rollout_id, "format": args.format, "spans": count, "output": args.output}
    if args.json:
        Output(True).json(summary)
    else:
        print(f"wrote {count} spans of {args.rollout_id} to {args.output} ({args.format})", file=sys.stderr)
    return 0
