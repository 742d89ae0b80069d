"""Runners on other hosts, for real: network namespaces joined by veth pairs, so every call crosses an interface.

Three hosts, addressed from the documentation range 198.51.100.0/24, with no route out of the namespaces:

    store (h0) 198.51.100.1 ──veth── 198.51.100.2 (h1) runners
               198.51.100.5 ──veth── 198.51.100.6 (h2) runners

h0 runs `agl store` bound to every interface with a token (and the driver that enqueues work and reads results,
on h0's loopback); h1 and h2 each run `agl runner --n-runners 2` against h0's address on their link. The test checks
the full loop, the token, that killing every process of a runner host loses no rollout, and a draining stop. It
needs root and `ip netns` (iproute2); elsewhere it skips, saying so. Every namespace and process it makes is removed
at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PORT = 4747
TOKEN = "multi-host-test-token"

AGENT = '''
import asyncio
import os
from typing import Any

import agl


class HostAgent(agl.LitAgent[Any]):
    """Notes which host ran it, sleeps as long as the task says, and returns the task's value as the reward."""

    async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
        agl.emit_annotation({"host": os.environ["AGL_TEST_HOST"], "task": task["i"]})
        await asyncio.sleep(task["sleep"])
        return float(task["i"])


agent = HostAgent()
'''

DRIVER = """
import asyncio
import json
import sys

import agl

URL = "http://127.0.0.1:4747"


async def enqueue(n: int, sleep: float, tag: str) -> None:
    client = agl.LightningStoreClient(URL)
    config = agl.RolloutConfig(unresponsive_seconds=5, max_attempts=4, retry_condition=["unresponsive"])
    rollouts = [{"input": {"i": i, "sleep": sleep, "tag": tag}, "config": config} for i in range(n)]
    ids = [r.rollout_id for r in await client.enqueue_many_rollouts(rollouts)]
    await client.close()
    print(json.dumps(ids))


async def collect(ids: list, timeout: float) -> None:
    client = agl.LightningStoreClient(URL)
    done = await client.wait_for_rollouts(rollout_ids=ids, timeout=timeout)
    result = {"status": {r.rollout_id: r.status for r in done}, "hosts": {}, "rewards": {}, "attempts": {}}
    for rollout_id in ids:
        spans = await client.query_spans(rollout_id, "latest")
        result["hosts"][rollout_id] = [s.attributes["host"] for s in spans if "host" in s.attributes]
        result["rewards"][rollout_id] = agl.find_final_reward(spans)
        result["attempts"][rollout_id] = [a.status for a in await client.query_attempts(rollout_id)]
    await client.close()
    print(json.dumps(result))


async def workers() -> None:
    client = agl.LightningStoreClient(URL)
    print(json.dumps(sorted(w.worker_id for w in await client.query_workers())))
    await client.close()


command = sys.argv[1]
if command == "workers":
    asyncio.run(workers())
elif command == "enqueue":
    asyncio.run(enqueue(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
else:
    asyncio.run(collect(json.loads(sys.argv[2]), float(sys.argv[3])))
"""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


class Hosts:
    """Network namespaces h0, h1, h2 joined as in the module docstring; removed by `close()`."""

    def __init__(self) -> None:
        tag = f"agl{os.getpid() % 100000}"
        self.names = {host: f"{tag}{host}" for host in ("h0", "h1", "h2")}
        self.links = [(f"{tag}a1", f"{tag}b1"), (f"{tag}a2", f"{tag}b2")]

    def up(self) -> None:
        for name in self.names.values():
            _run("ip", "netns", "add", name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        plan = [("h1", "198.51.100.1/30", "198.51.100.2/30"), ("h2", "198.51.100.5/30", "198.51.100.6/30")]
        for (store_end, runner_end), (host, store_address, runner_address) in zip(self.links, plan, strict=True):
            _run("ip", "link", "add", store_end, "type", "veth", "peer", "name", runner_end)
            _run("ip", "link", "set", store_end, "netns", self.names["h0"])
            _run("ip", "link", "set", runner_end, "netns", self.names[host])
            _run("ip", "-n", self.names["h0"], "addr", "add", store_address, "dev", store_end)
            _run("ip", "-n", self.names[host], "addr", "add", runner_address, "dev", runner_end)
            _run("ip", "-n", self.names["h0"], "link", "set", store_end, "up")
            _run("ip", "-n", self.names[host], "link", "set", runner_end, "up")

    def pids(self, host: str) -> list[int]:
        done = _run("ip", "netns", "pids", self.names[host], check=False)
        return [int(p) for p in done.stdout.split()]

    def kill_all(self, host: str) -> int:
        """SIGKILL every process in `host`, as a machine losing power would; how many there were."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def close(self) -> None:
        for host, name in self.names.items():
            self.kill_all(host)
            _run("ip", "netns", "del", name, check=False)
        for store_end, _ in self.links:  # normally gone with their namespace; left over only if a step failed
            _run("ip", "link", "del", store_end, check=False)

    def popen(self, host: str, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        command = ["ip", "netns", "exec", self.names[host], *args]
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def run(self, host: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Any:
        done = subprocess.run(
            ["ip", "netns", "exec", self.names[host], *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    # CI sets AGL_REQUIRE_NETNS=1: there a machine without namespaces fails the test instead of skipping it.
    missing = pytest.fail if os.environ.get("AGL_REQUIRE_NETNS") == "1" else pytest.skip
    if sys.platform != "linux" or shutil.which("ip") is None:
        missing("needs Linux and iproute2's `ip` for network namespaces")
    probe = f"aglprobe{os.getpid() % 100000}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        missing(f"this machine does not let the tests make network namespaces (needs root): {added.stderr.strip()}")
    _run("ip", "netns", "del", probe)
    made = Hosts()
    try:
        made.up()
        yield made
    finally:
        made.close()


def _wait_for(what: str, predicate: Any, timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = {p.name: p.read_text(errors="replace")[-2000:] for p in logs.glob("*.log")}
    raise AssertionError(f"{what} not within {timeout}s; logs: {json.dumps(tails, indent=1)}")


def test_runners_on_two_hosts_train_through_a_store_on_a_third(hosts: Hosts, tmp_path: Path) -> None:
    (tmp_path / "netns_agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    python = sys.executable
    store_args = [python, "-m", "agl.cli", "store", "--host", "0.0.0.0", "--port", str(PORT)]
    store_args += ["--token-file", str(token_file), "--claim-timeout", "3", "--drain-timeout", "20"]
    store = hosts.popen("h0", store_args, env, tmp_path, tmp_path / "store.log")
    driver_env = {**env, "AGL_STORE_TOKEN": TOKEN}

    def healthy() -> bool:
        return "AGL store at" in (tmp_path / "store.log").read_text(errors="replace")

    _wait_for("the store on h0", healthy, 30, tmp_path)
    runners = {}
    for host, address in (("h1", "198.51.100.1"), ("h2", "198.51.100.5")):
        args = [python, "-m", "agl.cli", "runner", "--store", f"http://{address}:{PORT}"]
        args += ["--agent", "netns_agent:agent", "--n-runners", "2", "--token-file", str(token_file), "--wait", "30"]
        runners[host] = hosts.popen(host, args, {**env, "AGL_TEST_HOST": host}, tmp_path, tmp_path / f"{host}.log")

    def all_runners_polling() -> bool:
        ids = hosts.run("h0", [python, "driver.py", "workers"], driver_env, tmp_path, 60)
        return len(ids) == 4

    _wait_for("4 runners (2 per host, each its own worker id)", all_runners_polling, 60, tmp_path)

    # The full loop: 16 rollouts of 0.3 s, spread over both runner hosts, each with its reward and its host's span.
    ids = hosts.run("h0", [python, "driver.py", "enqueue", "16", "0.3", "loop"], driver_env, tmp_path, 60)
    result = hosts.run("h0", [python, "driver.py", "collect", json.dumps(ids), "60"], driver_env, tmp_path, 90)
    assert set(result["status"].values()) == {"succeeded"} and len(result["status"]) == 16, result
    assert [result["rewards"][rid] for rid in ids] == [float(i) for i in range(16)]
    ran_on = {rid: hosts_seen[0] for rid, hosts_seen in result["hosts"].items()}
    assert set(ran_on.values()) == {"h1", "h2"}, ran_on

    # The token: a runner host reaches the store's address but not its data without the token.
    probe = (
        "import urllib.request, urllib.error\n"
        "for headers in ({}, {'Authorization': 'Bearer wrong'}):\n"
        "    request = urllib.request.Request('http://198.51.100.1:4747/v1/agl/rollouts', headers=headers)\n"
        "    try:\n"
        "        urllib.request.urlopen(request, timeout=5)\n"
        "        print(200)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        print(exc.code)\n"
        "print(urllib.request.urlopen('http://198.51.100.1:4747/v1/agl/health', timeout=5).status)\n"
    )
    denied = subprocess.run(
        ["ip", "netns", "exec", hosts.names["h1"], python, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert denied.stdout.split() == ["401", "401", "200"], denied.stdout + denied.stderr

    # Lose a whole runner host mid-run: every rollout still succeeds, on the host that is left.
    ids = hosts.run("h0", [python, "driver.py", "enqueue", "12", "1.0", "crash"], driver_env, tmp_path, 60)
    time.sleep(1.5)  # both hosts hold claims now (4 runners, 1 s rollouts)
    assert hosts.kill_all("h2") >= 3  # the `agl runner` process and its 2 runner processes (ip netns exec is gone)
    runners["h2"].wait(10)
    result = hosts.run("h0", [python, "driver.py", "collect", json.dumps(ids), "90"], driver_env, tmp_path, 120)
    assert set(result["status"].values()) == {"succeeded"} and len(result["status"]) == 12, result
    assert [result["rewards"][rid] for rid in ids] == [float(i) for i in range(12)]
    requeued = [rid for rid, attempts in result["attempts"].items() if len(attempts) > 1]
    assert requeued, "killing h2 mid-run should have cost some rollouts an attempt"
    for rid in requeued:
        assert result["attempts"][rid][-1] == "succeeded" and result["hosts"][rid] == ["h1"], result

    # A draining stop: SIGTERM to the store, and the runners left on h1 hear it and exit cleanly.
    store.send_signal(signal.SIGTERM)
    assert runners["h1"].wait(30) == 0, (tmp_path / "h1.log").read_text(errors="replace")[-3000:]
    assert store.wait(30) == 0, (tmp_path / "store.log").read_text(errors="replace")[-3000:]
