"""ClientServerExecutionStrategy with real processes: each role, main_process, readiness, exit codes, restarts."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from agl.execution import ClientServerExecutionStrategy, ExecutionEvent
from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.execution import bundles
from tests.execution.conftest import free_port


def cs(**kwargs: object) -> ClientServerExecutionStrategy:
    options: dict[str, object] = {
        "server_host": "127.0.0.1",
        "server_port": 0,
        "graceful_timeout": 0.5,
        "terminate_timeout": 0.5,
    }
    options.update(kwargs)
    return ClientServerExecutionStrategy(**options)  # type: ignore[arg-type]


def statuses(store: LightningStore) -> list[str]:
    return sorted(r.status for r in asyncio.run(store.query_rollouts()))


def test_both_first_claim_is_fast_no_failed_first_poll() -> None:
    """The server is up before any runner polls: the first rollout is claimed well under a second."""
    store = InMemoryLightningStore()
    claimed_after: list[float] = []

    async def algorithm(s: LightningStore, event: ExecutionEvent) -> None:
        t0 = time.monotonic()
        rollout = await s.enqueue_rollout(input={"x": 1})
        while True:
            current = await s.get_rollout_by_id(rollout.rollout_id)
            assert current is not None
            if current.status != "queuing":
                claimed_after.append(time.monotonic() - t0)
                return
            await asyncio.sleep(0.005)

    cs(n_runners=2).execute(algorithm, bundles.runner_claims, store)
    assert claimed_after and claimed_after[0] < 0.5


def test_cooperative_shutdown_is_quick_and_clean(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        cs(n_runners=2, graceful_timeout=5.0).execute(
            bundles.algorithm_returns, bundles.runner_cooperative, InMemoryLightningStore()
        )
    assert time.monotonic() - started < 2.0
    assert "SIGINT" not in caplog.text and "interrupted" not in caplog.text


def test_algorithm_receives_the_server_and_the_server_stops_after_execute() -> None:
    seen: list[LightningStore] = []

    async def algorithm(s: LightningStore, event: ExecutionEvent) -> None:
        seen.append(s)

    cs(role="algorithm").execute(algorithm, bundles.runner_cooperative, InMemoryLightningStore())
    server = seen[0]
    assert isinstance(server, LightningStoreServer)
    assert not server.is_running


def test_role_algorithm_serves_remote_runners() -> None:
    """role=algorithm: no local runner; a client (a runner elsewhere) claims and finishes the rollouts."""
    store = InMemoryLightningStore()

    async def algorithm(s: LightningStore, event: ExecutionEvent) -> None:
        from agl.store.client import LightningStoreClient

        assert isinstance(s, LightningStoreServer) and s.is_running
        client = LightningStoreClient(s.endpoint)
        try:
            rollout = await s.enqueue_rollout(input={"x": 1})
            claimed = await client.dequeue_rollout(worker_id="remote")
            assert claimed is not None and claimed.rollout_id == rollout.rollout_id
            await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        finally:
            await client.close()

    cs(role="algorithm").execute(algorithm, bundles.runner_cooperative, store)
    assert statuses(store) == ["succeeded"]


@pytest.mark.parametrize("n_runners", [1, 2])
def test_role_runner_talks_to_a_server_elsewhere(n_runners: int) -> None:
    backing = InMemoryLightningStore()
    server = LightningStoreServer(backing, host="127.0.0.1", port=0)
    server.start()
    try:
        for i in range(n_runners):
            asyncio.run(backing.enqueue_rollout(input={"i": i}))
        unused = InMemoryLightningStore()  # managed runners ignore the given store
        started = time.monotonic()
        cs(role="runner", server_port=server.port, n_runners=n_runners).execute(
            bundles.algorithm_raises, bundles.runner_claims_one, unused
        )
        assert time.monotonic() - started < 5
    finally:
        server.stop()
    assert statuses(backing) == ["succeeded"] * n_runners
    assert asyncio.run(unused.query_rollouts()).total == 0


@pytest.mark.parametrize("n_runners", [1, 2])
def test_role_runner_with_several_store_urls_uses_the_one_that_answers(n_runners: int) -> None:
    backing = InMemoryLightningStore()
    server = LightningStoreServer(backing, host="127.0.0.1", port=0)
    server.start()
    try:
        for i in range(n_runners):
            asyncio.run(backing.enqueue_rollout(input={"i": i}))
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every call fails over to the server
        strategy = cs(role="runner", store_url=f"{dead},{server.endpoint}", n_runners=n_runners)
        assert strategy.server_address == f"{dead},{server.endpoint}"
        strategy.execute(bundles.algorithm_raises, bundles.runner_claims_one, InMemoryLightningStore())
    finally:
        server.stop()
    assert statuses(backing) == ["succeeded"] * n_runners


def test_store_url_is_for_role_runner_and_checked() -> None:
    with pytest.raises(ValueError, match="store_url is for role='runner'"):
        cs(role="both", store_url="http://127.0.0.1:4747")
    with pytest.raises(ValueError, match="lists http://a:1 twice"):
        cs(role="runner", store_url=["http://a:1", "http://a:1"])
    assert cs(role="runner", store_url=["http://a:1", "http://b:2/"]).store_urls == ("http://a:1", "http://b:2")


def test_role_runner_needs_a_port() -> None:
    with pytest.raises(ValueError, match="needs the server's port"):
        cs(role="runner", server_port=0).execute(
            bundles.algorithm_returns, bundles.runner_cooperative, InMemoryLightningStore()
        )


def test_role_runner_fails_when_no_server_answers_within_the_wait() -> None:
    port = free_port()  # bound and closed again: nothing listens there
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"no store server answered at http://127\.0\.0\.1:{port}/v1/agl/health "
                       r"within 0\.5s\. Start the algorithm side first") as info:  # fmt: skip
        cs(role="runner", server_port=port, server_wait_timeout=0.5).execute(
            bundles.algorithm_raises, bundles.runner_crashes, InMemoryLightningStore()
        )
    assert 0.5 <= time.monotonic() - started < 3
    assert "server_host/server_port" in str(info.value)
    with pytest.raises(ValueError, match="server_wait_timeout"):
        cs(role="runner", server_wait_timeout=-1)
    assert cs(role="runner").server_wait_timeout == 60.0


def test_main_process_runner_joins_the_algorithm_process() -> None:
    """main_process=runner: the runner runs here, the algorithm (and the store) in a child that is joined."""
    store = InMemoryLightningStore()
    started = time.monotonic()
    cs(main_process="runner").execute(bundles.algorithm_enqueue_and_wait, bundles.runner_claims, store)
    assert time.monotonic() - started < 5
    # The store's state lives in the algorithm process: this copy is untouched.
    assert asyncio.run(store.query_rollouts()).total == 0


def test_main_process_runner_waits_for_a_slower_algorithm(caplog: pytest.LogCaptureFixture) -> None:
    """The runner returns at once; the algorithm is joined (not stopped) and finishes its 0.3 s of work."""
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        cs(main_process="runner", graceful_timeout=0.1).execute(
            bundles.algorithm_short, bundles.runner_claims_one_or_return, InMemoryLightningStore()
        )
    assert time.monotonic() - started >= 0.3
    assert "SIGINT" not in caplog.text


def test_main_process_runner_reports_a_failed_algorithm_process() -> None:
    with pytest.raises(RuntimeError, match=r"Subprocesses failed: algorithm \(pid \d+, exitcode=1\)"):
        cs(main_process="runner").execute(
            bundles.algorithm_raises, bundles.runner_cooperative, InMemoryLightningStore()
        )


def test_port_in_use_fails_before_runners_poll() -> None:
    blocker = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0)
    blocker.start()
    try:
        started = time.monotonic()
        with pytest.raises(OSError, match="already in use"):
            cs(n_runners=2, server_port=blocker.port).execute(
                bundles.algorithm_returns, bundles.runner_claims, InMemoryLightningStore()
            )
        assert time.monotonic() - started < 3
    finally:
        blocker.stop()


def test_crashed_runner_is_reported_with_name_pid_and_code_within_a_second(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError) as info:
        cs(n_runners=2).execute(bundles.algorithm_until_event, bundles.runner_exits_hard, InMemoryLightningStore())
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    message = str(info.value)
    assert message.startswith("Subprocesses failed: ")
    assert "runner-0 (pid " in message and "runner-1 (pid " in message and "exitcode=3)" in message
    died = [r.getMessage() for r in caplog.records if "died with exit code 3" in r.getMessage()]
    assert died and died[0].startswith("runner-")


def test_runner_exception_is_a_failure_with_exit_code_1() -> None:
    with pytest.raises(RuntimeError, match=r"Subprocesses failed: runner-0 \(pid \d+, exitcode=1\)"):
        cs(n_runners=1).execute(bundles.algorithm_until_event, bundles.runner_crashes, InMemoryLightningStore())


def test_failed_runner_is_restarted_when_the_policy_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AGL_TEST_MARKER_DIR", str(tmp_path))
    store = InMemoryLightningStore()
    with caplog.at_level(logging.ERROR):
        cs(n_runners=1, restart_failed_runners=1).execute(
            bundles.algorithm_enqueue_and_wait, bundles.runner_crash_once_marker, store
        )
    assert statuses(store) == ["succeeded"] * 3
    assert "restarting it (restart 1 of 1)" in caplog.text
    assert os.listdir(tmp_path) == ["crashed-0"]


def test_allowed_exit_codes_are_not_failures() -> None:
    cs(n_runners=1, allowed_exit_codes=(0, 3)).execute(
        bundles.algorithm_short, bundles.runner_exits_hard, InMemoryLightningStore()
    )


def test_spawn_start_method() -> None:
    store = InMemoryLightningStore()
    cs(n_runners=2, start_method="spawn").execute(bundles.algorithm_enqueue_and_wait, bundles.runner_claims, store)
    assert statuses(store) == ["succeeded"] * 3


def test_unmanaged_store_is_passed_to_the_runners_as_is() -> None:
    """Unmanaged: no server; each runner process gets the store object itself (here a client of a server)."""
    backing = InMemoryLightningStore()
    server = LightningStoreServer(backing, host="127.0.0.1", port=0)
    server.start()
    try:
        from agl.store.client import LightningStoreClient

        client = LightningStoreClient(server.endpoint)
        cs(n_runners=2, managed_store=False).execute(bundles.algorithm_enqueue_and_wait, bundles.runner_claims, client)
        asyncio.run(client.close())
    finally:
        server.stop()
    assert statuses(backing) == ["succeeded"] * 3


def test_unpicklable_bundle_with_spawn_fails_clearly_and_leaves_no_process(caplog: pytest.LogCaptureFixture) -> None:
    import multiprocessing

    async def local_runner(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        return None

    before = set(multiprocessing.active_children())
    with pytest.raises((AttributeError, TypeError)), caplog.at_level(logging.ERROR):
        cs(n_runners=2, start_method="spawn").execute(bundles.algorithm_returns, local_runner, InMemoryLightningStore())
    assert "must be picklable" in caplog.text
    assert set(multiprocessing.active_children()) <= before
