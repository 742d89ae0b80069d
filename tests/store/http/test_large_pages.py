"""A page of many rollouts is encoded off the event loop in chunks (and released in chunks when nothing else holds
it), and reads back exactly as a small page would."""

from __future__ import annotations

import json
import urllib.request

import pytest

from agl.store.client import LightningStoreClient
from agl.store.http.app import _LARGE_PAGE_ITEMS, _large_page_json, _page_json
from agl.store.server import LightningStoreServer
from agl.types import EnqueueRolloutRequest, PaginatedResult, Rollout


@pytest.mark.parametrize("count", [_LARGE_PAGE_ITEMS + 1, 2 * _LARGE_PAGE_ITEMS, 2 * _LARGE_PAGE_ITEMS + 7])
def test_the_chunked_encoding_is_byte_for_byte_the_plain_one(count: int) -> None:
    items = [Rollout(rollout_id=f"ro-{i}", input={"q": i, "s": "é\n"}, start_time=1.5 + i) for i in range(count)]
    page = PaginatedResult[Rollout].model_construct(items=items, limit=-1, offset=3, total=count + 3)
    assert _large_page_json(page) == _page_json(page)


def test_a_page_nobody_else_holds_is_released_once_encoded_and_a_shared_one_is_left_alone() -> None:
    count = _LARGE_PAGE_ITEMS + 7
    shared = [Rollout(rollout_id=f"ro-{i}", input={"q": i}, start_time=1.5 + i) for i in range(count)]
    expected = _page_json(PaginatedResult[Rollout].model_construct(items=shared, limit=-1, offset=0, total=count))
    # A list only the page refers to: the encoder may empty it (its rollouts are freed off the loop, in chunks).
    alone = PaginatedResult[Rollout].model_construct(items=list(shared), limit=-1, offset=0, total=count)
    assert _large_page_json(alone) == expected
    assert alone.items == []
    # The same list held elsewhere as well (here by `shared`): left as it was.
    held = PaginatedResult[Rollout].model_construct(items=shared, limit=-1, offset=0, total=count)
    assert _large_page_json(held) == expected
    assert len(held.items) == count


async def test_a_large_page_over_http_holds_every_rollout_in_order(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    count = _LARGE_PAGE_ITEMS + 500
    queued = await client.enqueue_many_rollouts([EnqueueRolloutRequest(input={"i": i}) for i in range(count)])
    page = await client.query_rollouts(status_in=["queuing"])
    assert page.total == count
    assert [r.rollout_id for r in page] == [r.rollout_id for r in queued]
    with urllib.request.urlopen(f"{server.endpoint}/v1/agl/rollouts?limit=-1&offset=1") as answer:
        document = json.loads(answer.read())
    assert (document["limit"], document["offset"], document["total"]) == (-1, 1, count)
    assert [item["input"]["i"] for item in document["items"]] == list(range(1, count))
