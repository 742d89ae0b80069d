"""Regenerate the dashboard screenshots in docs/dashboard/ (1280x800 PNG, one per page, plus the token prompt).

    python bench/dashboard_screens.py [--seconds 60] [--out docs/dashboard]

Starts a store server on a free loopback port and fills it over HTTP the way runners do, paced over `--seconds`:
six resources versions (the prompt template grows, the weights version rises) with rising rewards, four busy
workers and one that stopped sending heartbeats, a retried rollout, failures with exceptions. Then it opens each
page in Debian's Chromium (/usr/bin/chromium) and saves what it shows.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agl.store.client import LightningStoreClient  # noqa: E402
from agl.store.memory import InMemoryLightningStore  # noqa: E402
from agl.store.server import LightningStoreServer  # noqa: E402
from agl.types import PromptTemplate, ProxyLLM, RolloutConfig  # noqa: E402
from tests.dashboard.conftest import launch_chromium  # noqa: E402
from tests.dashboard.fill import agent_spans  # noqa: E402

WORKERS = ["Worker-0", "Worker-1", "Worker-2", "Worker-3"]
STEPS = 6
PER_STEP = 10
TEMPLATE_LINES = [
    "You are a calculator.",
    "Think step by step.",
    "Check the arithmetic before answering.",
    "Give only the number.",
    "Never explain.",
    "If unsure, recompute.",
]


async def run(endpoint: str, seconds: float) -> str:
    """Fill the store at `endpoint` over `seconds`; returns the id of a rollout that needed two attempts."""
    rng = random.Random(7)
    client = LightningStoreClient(endpoint)
    retried = ""
    try:
        await client.update_worker("Worker-4", {"pid": 4})  # registers, then never beats again: silent later
        for worker in WORKERS:
            await client.update_worker(worker, {"pid": 1})
        pause = seconds / (STEPS * PER_STEP)
        for step in range(STEPS):
            resources_id = f"grpo-step-{step}"
            template = "\n".join(TEMPLATE_LINES[: 1 + step // 2]) + "\nQuestion: {question}"
            await client.update_resources(
                resources_id,
                {
                    "main_llm": ProxyLLM(endpoint="http://127.0.0.1:4748/v1", model="smollm2-135m",
                                         sampling_parameters={"temperature": 0.7}, weights_version=str(step)),
                    "system_prompt": PromptTemplate(template=template, engine="f-string"),
                },
            )  # fmt: skip
            for i in range(PER_STEP):
                a, b = rng.randint(2, 99), rng.randint(2, 99)
                question = f"{a} + {b}"
                config = RolloutConfig(max_attempts=2, retry_condition=["failed"]) if i == 3 else None
                mode = "val" if i % 5 == 4 else "train"
                rollout = await client.enqueue_rollout({"question": question}, mode=mode, resources_id=resources_id,
                                                       config=config)  # fmt: skip
                attempts = 2 if config is not None else 1
                for attempt in range(attempts):
                    claimed = await client.dequeue_rollout(worker_id=WORKERS[(i + attempt) % len(WORKERS)])
                    assert claimed is not None
                    attempt_id = claimed.attempt.attempt_id
                    await client.update_attempt(rollout.rollout_id, attempt_id, status="running")
                    fails = attempt + 1 < attempts or (attempts == 1 and rng.random() < 0.08)
                    reward = None if fails else float(rng.random() < 0.15 + 0.13 * step)
                    answer = str(a + b) if reward else str(a + b + 1)
                    await client.add_many_spans(agent_spans(rollout.rollout_id, attempt_id, question, reward, answer))
                    await asyncio.sleep(pause / attempts)
                    status = "failed" if reward is None else "succeeded"
                    await client.update_attempt(rollout.rollout_id, attempt_id, status=status)  # type: ignore[arg-type]
                if attempts == 2 and not retried:
                    retried = rollout.rollout_id
                for worker in WORKERS:
                    await client.update_worker(worker, {"pid": 1})
        for i in range(2):  # two still running, three waiting
            rollout = await client.enqueue_rollout({"question": f"{i} + 1"}, mode="train", resources_id=resources_id)
            claimed = await client.dequeue_rollout(worker_id=WORKERS[i])
            assert claimed is not None
            await client.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="running")
        for i in range(3):
            await client.enqueue_rollout({"question": f"{i} + 2"}, mode="train", resources_id=resources_id)
    finally:
        await client.close()
    return retried


def shoot(endpoint: str, token_endpoint: str, retried: str, out: Path) -> list[Path]:
    """Save one screenshot per page; returns the files written."""
    from playwright.sync_api import sync_playwright

    shots = {
        "overview": ("#/", "[data-testid=reward-by-version] canvas"),
        "rollouts": ("#/rollouts", "[data-testid=rollouts-table] tbody tr"),
        "rollout": (f"#/rollouts/{retried}", "[data-testid=span-tree]"),
        "resources": ("#/resources", "[data-testid=template-diff]"),
        "workers": ("#/workers", "[data-testid=workers-table] tbody tr"),
    }
    written = []
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for name, (route, ready) in shots.items():
                page.goto(f"{endpoint}/{route}")
                page.wait_for_selector(ready)
                if name == "overview":
                    page.wait_for_selector('[data-testid=reward-by-version][data-pending="0"]')
                page.wait_for_timeout(300)
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=name == "rollout")  # the detail: down to its last span
                written.append(path)
            login = browser.new_page(viewport={"width": 1280, "height": 800})
            login.goto(f"{token_endpoint}/#/")
            login.locator("input[name=token]").fill("not-the-token")
            login.locator("button[type=submit]").click()
            login.wait_for_selector("[data-testid=login-error]")
            path = out / "login.png"
            login.screenshot(path=str(path))
            written.append(path)
        finally:
            browser.close()
    return written


def main() -> int:
    """Fill a store, take the screenshots, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the filling run lasts")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    args = parser.parse_args()
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0)
    guarded = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0, token="t0ken")
    server.start()
    try:
        guarded.start()
        try:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                retried = pool.submit(asyncio.run, run(server.endpoint, args.seconds)).result()
            print(f"filled in {time.monotonic() - started:.1f} s")
            for path in shoot(server.endpoint, guarded.endpoint, retried, args.out):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            guarded.stop()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
