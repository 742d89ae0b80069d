"""What each extra must enable on its own; `.ci/run` runs this in a fresh venv holding only that extra.

    python tests/install/extras_check.py server     # pip install 'agl[server]'
    python tests/install/extras_check.py tracing    # pip install 'agl[tracing]'
    python tests/install/extras_check.py train      # pip install 'agl[train]'
    python tests/install/extras_check.py cli        # pip install 'agl[cli]'
    python tests/install/extras_check.py ray        # pip install 'agl[ray]'
    python tests/install/extras_check.py postgres   # pip install 'agl[postgres]'

Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def _agl_command(*args: str) -> str:
    agl_bin = Path(sys.executable).with_name("agl")
    done = subprocess.run([str(agl_bin), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"agl {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout


async def check_server() -> None:
    import agl

    server = agl.LightningStoreServer(agl.InMemoryLightningStore(), "127.0.0.1", 0)
    server.start()
    client = agl.LightningStoreClient(server.endpoint)
    try:
        rollout = await client.enqueue_rollout({"q": 1})
        assert (await server.get_rollout_by_id(rollout.rollout_id)) is not None
    finally:
        await client.close()
        server.stop()
    try:
        agl.OtelTracer  # noqa: B018 - the attribute access is what is checked
    except ImportError as exc:
        assert "agl[tracing]" in str(exc), f"the error does not name the extra: {exc}"
    else:
        raise AssertionError("agl.OtelTracer imported without the tracing extra")


async def check_tracing() -> None:
    import agl

    store = agl.InMemoryLightningStore()
    rollout = await store.enqueue_rollout(0.5)

    class Agent(agl.LitAgent[Any]):
        async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
            agl.emit_annotation({"step": 1})
            return float(task)

    runner = agl.LitAgentRunner[Any](agl.OtelTracer(), max_rollouts=1)
    runner.init(Agent())
    runner.init_worker(0, store)
    await asyncio.wait_for(runner.iter(), 30)
    spans = await store.query_spans(rollout.rollout_id)
    assert any(s.attributes.get("step") == 1 for s in spans), spans
    assert agl.find_final_reward(spans) == 0.5


def check_train(strategy: Any = None) -> None:
    import agl

    class Doubler(agl.LitAgent[Any]):
        async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
            return float(task) * 0.5

    class Run(agl.Algorithm):
        async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
            store = self.get_store()
            ids = [(await store.enqueue_rollout(t)).rollout_id for t in train_dataset]
            done = await store.wait_for_rollouts(rollout_ids=ids, timeout=60)
            assert sorted(r.status for r in done) == ["succeeded"] * len(ids), done
            self.rewards = [agl.find_final_reward(await store.query_spans(i)) for i in ids]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    algorithm = Run()
    trainer = agl.Trainer(n_runners=2, algorithm=algorithm, port=port, strategy=strategy)
    trainer.fit(Doubler(), train_dataset=[0.2, 0.4, 0.6, 0.8])
    assert algorithm.rewards == [0.1, 0.2, 0.3, 0.4], algorithm.rewards


def check_cli() -> None:
    import rich  # noqa: F401 - the cli extra's terminal tables

    assert _agl_command("--version").startswith("agl ")
    for command in ("rollouts", "workers", "stats", "spans"):
        assert "usage" in _agl_command(command, "--help")


def check_postgres() -> None:
    import psycopg  # noqa: F401 - the postgres extra's driver
    import psycopg_pool  # noqa: F401

    import agl.store
    from agl.store.postgres import PostgresStoreError

    # The store class loads, reaches for the database and says where it failed (no server is needed for this).
    try:
        agl.store.PostgresLightningStore("postgresql://check:s3cret@127.0.0.1:1/agl", connect_timeout_seconds=2)
    except PostgresStoreError as exc:
        assert "postgresql://check:***@127.0.0.1:1/agl" in str(exc) and "s3cret" not in str(exc), str(exc)
    else:
        raise AssertionError("a store on an unreachable database did not raise PostgresStoreError")


def main(extra: str) -> None:
    if extra == "server":
        asyncio.run(check_server())
    elif extra == "tracing":
        asyncio.run(check_tracing())
    elif extra == "train":
        check_train()
    elif extra == "ray":
        import agl

        check_train(agl.RayExecutionStrategy(n_runners=2, num_cpus=2))
    elif extra == "cli":
        check_cli()
    elif extra == "postgres":
        check_postgres()
    else:
        raise SystemExit(f"unknown extra {extra!r}: use server, tracing, train, cli, ray or postgres")
    print(f"extra {extra!r} OK")


if __name__ == "__main__":
    main(sys.argv[1])
