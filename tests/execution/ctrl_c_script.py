"""Runs a strategy until the test sends it SIGINT (Ctrl+C); prints how execute() ended.

Usage: python -m tests.execution.ctrl_c_script {cs|cs-sync|cs-runner|shm}
"""

from __future__ import annotations

import multiprocessing
import sys

from agl.execution import ClientServerExecutionStrategy, ExecutionStrategy, SharedMemoryExecutionStrategy
from agl.store.memory import InMemoryLightningStore
from tests.execution import bundles


def main() -> int:
    kind = sys.argv[1]
    strategy: ExecutionStrategy
    if kind == "shm":
        strategy = SharedMemoryExecutionStrategy(n_runners=2, main_thread="algorithm", graceful_delay=0.5)
    else:
        strategy = ClientServerExecutionStrategy(
            role="both",
            server_host="127.0.0.1",
            server_port=0,
            n_runners=1 if kind == "cs-runner" else 2,
            main_process="runner" if kind == "cs-runner" else "algorithm",
            graceful_timeout=1.0,
            terminate_timeout=1.0,
        )
    algorithm = (
        bundles.algorithm_prints_then_blocks_its_loop if kind.endswith("-sync") else bundles.algorithm_prints_then_waits
    )
    strategy.execute(algorithm, bundles.runner_cooperative, InMemoryLightningStore())
    print(f"EXECUTE-RETURNED children={len(multiprocessing.active_children())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
