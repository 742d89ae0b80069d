"""The dashboard in a real browser (Debian's Chromium via Playwright) against a real store server on loopback.

The store is filled over HTTP like runners fill it (`tests.dashboard.fill`), so every count, id, span and reward
the page shows is checked against what was written, not against the page's own API.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.dashboard.conftest import OLD_VERSION
from tests.dashboard.fill import QUEUED, VERSIONS, WORKERS, Filled

TIMEOUT_MS = 10_000

ServerAndFill = tuple[LightningStoreServer, Filled]


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x800 page (own context: own session storage); closed after the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
    finally:
        context.close()


def _api(server: LightningStoreServer, path: str) -> Any:
    with urllib.request.urlopen(f"{server.endpoint}/v1/agl/{path}", timeout=10) as response:
        return json.loads(response.read())


def _rows(page: Any) -> list[str]:
    return page.locator("[data-testid=rollouts-table] tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.rolloutId)"
    )


def _wait_rollouts(page: Any, query: str, total: int) -> None:
    """Wait until the rollouts page shows the answer to `query` (its hash query string) with `total` matches."""
    page.wait_for_selector(f'[data-testid=rollouts-range][data-query="{query}"][data-total="{total}"]')


def test_every_page_loads_without_console_errors(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    pages = {
        "#/": "overview",
        "#/rollouts": "rollouts",
        f"#/rollouts/{filled.retried}": "rollout-detail",
        "#/resources": "resources",
        "#/workers": "workers",
    }
    for route, testid in pages.items():
        page.goto(f"{server.endpoint}/{route}")
        page.wait_for_selector(f"[data-testid={testid}]")
        assert page.locator(".error").count() == 0, page.locator(".error").all_inner_texts()
    # Live: the visible page asks again every 2 s; a hidden tab does not ask until it is shown again.
    asked: list[float] = []
    page.on("request", lambda r: asked.append(time.monotonic()) if "/v1/agl/dashboard/workers" in r.url else None)
    page.goto(f"{server.endpoint}/#/")
    page.wait_for_selector("[data-testid=overview]")
    page.goto(f"{server.endpoint}/#/workers")
    page.wait_for_selector("[data-testid=workers]")
    page.wait_for_timeout(4500)
    assert len(asked) >= 2
    page.evaluate(_SET_HIDDEN, True)
    page.wait_for_timeout(2500)  # a request already under way may finish; none may start
    hidden_at = len(asked)
    page.wait_for_timeout(2500)
    assert len(asked) == hidden_at
    with page.expect_request(lambda r: "/v1/agl/dashboard/workers" in r.url, timeout=1000):
        page.evaluate(_SET_HIDDEN, False)
    assert console.errors == []


# Chromium's headless tabs are always visible: the test flips what the page reads and tells it, as a browser does.
_SET_HIDDEN = """hidden => {
  Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_overview_counts_and_reward_curve(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/")
    page.wait_for_selector("[data-testid=status-counts]")
    expected = {"succeeded": len(filled.succeeded), "failed": len(filled.failed), "running": len(filled.running),
                "queuing": QUEUED, "preparing": 0, "requeuing": 0, "cancelled": 0}  # fmt: skip
    for status, count in expected.items():
        assert page.locator(f"[data-status={status}] .count").inner_text() == str(count), status

    # The store reads rewards in the background; the page says how many are still to read.
    page.wait_for_selector('[data-testid=reward-by-version][data-pending="0"]', timeout=20_000)
    # The curve per version holds exactly the means of the rewards written, in publication order, also per mode.
    points = json.loads(page.locator("[data-testid=reward-by-version]").get_attribute("data-points"))
    means = filled.mean_reward_by_version()
    assert [p["resources_id"] for p in points] == [rid for rid, _ in VERSIONS]
    for point in points:
        mean, count = means[point["resources_id"]]
        assert point["count"] == count
        assert point["mean"] == pytest.approx(mean)
        for mode in ("train", "val"):
            mode_mean, mode_count = filled.mean_reward_by_version(mode)[point["resources_id"]]
            assert point["modes"][mode]["count"] == mode_count
            assert point["modes"][mode]["mean"] == pytest.approx(mode_mean)
    # Over time: every rewarded rollout is in exactly one bucket, and the page draws what the store reports.
    over_time = json.loads(page.locator("[data-testid=reward-over-time]").get_attribute("data-points"))
    assert sum(p["count"] for p in over_time) == len(filled.rewards)
    total = sum(p["mean"] * p["count"] for p in over_time)
    assert total == pytest.approx(sum(reward for _, reward in filled.rewards.values()))
    assert over_time == _api(server, "dashboard/overview")["reward"]["over_time"]
    assert page.locator("[data-testid=reward-by-version] canvas").count() == 1
    assert console.errors == []


def test_status_filter_search_and_pagination(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/rollouts")
    _wait_rollouts(page, "", filled.total)
    assert len(_rows(page)) == filled.total  # 50 per page by default

    # Filter by clicking a status chip.
    page.locator("label.chip", has_text="failed").click()
    _wait_rollouts(page, "status=failed", len(filled.failed))
    assert sorted(_rows(page)) == sorted(filled.failed)

    # Two statuses, ten per page: walk every page with Next.
    page.goto(f"{server.endpoint}/#/rollouts?status=succeeded&status=running&limit=10")
    wanted = sorted(filled.succeeded + filled.running)
    seen: list[str] = []
    offset = 0
    while True:
        query = "status=succeeded&status=running&limit=10" + (f"&offset={offset}" if offset else "")
        _wait_rollouts(page, query, len(wanted))
        rows = _rows(page)
        assert len(rows) == min(10, len(wanted) - offset)
        seen += rows
        offset += 10
        if offset >= len(wanted):
            assert page.locator("button[name=next]").is_disabled()
            break
        page.locator("button[name=next]").click()
    assert sorted(seen) == wanted

    # Sort by rollout id, ascending.
    page.goto(f"{server.endpoint}/#/rollouts?sort=rollout_id&order=asc&limit=200")
    _wait_rollouts(page, "sort=rollout_id&order=asc&limit=200", filled.total)
    assert _rows(page) == sorted(_rows(page))

    # Search by a piece of an id.
    target = filled.failed[0]
    page.goto(f"{server.endpoint}/#/rollouts")
    page.locator("input[name=q]").fill(target[3:])
    page.locator("button[type=submit]").click()
    _wait_rollouts(page, f"q={target[3:]}", 1)
    assert _rows(page) == [target]
    page.locator(f"a[href='#/rollouts/{target}']").click()
    page.wait_for_selector(f"[data-testid=rollout-detail][data-rollout-id='{target}']")
    assert console.errors == []


def test_mode_and_start_time_filters(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/rollouts")
    _wait_rollouts(page, "", filled.total)
    page.locator("label.chip", has_text="val").click()
    vals = sorted(rid for rid, mode in filled.modes.items() if mode == "val")
    _wait_rollouts(page, "mode=val", len(vals))
    assert sorted(_rows(page)) == vals
    page.locator("label.chip", has_text="test").click()  # the queued rollouts
    _wait_rollouts(page, "mode=val&mode=test", len(vals) + len(filled.queued))
    assert sorted(_rows(page)) == sorted(vals + filled.queued)
    # The old version's rollouts started two hours ago: the last hour leaves exactly them out.
    page.goto(f"{server.endpoint}/#/rollouts")
    _wait_rollouts(page, "", filled.total)
    page.locator("select[name=window]").select_option("3600")
    recent = filled.total - len(filled.by_version[OLD_VERSION])
    _wait_rollouts(page, "window=3600", recent)
    assert not set(_rows(page)) & set(filled.by_version[OLD_VERSION])
    page.locator("select[name=window]").select_option("86400")
    _wait_rollouts(page, "window=86400", filled.total)
    assert console.errors == []


def test_rollout_detail_shows_spans(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    rollout_id = filled.retried
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if f"/dashboard/rollouts/{rollout_id}" in r.url else None)
    page.goto(f"{server.endpoint}/#/rollouts/{rollout_id}")
    page.wait_for_selector("[data-testid=span-tree]")
    # Both attempts on the timeline; the span tree of the last attempt holds every span written for it.
    assert page.locator("[data-testid=attempt-timeline] .tl-bar").count() == 2
    assert page.locator("[data-testid=final-reward]").inner_text() == "reward 1"
    spans = filled.spans[rollout_id]
    last_attempt = page.locator(".attempt-spans").last
    for span in spans:
        assert last_attempt.locator(f"[data-span-id='{span.span_id}']").count() == 1, span.name
    root = last_attempt.locator(f"[data-span-id='{spans[0].span_id}']")
    assert root.locator("[data-kind=llm], [data-kind=tool], [data-kind=reward]").count() == 3  # children of the root
    llm = last_attempt.locator("[data-kind=llm]")
    assert "You are a calculator." in llm.inner_text()
    assert "The answer to retried is 4" in llm.inner_text()
    assert llm.locator("[data-testid=tokens]").inner_text() == "tokens: prompt 17 · completion 6 · total 23"
    assert last_attempt.locator("[data-kind=reward] .reward-pill").inner_text() == "primary = 1"
    assert "calculator" in last_attempt.locator("[data-kind=tool]").inner_text()
    # The first attempt failed with an exception span, shown as an error.
    failed = page.locator(".attempt-spans").first.locator(".has-error")
    assert failed.count() == 1 and "ZeroDivisionError: division by zero" in failed.inner_text()
    # Raw JSON on demand.
    reward = last_attempt.locator("[data-kind=reward]")
    reward.locator("button", has_text="JSON").click()
    raw = json.loads(reward.locator("pre.json").inner_text())
    assert raw["span_id"] == spans[-1].span_id and raw["attributes"]["agentlightning.reward.0.value"] == 1.0
    page.locator("button", has_text="show rollout JSON").click()
    assert json.loads(page.locator(".raw pre.json").first.inner_text())["rollout_id"] == rollout_id
    # A finished rollout cannot change: it was asked for once.
    page.wait_for_timeout(2500)
    assert len(asked) == 1
    # A running one keeps being asked for.
    running = filled.running[0]
    page.goto(f"{server.endpoint}/#/rollouts/{running}")
    page.wait_for_selector(f"[data-testid=rollout-detail][data-rollout-id='{running}']")
    with page.expect_request(lambda r: f"/dashboard/rollouts/{running}" in r.url, timeout=4000):
        pass
    assert console.errors == []


def test_resources_show_what_changed(page: Any, filled_server: ServerAndFill) -> None:
    server, _ = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/resources")
    page.wait_for_selector("[data-testid=resources] .resources-version")
    ids = page.locator(".resources-version").evaluate_all("els => els.map(e => e.dataset.resourcesId)")
    assert ids == [rid for rid, _ in reversed(VERSIONS)]  # newest first
    newest = page.locator(".resources-version").first
    diff = newest.locator("[data-testid=template-diff]")
    assert diff.locator(".add").all_inner_texts() == ["+ Give only the number."]
    assert diff.locator(".del").count() == 0
    llm = newest.locator("[data-name=main_llm]")
    assert "tiny-0 → tiny-1" in llm.inner_text()
    assert "was proxy_llm" in llm.inner_text()
    middle = page.locator(".resources-version").nth(1)
    assert "0 → 1" in middle.locator("[data-name=main_llm] dd.changed").inner_text()  # weights_version
    assert middle.locator("[data-testid=template-diff] .del").all_inner_texts() == ["- You are a calculator."]
    assert console.errors == []


def test_workers_page(page: Any, filled_server: ServerAndFill) -> None:
    server, filled = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/workers")
    page.wait_for_selector("[data-testid=workers-table] tbody tr")
    ids = page.locator("[data-testid=workers-table] tbody tr").evaluate_all("rows => rows.map(r => r.dataset.workerId)")
    assert sorted(ids) == WORKERS
    current = page.locator("[data-testid=workers-table] tbody td a[href^='#/rollouts/']").all_inner_texts()
    assert set(filled.running) <= set(current)
    assert console.errors == []


def test_token_protected_store_shows_only_the_login_prompt(page: Any) -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0, token="tok-42")
    server.start()
    try:
        console = Console(page)
        page.goto(f"{server.endpoint}/#/")
        page.wait_for_selector("[data-testid=login]")
        # Nothing but the prompt: no navigation, no data, no page.
        assert page.locator("nav, [data-testid=overview], table").count() == 0
        assert page.locator("#app > *").count() == 1
        page.locator("input[name=token]").fill("wrong")
        page.locator("button[type=submit]").click()
        page.wait_for_selector("[data-testid=login-error]")
        assert "refused" in page.locator("[data-testid=login-error]").inner_text()
        assert page.locator("nav").count() == 0
        page.locator("input[name=token]").fill("tok-42")
        page.locator("button[type=submit]").click()
        page.wait_for_selector("[data-testid=status-counts]")
        assert page.locator("[data-testid=login]").count() == 0
        assert page.evaluate("sessionStorage.getItem('agl.dashboard.token')") == "tok-42"
        # The browser reports each refused request; nothing else may go wrong.
        assert [e for e in console.errors if "401" not in e] == []
        assert len(console.errors) >= 1
    finally:
        server.stop()


def test_unknown_rollout_and_page(page: Any, filled_server: ServerAndFill) -> None:
    server, _ = filled_server
    console = Console(page)
    page.goto(f"{server.endpoint}/#/rollouts/ro-does-not-exist")
    page.wait_for_selector("text=Rollout ro-does-not-exist was not found in this store.")
    page.goto(f"{server.endpoint}/#/nowhere")
    page.wait_for_selector("text=No page at /nowhere.")
    assert page.locator("nav a.active").count() == 0
    # Only the browser's own report of the 404 answer.
    assert [e for e in console.errors if "404" not in e] == []
