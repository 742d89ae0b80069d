"""A Ray driver for the driver-death test: `python ray_driver_script.py GCS_ADDRESS PID_DIR`.

Connects to the running cluster, runs two runner actors that write their pids into PID_DIR, and runs until killed.
"""

from __future__ import annotations

import sys

import ray

from agl.execution import RayExecutionStrategy
from agl.store.memory import InMemoryLightningStore
from tests.execution import agents, bundles


def main() -> None:
    address, pid_dir = sys.argv[1], sys.argv[2]
    ray.init(address=address, runtime_env={"env_vars": {"AGL_TEST_PID_DIR": pid_dir}}, logging_level="WARNING")
    print("DRIVER-CONNECTED", flush=True)
    RayExecutionStrategy(n_runners=2).execute(
        bundles.algorithm_until_event, agents.runner_writes_pid_then_waits, InMemoryLightningStore()
    )


if __name__ == "__main__":
    main()
