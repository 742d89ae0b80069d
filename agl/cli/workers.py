"""`agl workers`: every worker of a store with its status, current rollout, heartbeat age and last error."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from agl.cli.output import Output, fmt_age, fmt_duration
from agl.cli.remote import common_flags, dashboard_get, run_command
from agl.store.client import LightningStoreClient
from agl.types.core import AttemptedRollout

__all__ = ["build_parser", "main"]

SILENT_AFTER_SECONDS = 30.0
"""Without the dashboard API: a worker whose last heartbeat is older than this is shown as silent."""
FAILURE_SCAN = 200
"""Without the dashboard API: last errors come from this many most recently ended failed rollouts."""


def build_parser() -> argparse.ArgumentParser:
    """The `agl workers` parser."""
    return argparse.ArgumentParser(
        prog="agl workers",
        parents=[common_flags()],
        description="List the store's workers: status, current rollout, heartbeat age, last error.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `agl workers`; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    return run_command(args, lambda client: _workers(client, out))


async def _workers(client: LightningStoreClient, out: Output) -> int:
    data = await dashboard_get(client, "/workers")
    if data is None:
        data = await _workers_from_protocol(client)
    if out.mode == "json":
        out.json(data)
        return 0
    items: list[dict[str, Any]] = data["items"]
    rows = []
    for w in items:
        status = str(w.get("status") or "-") + (" (silent)" if w.get("silent") else "")
        error = w.get("last_error")
        error_text = "-"
        if error:
            age = float(data["now"]) - float(error["time"]) if error.get("time") is not None else None
            error_text = f"{error.get('status', 'failed')} {error.get('rollout_id', '?')} {fmt_age(age)}"
        rows.append(
            [
                str(w["worker_id"]),
                status,
                str(w.get("current_rollout_id") or "-"),
                fmt_age(w.get("heartbeat_age_seconds")),
                error_text,
            ]
        )
    out.table(["worker", "status", "current rollout", ">heartbeat", "last error"], rows)
    silent = sum(1 for w in items if w.get("silent"))
    after = fmt_duration(float(data.get("silent_after_seconds") or SILENT_AFTER_SECONDS))
    out.line(f"{len(items)} workers, {silent} silent (no heartbeat for {after})")
    return 0


async def _workers_from_protocol(client: LightningStoreClient) -> dict[str, Any]:
    """The dashboard workers route's answer, computed with the store protocol and this machine's clock."""
    now = time.time()
    workers = await client.query_workers(sort_by="worker_id")
    failed = await client.query_rollouts(
        status_in=["failed"], sort_by="end_time", sort_order="desc", limit=FAILURE_SCAN
    )
    last_error: dict[str, dict[str, Any]] = {}
    for rollout in failed.items:
        attempt = rollout.attempt if isinstance(rollout, AttemptedRollout) else None
        if attempt is None or attempt.worker_id is None or attempt.worker_id in last_error:
            continue
        last_error[attempt.worker_id] = {
            "rollout_id": rollout.rollout_id,
            "attempt_id": attempt.attempt_id,
            "status": attempt.status,
            "time": attempt.end_time if attempt.end_time is not None else rollout.end_time,
        }
    items = []
    for w in workers.items:
        age = now - w.last_heartbeat_time if w.last_heartbeat_time is not None else None
        items.append(
            {
                "worker_id": w.worker_id,
                "status": w.status,
                "current_rollout_id": w.current_rollout_id,
                "current_attempt_id": w.current_attempt_id,
                "last_heartbeat_time": w.last_heartbeat_time,
                "heartbeat_age_seconds": age,
                "silent": age is None or age > SILENT_AFTER_SECONDS,
                "last_dequeue_time": w.last_dequeue_time,
                "last_busy_time": w.last_busy_time,
                "last_idle_time": w.last_idle_time,
                "last_error": last_error.get(w.worker_id),
            }
        )
    return {"now": now, "silent_after_seconds": SILENT_AFTER_SECONDS, "items": items}
