"""RayExecutionStrategy on a real local Ray cluster: resources, placement groups, the store's exposure, a store
given by URL, a runner actor that dies mid-rollout, escalation, and runner actors dying with their driver.

The cases every strategy shares are in test_strategy_suite.py. Argument checks run without Ray; the rest use the
`ray_cluster` fixture (2 CPUs) and are slow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from agl.execution import ExecutionEvent, RayExecutionStrategy
from agl.store.base import LightningStore
from agl.store.client import LightningStoreClient
from agl.store.exposure import is_loopback
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.trainer import Trainer
from agl.types.reward import find_final_reward
from tests.execution import agents, bundles
from tests.execution.conftest import RAY_TEST_RESOURCE, require_ray

ROOT = Path(__file__).resolve().parents[2]


def fast(**kwargs: Any) -> RayExecutionStrategy:
    options: dict[str, Any] = {"graceful_timeout": 2.0, "terminate_timeout": 1.0, "start_timeout": 60.0}
    options.update(kwargs)
    return RayExecutionStrategy(**options)


def statuses(store: InMemoryLightningStore) -> list[str]:
    return sorted(r.status for r in asyncio.run(store.query_rollouts()))


# -- arguments (no Ray needed) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_runners": 0}, "n_runners must be a positive integer"),
        ({"address": ""}, "address must be None"),
        ({"num_cpus": 2, "address": "auto"}, "num_cpus sizes a local cluster"),
        ({"num_cpus": 0}, "num_cpus must be a positive integer"),
        ({"runner_num_cpus": -1}, "runner_num_cpus must be a number >= 0"),
        ({"runner_num_gpus": "one"}, "runner_num_gpus must be a number >= 0"),
        ({"runner_resources": {"CPU": 1}}, "use runner_num_cpus"),
        ({"runner_resources": {"slot": -1}}, r"runner_resources\['slot'\] must be a number >= 0"),
        ({"placement_group": "TIGHT"}, "placement_group must be one of PACK, SPREAD"),
        ({"placement_group": 3}, "placement_group must be one of"),
        ({"placement_group": "PACK", "runner_num_cpus": 0}, "placement_group needs runners that hold resources"),
        ({"store_url": "localhost:4747"}, r"store_url must be http://HOST:PORT"),
        ({"store_url": []}, "non-empty list"),
        ({"server_port": 70000}, "server_port must be an integer in 0..65535"),
        ({"token": " "}, "token is empty"),
        ({"graceful_timeout": 0}, "graceful_timeout must be > 0"),
        ({"terminate_timeout": float("nan")}, "terminate_timeout must be a number of seconds"),
        ({"max_restarts": -2}, "max_restarts must be an integer >= -1"),
        ({"start_timeout": -1}, "start_timeout must be > 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_field_and_the_fix(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RayExecutionStrategy(**kwargs)


def test_defaults_and_the_trainer_alias() -> None:
    strategy = RayExecutionStrategy()
    assert (strategy.n_runners, strategy.address, strategy.runner_num_cpus, strategy.max_restarts) == (1, None, 1.0, 3)
    assert (strategy.graceful_timeout, strategy.terminate_timeout, strategy.store_urls) == (10.0, 10.0, ())
    assert strategy.local_cluster and not RayExecutionStrategy(address="auto").local_cluster
    trainer = Trainer(strategy="ray", n_runners=2)
    assert isinstance(trainer.strategy, RayExecutionStrategy) and trainer.strategy.n_runners == 2
    assert RayExecutionStrategy(store_url=["http://a:1/", "http://b:2"]).store_urls == ("http://a:1", "http://b:2")


def test_constructing_the_strategy_does_not_import_ray() -> None:
    code = "import sys, agl; agl.RayExecutionStrategy(n_runners=2, placement_group='PACK'); print('ray' in sys.modules)"
    out = subprocess.check_output([sys.executable, "-c", code], text=True).strip()
    assert out == "False"


# -- on a real cluster ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_runners_hold_custom_resources_and_missing_ones_fail_clearly(ray_cluster: dict[str, Any]) -> None:
    store = InMemoryLightningStore()
    fast(n_runners=2, runner_resources={RAY_TEST_RESOURCE: 1}).execute(
        bundles.algorithm_enqueue_and_wait, bundles.runner_claims, store
    )
    assert statuses(store) == ["succeeded"] * 3
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"runner-0 .*not started within start_timeout=2s.*agl_missing") as info:
        fast(runner_resources={"agl_missing": 1}, start_timeout=2.0).execute(
            bundles.algorithm_until_event, bundles.runner_claims, InMemoryLightningStore()
        )
    assert "lower n_runners or the runner resources" in str(info.value)
    assert time.monotonic() - started < 15


@pytest.mark.slow
def test_a_placement_group_is_made_for_the_run_and_removed_after(ray_cluster: dict[str, Any]) -> None:
    ray = require_ray()
    store = InMemoryLightningStore()
    fast(n_runners=2, placement_group="PACK").execute(bundles.algorithm_enqueue_and_wait, bundles.runner_claims, store)
    assert statuses(store) == ["succeeded"] * 3
    groups = ray.util.placement_group_table()
    assert groups and all(group["state"] == "REMOVED" for group in groups.values())
    # Removal is asynchronous: the cluster's two CPUs come back once the group's bundles are released.
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU") != 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU") == 2.0


@pytest.mark.slow
def test_beyond_loopback_the_store_is_served_on_the_node_ip_with_a_token(ray_cluster: dict[str, Any]) -> None:
    """address='auto' (a cluster of several nodes): the server must be reachable from them, so it needs a token."""
    seen: dict[str, Any] = {}

    async def algorithm(store: LightningStore, event: ExecutionEvent) -> None:
        assert isinstance(store, LightningStoreServer)
        seen["host"], seen["token"] = store.host, store.token
        try:
            urllib.request.urlopen(store.endpoint + "/v1/agl/rollouts", timeout=5)
        except urllib.error.HTTPError as exc:
            seen["without_token"] = exc.code
        await bundles.algorithm_enqueue_and_wait(store, event)

    store = InMemoryLightningStore()
    fast(n_runners=2, address="auto").execute(algorithm, bundles.runner_claims, store)
    assert not is_loopback(seen["host"]) and seen["token"] and len(seen["token"]) >= 32
    assert seen["without_token"] == 401
    assert statuses(store) == ["succeeded"] * 3  # the runners got the token


@pytest.mark.slow
def test_a_store_given_by_url_is_used_by_the_algorithm_and_the_runners(ray_cluster: dict[str, Any]) -> None:
    backing = InMemoryLightningStore()
    server = LightningStoreServer(backing, host="127.0.0.1", port=0, token="s3cret-token")
    server.start()
    seen: list[LightningStore] = []

    async def algorithm(store: LightningStore, event: ExecutionEvent) -> None:
        seen.append(store)
        await bundles.algorithm_enqueue_and_wait(store, event)

    try:
        unused = InMemoryLightningStore()
        fast(n_runners=2, store_url=server.endpoint, token="s3cret-token").execute(
            algorithm, bundles.runner_claims, unused
        )
    finally:
        server.stop()
    assert isinstance(seen[0], LightningStoreClient)
    assert statuses(backing) == ["succeeded"] * 3 and statuses(unused) == []


@pytest.mark.slow
def test_several_store_urls_go_whole_to_the_algorithm_and_every_runner(
    ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    from agl.store.sqlite import SqliteLightningStore
    from tests.store.http.test_failover import ENQUEUE_ROUTE, _count

    servers = []
    seen: list[LightningStore] = []

    async def algorithm(store: LightningStore, event: ExecutionEvent) -> None:
        seen.append(store)
        await bundles.algorithm_enqueue_and_wait(store, event)  # three enqueues, spread over both servers

    try:
        for _ in range(2):  # two servers of one SQLite file
            server = LightningStoreServer(SqliteLightningStore(tmp_path / "one.db"), host="127.0.0.1", port=0,
                                          token="s3cret-token")  # fmt: skip
            server.start()
            servers.append(server)
        urls = [s.endpoint for s in servers]
        fast(n_runners=2, store_url=urls, token="s3cret-token").execute(
            algorithm, bundles.runner_claims, InMemoryLightningStore()
        )
        # Runners' calls (dequeues, heartbeats, spans, attempt updates) reach both servers; which server a given
        # route lands on depends on each client's turn, so the routes are counted together.
        runner_routes = [f"/v1/agl{path}" for path in ("/queues/rollouts/dequeue", "/workers/{worker_id}", "/spans",
                         "/spans/batch", "/spans/next", "/spans/next/batch", "/rollouts/{rollout_id}/attempts/{attempt_id}",
                         "/resources/latest", "/resources/{resources_id}")]  # fmt: skip
        runner_calls = [sum(_count(url, route, "s3cret-token") for route in runner_routes) for url in urls]
        enqueues = [_count(url, ENQUEUE_ROUTE, "s3cret-token") for url in urls]
        assert isinstance(seen[0], LightningStoreClient) and seen[0].server_addresses == tuple(urls)
        assert min(runner_calls) > 0 and min(enqueues) > 0, (runner_calls, enqueues)
        assert [r.status for r in asyncio.run(seen[0].query_rollouts())] == ["succeeded"] * 3
    finally:
        for server in servers:
            server.stop()


@pytest.mark.slow
def test_a_runner_actor_that_dies_mid_rollout_is_restarted_and_every_rollout_completes_once(
    ray_cluster: dict[str, Any], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A short claim timeout and a debounce-free scan so the dead runner's claim is noticed within seconds.
    store = InMemoryLightningStore(claim_timeout_seconds=1.0, scan_debounce_seconds=0)
    trainer = Trainer(
        strategy=fast(n_runners=2, max_restarts=2), store=store, algorithm=agents.EnqueueAndWait(8, str(tmp_path))
    )
    started = time.monotonic()
    trainer.fit(agents.DiesOnceAgent())
    assert time.monotonic() - started < 60
    assert (tmp_path / "died-3").exists()  # the process running task 3 did die

    rollouts = asyncio.run(store.query_rollouts())
    assert sorted(r.input["i"] for r in rollouts) == list(range(8))
    for rollout in rollouts:
        attempts = asyncio.run(store.query_attempts(rollout.rollout_id))
        assert rollout.status == "succeeded"
        # Completed exactly once: one succeeded attempt; the dead runner's attempt of task 3 was given up on.
        assert [a.status for a in attempts].count("succeeded") == 1
        expected = ["unresponsive", "succeeded"] if rollout.input["i"] == 3 else ["succeeded"]
        assert [a.status for a in attempts] == expected, rollout.input
        assert find_final_reward(asyncio.run(store.query_spans(rollout.rollout_id))) == rollout.input["i"] * 2
    # Ray restarted the dead actor: the new process says so (Ray forwards its log lines to this process, in their
    # own time). It registers under its own worker id on its first store call, which a loaded machine may not reach
    # before the other runner has finished every rollout.
    said, deadline = "", time.monotonic() + 15
    while "was restarted by Ray" not in said and time.monotonic() < deadline:
        captured = capfd.readouterr()
        said += captured.out + captured.err
        time.sleep(0.2)
    assert "runner-0 was restarted by Ray" in said or "runner-1 was restarted by Ray" in said
    assert len(asyncio.run(store.query_workers())) in (2, 3)


@pytest.mark.slow
def test_a_runner_actor_that_dies_without_restarts_left_fails_the_run(ray_cluster: dict[str, Any]) -> None:
    with pytest.raises(
        RuntimeError, match=r"Ray runner actors failed: runner-0 .*the actor died and was not restarted"
    ):
        fast(max_restarts=0).execute(bundles.algorithm_until_event, bundles.runner_exits_hard, InMemoryLightningStore())


@pytest.mark.slow
def test_a_runner_stuck_in_its_loop_is_killed_after_the_timeouts(
    ray_cluster: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        fast(graceful_timeout=0.5, terminate_timeout=0.5).execute(
            bundles.algorithm_wait_until_claimed, bundles.runner_claims_then_hangs, InMemoryLightningStore()
        )
    assert time.monotonic() - started < 15
    assert "runner actors did not stop within 1s of the stop and were killed: runner-0" in caplog.text
    assert "interrupted rollouts: ro-" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_runner_actors_end_with_their_driver(ray_cluster: dict[str, Any], tmp_path: Path, how: str) -> None:
    """SIGKILL: Ray ends the actors of a dead driver. SIGINT (Ctrl+C): the run stops cleanly, the driver exits 0."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    output = (tmp_path / "driver.out").open("w")
    # The strategy itself connects the driver to the cluster (address=HOST:PORT) and serves the store on the node IP.
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/execution/ray_driver_script.py"), ray_cluster["address"], str(tmp_path)],
        env=env,
        cwd=ROOT,
        stdout=output,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("runner-*"))) < 2:
            assert driver.poll() is None, f"the driver exited early with {driver.returncode}"
            assert time.monotonic() < deadline, "the runner actors did not start"
            time.sleep(0.1)
        pids = [int(path.read_text()) for path in sorted(tmp_path.glob("runner-*"))]
        assert all(psutil.pid_exists(pid) for pid in pids)
        driver.send_signal(getattr(signal, how))
        code = driver.wait(30)
        if how == "SIGINT":
            assert code == 0
            assert "DRIVER-RETURNED" in (tmp_path / "driver.out").read_text()  # execute() returned normally
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids), "runner actors outlived their driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        output.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_without_a_connection_it_starts_a_local_cluster_and_shuts_it_down(tmp_path: Path) -> None:
    require_ray()
    code = (
        "import asyncio, ray\n"
        "from agl.execution import RayExecutionStrategy\n"
        "from agl.store.memory import InMemoryLightningStore\n"
        "from tests.execution import bundles\n"
        "store = InMemoryLightningStore()\n"
        "RayExecutionStrategy(num_cpus=1, graceful_timeout=2).execute(\n"
        "    bundles.algorithm_enqueue_and_wait, bundles.runner_claims, store)\n"
        "print(sorted(r.status for r in asyncio.run(store.query_rollouts())), ray.is_initialized())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['succeeded', 'succeeded', 'succeeded'] False"
