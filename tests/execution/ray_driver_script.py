"""A Ray driver for the driver-death test: `python ray_driver_script.py GCS_ADDRESS PID_DIR`.

The strategy connects to the running cluster (`address=`, with a runtime_env telling the actors PID_DIR), serves the
store on the node's IP with a generated token, and runs two runner actors that write their pids there until the
driver is stopped.
"""

from __future__ import annotations

import sys

from agl.execution import RayExecutionStrategy
from agl.store.memory import InMemoryLightningStore
from tests.execution import agents, bundles


def main() -> None:
    address, pid_dir = sys.argv[1], sys.argv[2]
    strategy = RayExecutionStrategy(
        n_runners=2, address=address, runtime_env={"env_vars": {"AGL_TEST_PID_DIR": pid_dir}}
    )
    strategy.execute(bundles.algorithm_until_event, agents.runner_writes_pid_then_waits, InMemoryLightningStore())
    print("DRIVER-RETURNED", flush=True)


if __name__ == "__main__":
    main()
