"""Against a server without the dashboard API (an older AGL, Agent Lightning 0.3) the commands compute their
answers with the plain store protocol: here both are asked of the same real server and compared."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agl.cli import rollouts, stats, workers
from agl.cli.remote import dashboard_get
from agl.store.client import LightningStoreClient
from tests.cli.conftest import Filled

T = TypeVar("T")


def ask(filled: Filled, call: Callable[[LightningStoreClient], Awaitable[T]]) -> T:
    async def go() -> T:
        client = LightningStoreClient(filled.url, retry_delays=(), health_retry_delays=())
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(go())


def ls_args(**overrides: Any) -> argparse.Namespace:
    fields: dict[str, Any] = {"status": [], "mode": [], "sort": "rollout_id", "desc": False, "limit": 50, "offset": 0}
    fields.update(overrides)
    return argparse.Namespace(**fields)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"status": ["failed", "succeeded"]}, {"desc": True, "limit": 2, "offset": 1}, {"sort": "start_time"}],
)
def test_rollout_list_is_the_dashboard_list(filled: Filled, overrides: dict[str, Any]) -> None:
    args = ls_args(**overrides)
    query = {"status": args.status, "sort": args.sort, "order": "desc" if args.desc else "asc",
             "limit": args.limit, "offset": args.offset}  # fmt: skip
    dashboard = ask(filled, lambda c: dashboard_get(c, "/rollouts", query))
    protocol = ask(filled, lambda c: rollouts._ls_from_protocol(c, args))
    assert dashboard is not None and protocol == dashboard


def test_rollout_list_filters_by_mode_by_scanning(filled: Filled) -> None:
    page = ask(filled, lambda c: rollouts._ls_from_protocol(c, ls_args(mode=["train"])))
    assert [i["rollout_id"] for i in page["items"]] == sorted([filled.succeeded, filled.running])
    assert page["total"] == 2
    page = ask(filled, lambda c: rollouts._ls_from_protocol(c, ls_args(mode=["train", "val"], limit=1, offset=2)))
    assert [i["rollout_id"] for i in page["items"]] == sorted([filled.succeeded, filled.running, filled.failed])[2:]
    assert page["total"] == 3


@pytest.mark.parametrize("which", ["succeeded", "failed", "queued"])
def test_rollout_detail_is_the_dashboard_detail(filled: Filled, which: str) -> None:
    rollout_id = getattr(filled, which)
    dashboard = ask(filled, lambda c: dashboard_get(c, f"/rollouts/{rollout_id}"))
    protocol = ask(filled, lambda c: rollouts._detail_from_protocol(c, rollout_id))
    assert dashboard is not None and protocol == dashboard
    assert ask(filled, lambda c: rollouts._detail_from_protocol(c, "ro-unknown")) is None


def test_workers_match_the_dashboard_but_know_only_rollout_level_errors(filled: Filled) -> None:
    dashboard = ask(filled, lambda c: dashboard_get(c, "/workers"))
    protocol = ask(filled, workers._workers_from_protocol)
    keys = ("worker_id", "status", "current_rollout_id", "current_attempt_id", "last_heartbeat_time")
    assert [{k: w[k] for k in keys} for w in protocol["items"]] == [{k: w[k] for k in keys} for w in dashboard["items"]]
    errors = {w["worker_id"]: w["last_error"] for w in protocol["items"]}
    # the failed rollout's latest attempt ran on Worker-1; Worker-0's earlier failed attempt is not seen
    assert errors["Worker-1"] is not None and errors["Worker-1"]["rollout_id"] == filled.failed
    assert errors["Worker-0"] is None
    assert all(not w["silent"] for w in protocol["items"])


def test_stats_match_the_dashboard_overview(filled: Filled) -> None:
    overview = ask(filled, lambda c: dashboard_get(c, "/overview", {"window": 900}))
    from_dashboard = stats._from_overview(overview, 900.0)
    from_protocol = ask(filled, lambda c: stats._from_protocol(c, argparse.Namespace(window=900.0)))
    assert from_protocol["rollouts"] == from_dashboard["rollouts"]
    assert from_protocol["queue"]["depth"] == from_dashboard["queue"]["depth"] == 1
    assert from_protocol["throughput"] == from_dashboard["throughput"]
    for key in ("total", "busy", "idle", "silent"):
        assert from_protocol["workers"][key] == from_dashboard["workers"][key]
    assert from_protocol["store"]["total_spans"] == from_dashboard["store"]["total_spans"] == 6
