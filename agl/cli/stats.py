"""`agl stats`: one screen about a store: rollouts by status, the queue, throughput, workers, memory and spill."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from agl.cli.output import Output, fmt_bytes, fmt_duration, fmt_number
from agl.cli.remote import common_flags, dashboard_get, run_command, store_url
from agl.cli.workers import SILENT_AFTER_SECONDS
from agl.store.client import LightningStoreClient
from agl.types.core import ROLLOUT_STATUSES, RolloutStatus

__all__ = ["build_parser", "main"]

FINISHED: tuple[RolloutStatus, ...] = ("succeeded", "failed", "cancelled")
WAITING: tuple[RolloutStatus, ...] = ("queuing", "requeuing")
"""Rollouts waiting to be claimed: the queue (without the dashboard API)."""
SCAN_PAGE = 500


def _window(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be seconds in (0, 86400], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `agl stats` parser."""
    parser = argparse.ArgumentParser(
        prog="agl stats",
        parents=[common_flags()],
        description="One screen about a store: rollouts by status, queue, throughput, workers, memory and spill.",
    )
    parser.add_argument("--window", type=_window, default=900.0, metavar="SECONDS",
                        help="throughput over the last SECONDS (default 900, at most 86400)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl stats`; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    return run_command(args, lambda client: _stats(client, args, out))


async def _stats(client: LightningStoreClient, args: argparse.Namespace, out: Output) -> int:
    overview = await dashboard_get(client, "/overview", {"window": int(args.window)})
    summary = _from_overview(overview, args.window) if overview is not None else await _from_protocol(client, args)
    if out.mode == "json":
        out.json(summary)
        return 0
    _print(out, summary, store_url(args))
    return 0


def _throughput(window: float, succeeded: int, failed: int, cancelled: int) -> dict[str, Any]:
    finished = succeeded + failed + cancelled
    return {
        "window_seconds": window,
        "finished": finished,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "per_minute": finished * 60.0 / window,
        "error_rate": failed / finished if finished else None,
    }


def _from_overview(overview: dict[str, Any], window: float) -> dict[str, Any]:
    """The summary from the dashboard overview route's answer."""
    buckets = overview.get("series", {}).get("buckets", [])
    counts = {k: sum(int(b.get(k, 0)) for b in buckets) for k in FINISHED}
    reward = overview.get("reward") or {}
    versions = reward.get("by_version") or []
    versioned = [v for v in versions if v.get("version") is not None]  # rollouts without resources sort last
    latest = versioned[-1] if versioned else (versions[-1] if versions else None)
    return {
        "source": "dashboard",
        "now": overview.get("now"),
        "rollouts": overview["rollouts"],
        "queue": overview["queue"],
        "throughput": _throughput(window, counts["succeeded"], counts["failed"], counts["cancelled"]),
        "workers": overview.get("workers"),
        "reward": {"count": reward.get("count", 0), "latest_version": latest},
        "resources": overview.get("resources"),
        "store": overview.get("store") or {},
    }


async def _count(client: LightningStoreClient, statuses: Sequence[RolloutStatus]) -> int:
    return (await client.query_rollouts(status_in=list(statuses), limit=1)).total


async def _finished_since(client: LightningStoreClient, since: float) -> dict[str, int]:
    """Rollouts finished at or after `since`, by status (pages through them newest first)."""
    counts: dict[str, int] = dict.fromkeys(FINISHED, 0)
    offset = 0
    while True:
        page = await client.query_rollouts(
            status_in=list(FINISHED), sort_by="end_time", sort_order="desc", limit=SCAN_PAGE, offset=offset
        )
        recent = [r for r in page.items if r.end_time is not None and r.end_time >= since]
        for r in recent:
            counts[r.status] += 1
        offset += len(page.items)
        if len(recent) < len(page.items) or not page.items or offset >= page.total:
            return counts


async def _from_protocol(client: LightningStoreClient, args: argparse.Namespace) -> dict[str, Any]:
    """The summary computed with the store protocol and this machine's clock."""
    now = time.time()
    totals = await asyncio.gather(*(_count(client, [s]) for s in ROLLOUT_STATUSES))
    by_status = dict(zip(ROLLOUT_STATUSES, totals, strict=True))
    oldest = await client.query_rollouts(status_in=list(WAITING), sort_by="start_time", sort_order="asc", limit=1)
    finished = await _finished_since(client, now - args.window)
    workers = await client.query_workers()
    ages = [now - w.last_heartbeat_time if w.last_heartbeat_time is not None else None for w in workers.items]
    statistics = await client.statistics()
    return {
        "source": "protocol",
        "now": now,
        "rollouts": {"total": sum(totals), "by_status": by_status},
        "queue": {
            "depth": oldest.total,
            "oldest_age_seconds": now - oldest.items[0].start_time if oldest.items else None,
        },
        "throughput": _throughput(args.window, finished["succeeded"], finished["failed"], finished["cancelled"]),
        "workers": {
            "total": len(workers.items),
            "busy": sum(1 for w in workers.items if w.status == "busy"),
            "idle": sum(1 for w in workers.items if w.status == "idle"),
            "silent": sum(1 for age in ages if age is None or age > SILENT_AFTER_SECONDS),
            "silent_after_seconds": SILENT_AFTER_SECONDS,
        },
        "reward": None,
        "resources": None,
        "store": dict(statistics),
    }


def _print(out: Output, s: dict[str, Any], url: str) -> None:
    store: dict[str, Any] = s.get("store") or {}
    rollouts = s["rollouts"]
    by_status = rollouts.get("by_status", {})
    queue = s["queue"]
    t = s["throughput"]
    up = f", up {fmt_duration(store['uptime'])}" if store.get("uptime") is not None else ""
    rows = [
        ("store", f"{url} ({store.get('name', '?')}{up})"),
        ("rollouts", f"{rollouts.get('total', 0)}: " + ", ".join(f"{k} {by_status.get(k, 0)}" for k in ROLLOUT_STATUSES)),
        ("queue", f"{queue.get('depth', 0)} waiting"
         + (f", oldest {fmt_duration(queue['oldest_age_seconds'])}" if queue.get("oldest_age_seconds") is not None else "")),
        ("throughput", f"{t['finished']} finished in the last {fmt_duration(t['window_seconds'])} "
         f"({t['per_minute']:.1f}/min): {t['succeeded']} succeeded, {t['failed']} failed, {t['cancelled']} cancelled"
         + (f"; error rate {t['error_rate'] * 100:.0f} %" if t["error_rate"] is not None else "")),
    ]  # fmt: skip
    workers = s.get("workers")
    if workers:
        rows.append(("workers", f"{workers.get('total', 0)}: {workers.get('busy', 0)} busy, "
                     f"{workers.get('idle', 0)} idle, {workers.get('silent', 0)} silent"))  # fmt: skip
    reward = s.get("reward")
    if reward and reward.get("latest_version"):
        v = reward["latest_version"]
        of = f"resources {v['resources_id']} (v{v.get('version')})" if v.get("resources_id") else "no resources"
        rows.append(("reward", f"mean {fmt_number(v.get('mean'))} over {v.get('count')} rollouts with {of}; "
                     f"{reward.get('count', 0)} rollouts rewarded in all"))  # fmt: skip
    resources = s.get("resources")
    if resources and resources.get("latest_id"):
        rows.append(("resources", f"latest {resources['latest_id']} ({resources.get('count', 0)} snapshots)"))
    if store.get("total_spans") is not None:
        rows.append(("spans", f"{store['total_spans']} stored, {fmt_bytes(store.get('total_span_bytes'))} held"))
    if store.get("memory_capacity_bytes"):
        rows.append(("memory", f"spans spill to disk above {fmt_bytes(store.get('eviction_threshold_bytes'))}, "
                     f"down to {fmt_bytes(store.get('safe_threshold_bytes'))} "
                     f"(capacity {fmt_bytes(store['memory_capacity_bytes'])})"))  # fmt: skip
    if store.get("db_path"):
        rows.append(("database", f"{store['db_path']}: {fmt_bytes(store.get('db_file_bytes'))}, "
                     f"WAL {fmt_bytes(store.get('wal_file_bytes'))}"))  # fmt: skip
    if store.get("spilled_spans"):
        rows.append(("spill", f"{fmt_bytes(store.get('spilled_span_bytes'))} on disk: "
                     f"{store['spilled_spans']} spans of {store.get('spilled_rollouts', 0)} rollouts"))  # fmt: skip
    out.pairs(rows)
