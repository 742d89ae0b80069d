"""`agl rollouts ls` lists a store's rollouts; `agl rollouts show ID` prints one with its attempts and span tree.

Both read the store's dashboard API (`/v1/agl/dashboard/rollouts…`) and fall back to the plain store protocol
against a server without it (an older AGL or an Agent Lightning 0.3 server).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote

from agl.cli.output import Node, Output, excerpt, fmt_duration, fmt_number, fmt_time
from agl.cli.remote import CliError, common_flags, dashboard_get, run_command, store_url
from agl.cli.span_view import span_tree
from agl.store.client import LightningStoreClient, StoreRequestError
from agl.store.insight import rollout_summary
from agl.types.core import ROLLOUT_STATUSES, Attempt, AttemptedRollout, Rollout, RolloutMode, RolloutStatus
from agl.types.reward import find_final_reward
from agl.types.tracer import Span

__all__ = ["build_parser", "main"]

MODES: tuple[RolloutMode, ...] = ("train", "val", "test")
SORT_FIELDS = ("start_time", "end_time", "status", "rollout_id")
MAX_LIMIT = 500
MAX_SPANS = 2000
"""Spans `show` fetches at most (as the dashboard route does); `agl spans export` gets them all."""
SCAN_PAGE = 1000
REWARD_SCAN_SPANS = 200
"""Without the dashboard API, a listed rollout's reward is the last one among its latest attempt's last spans."""


def _choices(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}; choose from {', '.join(allowed)}")
        return values

    return parse


def _int_between(low: int, high: int | None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The `agl rollouts` parser with its `ls` and `show` subcommands."""
    common = common_flags()
    parser = argparse.ArgumentParser(prog="agl rollouts", description="List and inspect a store's rollouts.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{ls,show}")
    ls = sub.add_parser("ls", parents=[common], help="list rollouts (filter, sort, paginate)",
                        description="List rollouts, one line each: status, mode, attempts, worker, times, reward.")  # fmt: skip
    ls.add_argument("--status", action="extend", type=_choices(ROLLOUT_STATUSES, "status"), default=[],
                    metavar="S", help=f"only these statuses (repeat or comma-separate): {', '.join(ROLLOUT_STATUSES)}")  # fmt: skip
    ls.add_argument("--mode", action="extend", type=_choices(MODES, "mode"), default=[], metavar="M",
                    help="only these modes (repeat or comma-separate): train, val, test")  # fmt: skip
    ls.add_argument("--limit", type=_int_between(1, MAX_LIMIT), default=50, metavar="N",
                    help=f"rollouts to show, 1..{MAX_LIMIT} (default 50)")  # fmt: skip
    ls.add_argument("--offset", type=_int_between(0, None), default=0, metavar="K",
                    help="skip the first K matches (default 0)")  # fmt: skip
    ls.add_argument("--sort", choices=SORT_FIELDS, default="start_time", metavar="FIELD",
                    help=f"sort by {', '.join(SORT_FIELDS)} (default start_time)")  # fmt: skip
    ls.add_argument("--desc", action="store_true", help="sort in descending order (newest first)")
    show = sub.add_parser("show", parents=[common], help="one rollout: attempts, span tree, rewards",
                          description="Print a rollout, its attempts, its span tree and its final reward.")  # fmt: skip
    show.add_argument("rollout_id", metavar="ID", help="the rollout id (as `agl rollouts ls` shows it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl rollouts ls|show`; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    if args.action == "ls":
        return run_command(args, lambda client: _ls(client, args, out))
    return run_command(args, lambda client: _show(client, args, out))


# -- ls ----------------------------------------------------------------------------------------------------------


async def _ls(client: LightningStoreClient, args: argparse.Namespace, out: Output) -> int:
    query = {
        "status": args.status,
        "mode": args.mode,
        "sort": args.sort,
        "order": "desc" if args.desc else "asc",
        "limit": args.limit,
        "offset": args.offset,
    }
    page = await dashboard_get(client, "/rollouts", query)
    if page is None:
        page = await _ls_from_protocol(client, args)
    if out.mode == "json":
        out.json(page)
        return 0
    items: list[dict[str, Any]] = page["items"]
    rows = []
    for item in items:
        start, end = item.get("start_time"), item.get("end_time")
        rows.append(
            [
                str(item["rollout_id"]),
                str(item.get("status") or "-"),
                str(item.get("mode") or "-"),
                fmt_number(item.get("attempts")),
                str(item.get("worker_id") or "-"),
                fmt_time(start),
                fmt_duration(end - start if end is not None and start is not None else None),
                fmt_number(item.get("reward")),
            ]
        )
    columns = ["rollout", "status", "mode", ">attempts", "worker", "start", ">took", ">reward"]
    out.table(columns, rows)
    total, offset = int(page["total"]), int(page["offset"])
    if not items:
        out.line(f"no rollouts match (of {total})" if offset == 0 else f"no rollouts after offset {offset} of {total}")
    else:
        more = f"; next page: --offset {offset + len(items)}" if offset + len(items) < total else ""
        out.line(f"rollouts {offset + 1}-{offset + len(items)} of {total}{more}")
    return 0


async def _ls_from_protocol(client: LightningStoreClient, args: argparse.Namespace) -> dict[str, Any]:
    """The dashboard route's answer, computed with the store protocol (which has no mode filter: it scans)."""
    statuses: list[RolloutStatus] | None = list(args.status) or None
    order: Literal["asc", "desc"] = "desc" if args.desc else "asc"
    if not args.mode:
        page = await client.query_rollouts(
            status_in=statuses, sort_by=args.sort, sort_order=order, limit=args.limit, offset=args.offset
        )
        rollouts, total = list(page.items), page.total
    else:
        matched: list[Rollout] = []
        offset = 0
        while True:
            page = await client.query_rollouts(
                status_in=statuses, sort_by=args.sort, sort_order=order, limit=SCAN_PAGE, offset=offset
            )
            matched.extend(r for r in page.items if r.mode in args.mode)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        total = len(matched)
        rollouts = matched[args.offset : args.offset + args.limit]
    items = await asyncio.gather(*(_summary(client, r) for r in rollouts))
    return {"items": list(items), "total": total, "limit": args.limit, "offset": args.offset}


async def _summary(client: LightningStoreClient, rollout: Rollout) -> dict[str, Any]:
    attempt = rollout.attempt if isinstance(rollout, AttemptedRollout) else None
    reward = None
    if attempt is not None and rollout.end_time is not None:
        spans = await client.query_spans(
            rollout.rollout_id, attempt.attempt_id, sort_order="desc", limit=REWARD_SCAN_SPANS
        )
        reward = find_final_reward(list(reversed(spans.items)))
    return rollout_summary(rollout, reward)


# -- show --------------------------------------------------------------------------------------------------------


async def _show(client: LightningStoreClient, args: argparse.Namespace, out: Output) -> int:
    rollout_id: str = args.rollout_id
    missing = f"no rollout {rollout_id!r} in the store at {store_url(args)}; list them with `agl rollouts ls`"
    try:
        detail = await dashboard_get(client, f"/rollouts/{quote(rollout_id, safe='')}")
    except StoreRequestError as exc:
        if exc.status == 404:
            raise CliError(missing) from None
        raise
    if detail is None:
        detail = await _detail_from_protocol(client, rollout_id)
        if detail is None:
            raise CliError(missing)
    if out.mode == "json":
        out.json(detail)
        return 0
    _print_detail(out, detail, rollout_id)
    return 0


async def _detail_from_protocol(client: LightningStoreClient, rollout_id: str) -> dict[str, Any] | None:
    """The dashboard detail route's answer, computed with the store protocol; None for an unknown rollout."""
    page = await client.query_rollouts(rollout_id_in=[rollout_id], limit=1)
    if not page.items:
        return None
    rollout = page.items[0]
    attempts = (await client.query_attempts(rollout_id)).items
    spans = await client.query_spans(rollout_id, limit=MAX_SPANS)
    latest = attempts[-1].attempt_id if attempts else None
    reward = find_final_reward([s for s in spans.items if s.attempt_id == latest]) if latest else None
    return {
        "rollout": rollout.model_dump(mode="json"),
        "attempts": [a.model_dump(mode="json") for a in attempts],
        "spans": [s.model_dump(mode="json") for s in spans.items],
        "spans_total": spans.total,
        "reward": reward,
        "input": rollout.input,
    }


def _print_detail(out: Output, detail: dict[str, Any], rollout_id: str) -> None:
    rollout = Rollout.model_validate(detail["rollout"])
    attempts = [Attempt.model_validate(a) for a in detail.get("attempts") or []]
    spans = [Span.model_validate(s) for s in detail.get("spans") or []]
    took = rollout.end_time - rollout.start_time if rollout.end_time is not None else time.time() - rollout.start_time
    pairs = [
        ("status", rollout.status),
        ("mode", rollout.mode or "-"),
        ("resources", rollout.resources_id or "-"),
        ("start", fmt_time(rollout.start_time)),
        ("end", fmt_time(rollout.end_time)),
        ("took", fmt_duration(took) + ("" if rollout.end_time is not None else " so far")),
        ("attempts", str(len(attempts))),
        ("reward", fmt_number(detail.get("reward"))),
        ("input", excerpt(detail.get("input", rollout.input), 300)),
    ]
    out.pairs(pairs, title=f"Rollout {rollout_id}")
    out.line()
    rows = [
        [
            str(a.sequence_id),
            a.attempt_id,
            a.status,
            a.worker_id or "-",
            fmt_time(a.start_time),
            fmt_time(a.end_time),
            fmt_duration((a.end_time - a.start_time) if a.end_time is not None else None),
            fmt_time(a.last_heartbeat_time),
        ]
        for a in attempts
    ]
    out.table(["#", "attempt", "status", "worker", "start", "end", ">took", "last heartbeat"], rows, title="Attempts")
    by_attempt: dict[str, list[Span]] = {}
    for span in spans:
        by_attempt.setdefault(span.attempt_id, []).append(span)
    sequence = {a.attempt_id: a.sequence_id for a in attempts}
    order = list(sequence) + [a for a in by_attempt if a not in sequence]  # spans of unlisted attempts last
    if not spans:
        out.line()
        out.line("no spans recorded")
    for attempt_id in order:
        group = by_attempt.get(attempt_id)
        if not group:
            continue
        out.line()
        nodes: list[Node] = span_tree(group)
        number = sequence.get(attempt_id)
        label = f"attempt {number} ({attempt_id})" if number is not None else f"attempt {attempt_id}"
        out.tree(f"Spans of {label}: {len(group)}", nodes)
    total = int(detail.get("spans_total") or len(spans))
    if total > len(spans):
        out.line()
        out.line(f"showing {len(spans)} of {total} spans; `agl spans export {rollout_id}` writes them all")
