"""Compatibility check: Agent Lightning 0.3.0's own, unmodified `LightningStoreClient` against a running store server.

Runs under the Python of a side virtualenv that has `agentlightning==0.3.0` installed (never AGL's venv: this file
imports only agentlightning, OpenTelemetry and the standard library). It starts nothing; point it at a server:

    .venv/bin/agl store --port 4760 &                       # AGL's server, in AGL's venv
    /tmp/al-venv/bin/python bench/al_compat.py --url http://127.0.0.1:4760

Every call an Agent Lightning runner and algorithm make is exercised (enqueue, dequeue, sequence ids, add_span,
add_otel_span with a real OpenTelemetry SDK span, add_many_spans, update_attempt to succeeded, query_spans,
wait_for_rollouts, resources, workers, statistics, unknown ids) and its answer is checked. One line per call, then
a summary; the exit code is the number of failed checks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # agentlightning imports litellm; stay offline


def _otel_span(name: str) -> Any:
    """A finished span from the real OpenTelemetry SDK (what AL's tracer hands to `add_otel_span`)."""
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    tracer = provider.get_tracer("al-compat")
    with tracer.start_as_current_span(name, attributes={"gen_ai.request.model": "m", "step": 1}) as span:
        span.add_event("thinking", {"k": "v"})
    return span


async def run(url: str) -> list[tuple[str, bool, str]]:
    from agentlightning.store.client_server import LightningStoreClient
    from agentlightning.types import Span

    results: list[tuple[str, bool, str]] = []
    client = LightningStoreClient(url, retry_delays=(0.2,), health_retry_delays=(0.1,))

    async def check(name: str, call: Callable[[], Awaitable[Any]], verify: Callable[[Any], str | None]) -> Any:
        try:
            value = await call()
        except Exception as exc:
            results.append((name, False, f"raised {type(exc).__name__}: {exc}"))
            traceback.print_exc(limit=2, file=sys.stderr)
            return None
        try:
            problem = verify(value)
        except Exception as exc:
            problem = f"unexpected answer ({type(exc).__name__}: {exc}): {value!r:.200}"
        results.append((name, problem is None, problem or "ok"))
        return value

    try:
        worker = f"al-compat-{os.getpid()}"
        queued = await check(
            "enqueue_rollout",
            lambda: client.enqueue_rollout({"question": "2+2"}, mode="train", metadata={"src": "al"}),
            lambda r: None if r.status == "queuing" and r.input == {"question": "2+2"} else f"got {r!r:.200}",
        )
        many = await check(
            "enqueue_many_rollouts",
            lambda: client.enqueue_many_rollouts([{"input": i} for i in range(3)]),  # type: ignore[misc]
            lambda rs: None if [r.input for r in rs] == [0, 1, 2] else f"got {rs!r:.200}",
        )
        await check(
            "enqueue_many_rollouts (800, a ~130 KiB body)",
            lambda: client.enqueue_many_rollouts(  # type: ignore[misc]
                [{"input": {"i": i, "text": "q" * 120}, "mode": "val"} for i in range(800)]
            ),
            lambda rs: None if [r.input["i"] for r in rs] == list(range(800)) else f"got {len(rs)} rollouts",
        )
        started = await check(
            "start_rollout",
            lambda: client.start_rollout({"started": True}, mode="test"),
            lambda a: None if a.attempt.sequence_id == 1 and a.input == {"started": True} else f"got {a!r:.200}",
        )
        if started is not None:
            srid, said = started.rollout_id, started.attempt.attempt_id
            await check(
                "update_rollout(metadata)",
                lambda: client.update_rollout(srid, metadata={"edited": True}),
                lambda r: None if r.metadata == {"edited": True} else f"got {r!r:.200}",
            )
            await check(
                "get_many_span_sequence_ids",
                lambda: client.get_many_span_sequence_ids([(srid, said), (srid, said)]),
                lambda ids: None if len(ids) == 2 and ids[0] < ids[1] else f"got {ids!r}",
            )
            await check(
                "get_latest_attempt",
                lambda: client.get_latest_attempt(srid),
                lambda a: None if a is not None and a.attempt_id == said else f"got {a!r:.200}",
            )
            await check(
                "update_attempt(failed)",
                lambda: client.update_attempt(srid, said, status="failed"),
                lambda a: None if a.status == "failed" else f"got {a!r:.200}",
            )
            await check(
                "start_attempt",
                lambda: client.start_attempt(srid),
                lambda a: None if a.attempt.sequence_id == 2 else f"got {a!r:.200}",
            )
            await check(
                "update_rollout(cancelled)",
                lambda: client.update_rollout(srid, status="cancelled"),
                lambda r: None if r.status == "cancelled" else f"got {r!r:.200}",
            )
        claimed = await check(
            "dequeue_rollout(worker_id)",
            lambda: client.dequeue_rollout(worker_id=worker),
            lambda a: (
                None
                if queued is not None and a.rollout_id == queued.rollout_id and a.attempt.status == "preparing"
                else f"got {a!r:.200}"
            ),
        )
        if claimed is None:
            return results
        rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
        seq = await check(
            "get_next_span_sequence_id",
            lambda: client.get_next_span_sequence_id(rid, aid),
            lambda s: None if isinstance(s, int) and s >= 1 else f"got {s!r}",
        )
        now = time.time()
        span = Span(
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq or 1,
            trace_id="ab" * 16,
            span_id="cd" * 8,
            parent_id=None,
            name="openai.chat.completion",
            status={"status_code": "OK"},  # type: ignore[arg-type]
            attributes={"gen_ai.request.model": "qwen", "gen_ai.usage.prompt_tokens": 12},
            events=[],
            links=[],
            start_time=now,
            end_time=now + 0.01,
            context=None,
            parent=None,
            resource={"attributes": {"service.name": "al"}, "schema_url": ""},  # type: ignore[arg-type]
        )
        await check(
            "add_span",
            lambda: client.add_span(span),
            lambda s: (
                None if s is not None and s.span_id == span.span_id and s.name == span.name else f"got {s!r:.200}"
            ),
        )
        await check(
            "add_otel_span (real SDK span)",
            lambda: client.add_otel_span(rid, aid, _otel_span("tool.call")),
            lambda s: (
                None if s is not None and s.name == "tool.call" and s.sequence_id > (seq or 0) else f"got {s!r:.200}"
            ),
        )
        batch = [
            span.model_copy(update={"span_id": f"{i:016x}", "sequence_id": 100 + i, "name": f"step-{i}"})
            for i in range(3)
        ]
        await check(
            "add_many_spans",
            lambda: client.add_many_spans(batch),
            lambda ss: None if [s.name for s in ss] == ["step-0", "step-1", "step-2"] else f"got {ss!r:.200}",
        )
        huge = span.model_copy(
            update={"span_id": "ee" * 8, "sequence_id": 200, "name": "big", "attributes": {"blob": "b" * 300_000}}
        )
        await check(
            "add_span (a ~300 KiB span)",
            lambda: client.add_span(huge),
            lambda s: None if s is not None and s.attributes["blob"] == "b" * 300_000 else f"got {s!r:.200}",
        )
        await check(
            "update_attempt(running)",
            lambda: client.update_attempt(rid, aid, status="running"),
            lambda a: None if a.status == "running" else f"got {a!r:.200}",
        )
        await check(
            "update_attempt(succeeded)",
            lambda: client.update_attempt(rid, aid, status="succeeded"),
            lambda a: None if a.status == "succeeded" and a.end_time is not None else f"got {a!r:.200}",
        )
        await check(
            "query_spans",
            lambda: client.query_spans(rid),
            lambda page: (
                None
                if len(page) == 6
                and {s.name for s in page}
                == {"openai.chat.completion", "tool.call", "step-0", "step-1", "step-2", "big"}
                else f"got {[s.name for s in page]}"
            ),
        )
        await check(
            "query_spans(attempt_id='latest')",
            lambda: client.query_spans(rid, "latest"),
            lambda page: None if len(page) == 6 else f"got {len(page)} spans",
        )
        await check(
            "wait_for_rollouts",
            lambda: client.wait_for_rollouts(rollout_ids=[rid], timeout=0.1),
            lambda rs: (
                None if [r.rollout_id for r in rs] == [rid] and rs[0].status == "succeeded" else f"got {rs!r:.200}"
            ),
        )
        await check(
            "get_rollout_by_id",
            lambda: client.get_rollout_by_id(rid),
            lambda r: None if r is not None and r.status == "succeeded" else f"got {r!r:.200}",
        )
        await check(
            "get_rollout_by_id(unknown) -> None",
            lambda: client.get_rollout_by_id("ro-does-not-exist"),
            lambda r: None if r is None else f"got {r!r:.200}",
        )
        await check(
            "query_rollouts(status_in)",
            lambda: client.query_rollouts(status_in=["succeeded"]),
            lambda page: None if rid in [r.rollout_id for r in page] else f"got {page!r:.200}",
        )
        await check(
            "query_attempts",
            lambda: client.query_attempts(rid),
            lambda page: None if [a.attempt_id for a in page] == [aid] else f"got {page!r:.200}",
        )
        others = await check(
            "dequeue_many_rollouts",
            lambda: client.dequeue_many_rollouts(limit=5, worker_id=worker),
            lambda rs: (  # the 3 queued before the 800, then the first 2 of those
                None
                if many is not None and [r.input for r in rs[:3]] == [0, 1, 2] and len(rs) == 5
                else f"got {rs!r:.200}"
            ),
        )
        for other in others or []:
            await client.update_attempt(other.rollout_id, other.attempt.attempt_id, status="failed")
        added = await check(
            "add_resources",
            lambda: client.add_resources(
                {"llm": {"resource_type": "llm", "endpoint": "http://x/v1", "model": "m"}}  # type: ignore[dict-item]
            ),
            lambda u: None if u.resources_id and "llm" in u.resources else f"got {u!r:.200}",
        )
        await check(
            "get_latest_resources",
            lambda: client.get_latest_resources(),
            lambda u: (
                None
                if u is not None and added is not None and u.resources_id == added.resources_id
                else f"got {u!r:.200}"
            ),
        )
        if added is not None:
            prompt = {"resource_type": "prompt_template", "template": "Q: {q}" + " pad" * 30_000, "engine": "f-string"}
            await check(
                "update_resources (a ~120 KiB resource)",
                lambda: client.update_resources(added.resources_id, {"prompt": prompt}),  # type: ignore[dict-item]
                lambda u: None if "prompt" in u.resources else f"got {u!r:.200}",
            )
            await check(
                "get_resources_by_id",
                lambda: client.get_resources_by_id(added.resources_id),
                lambda u: None if u is not None and "prompt" in u.resources else f"got {u!r:.200}",
            )
            await check(
                "query_resources",
                lambda: client.query_resources(),
                lambda page: None if added.resources_id in [u.resources_id for u in page] else f"got {page!r:.200}",
            )
        await check(
            "update_worker (heartbeat)",
            lambda: client.update_worker(worker, {"cpu": 1.0}),
            lambda w: None if w.worker_id == worker else f"got {w!r:.200}",
        )
        await check(
            "get_worker_by_id",
            lambda: client.get_worker_by_id(worker),
            lambda w: None if w is not None and w.worker_id == worker else f"got {w!r:.200}",
        )
        await check(
            "query_workers",
            lambda: client.query_workers(),
            lambda page: None if worker in [w.worker_id for w in page] else f"got {page!r:.200}",
        )
        await check(
            "statistics",
            lambda: client.statistics(),
            lambda s: None if isinstance(s, dict) else f"got {s!r:.200}",
        )
    finally:
        await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the store server's base URL, e.g. http://127.0.0.1:4760")
    args = parser.parse_args()
    import agentlightning

    version = getattr(agentlightning, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("agentlightning")
    print(f"agentlightning {version} LightningStoreClient -> {args.url}")
    results = asyncio.run(run(args.url))
    width = max(len(name) for name, _, _ in results) if results else 0
    for name, ok, detail in results:
        print(f"  {'OK  ' if ok else 'FAIL'} {name:<{width}}  {'' if ok else detail}")
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"{len(results) - failed}/{len(results)} checks passed")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
