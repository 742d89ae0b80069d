"""What a core install (`pip install agl`, no extras) must do; `.ci/run` runs this with such an install.

    python tests/install/core_check.py http://127.0.0.1:PORT     # a store server started by a full install

Imports AGL and checks that no optional dependency came with it, runs an in-memory store round trip, then the HTTP
client against the given server. Exits non-zero with a message on the first failure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

OPTIONAL = ("uvicorn", "starlette", "prometheus_client", "rich", "torch", "transformers", "opentelemetry", "openai")


async def main(url: str) -> None:
    present = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    assert not present, f"a core install must not hold optional packages, found {present}"
    import agl

    store = agl.InMemoryLightningStore()
    rollout = await store.enqueue_rollout({"q": "2+2"})
    claimed = await store.dequeue_rollout(worker_id="core")
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    span = agl.Span(rollout_id=claimed.rollout_id, attempt_id=claimed.attempt.attempt_id, sequence_id=1,
                    trace_id="0" * 32, span_id="1" * 16, name="reward",
                    attributes={"agentlightning.reward.0.value": 1.0})  # fmt: skip
    await store.add_span(span)
    await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    (done,) = await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=1)
    assert done.status == "succeeded", done

    client = agl.LightningStoreClient(url)
    try:
        remote = await client.enqueue_rollout({"q": "3+3"})
        again = await client.get_rollout_by_id(remote.rollout_id)
        assert again is not None and again.status == "queuing", again
    finally:
        await client.close()
    print(f"core install OK: agl {agl.__version__}, in-memory round trip and client against {url}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
