"""The dashboard's JSON routes under `/v1/agl/dashboard/` (the page itself is served from `agl.dashboard`).

They answer what a person watching a run asks — counts, throughput, workers, rewards, one rollout in full — from a
`StoreInsight`, with the same bearer token as every other store route.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from agl.store.http.app import HTTPError, Request, Response, _parse_query
from agl.store.insight import StoreInsight
from agl.types.core import RolloutMode, RolloutStatus

__all__ = ["DashboardRoutes"]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _OverviewQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = 900.0


class _RolloutsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: list[RolloutStatus] | None = None
    mode: list[RolloutMode] | None = None
    since: FiniteFloat | None = None
    until: FiniteFloat | None = None
    q: Annotated[str, Field(max_length=256)] | None = None
    sort: Literal["start_time", "end_time", "status", "rollout_id"] = "start_time"
    order: Literal["asc", "desc"] = "desc"
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=10**12)] = 0


def _json(value: object, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value))


class DashboardRoutes:
    """Handlers of the dashboard routes over one `StoreInsight`."""

    def __init__(self, insight: StoreInsight) -> None:
        self.insight = insight

    async def overview(self, request: Request) -> Response:
        """GET /dashboard/overview[?window=SECONDS]."""
        query: _OverviewQuery = _parse_query(_OverviewQuery, request)
        return _json(await self.insight.overview(query.window))

    async def rollouts(self, request: Request) -> Response:
        """GET /dashboard/rollouts?status=&mode=&since=&until=&q=&sort=&order=&limit=&offset=."""
        query: _RolloutsQuery = _parse_query(_RolloutsQuery, request)
        page = await self.insight.rollouts(
            status_in=query.status,
            mode_in=query.mode,
            start_time_from=query.since,
            start_time_to=query.until,
            rollout_id_contains=query.q,
            sort_by=query.sort,
            sort_order=query.order,
            limit=query.limit,
            offset=query.offset,
        )
        return _json({"items": page.items, "total": page.total, "limit": page.limit, "offset": page.offset})

    async def rollout(self, request: Request) -> Response:
        """GET /dashboard/rollouts/{rollout_id}."""
        rollout_id = request.params["rollout_id"]
        found = await self.insight.rollout(rollout_id)
        if found is None:
            raise HTTPError(404, f"Rollout {rollout_id} not found")
        return _json(found)

    async def workers(self, request: Request) -> Response:
        """GET /dashboard/workers."""
        return _json(await self.insight.workers())
