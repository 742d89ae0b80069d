"""`LitAgentRunner`: claims rollouts, runs a `LitAgent` on them inside a trace, and reports the result."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from agl.env_var import LightningEnvVar
from agl.litagent.litagent import LitAgent, RolloutRawResult
from agl.runner.base import Runner, StopEvent, sleep_until
from agl.runner.hooks import Hook
from agl.runner.system_snapshot import system_snapshot
from agl.store.base import LightningStore
from agl.store.errors import StaleAttemptError, retry_when_full
from agl.types.core import AttemptedRollout, Rollout, RolloutMode
from agl.types.resources import NamedResources
from agl.types.tracer import Span, SpanCoreFields

__all__ = ["LitAgentRunner", "RolloutInterrupted"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_FIRST_POLL_DELAY = 0.02
"""Seconds between polls right after the queue was found empty; doubles up to `poll_interval`."""


class RolloutInterrupted(Exception):
    """The runner was stopped (Ctrl+C, SIGINT, cancellation) while the rollout was running."""


class _NeverSet:
    def is_set(self) -> bool:
        return False


def _is_readable_span(obj: Any) -> bool:
    return not isinstance(obj, (Span, SpanCoreFields)) and hasattr(obj, "get_span_context") and hasattr(obj, "name")


async def _in_daemon_thread(fn: Callable[..., R], *args: Any) -> R:
    """Run a blocking call in a daemon thread (so a stuck agent never holds up the event loop or process exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()
    context = contextvars.copy_context()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = context.run(fn, *args)
        except BaseException as exc:  # delivered to the awaiting task
            try:
                loop.call_soon_threadsafe(settle, future.set_exception, exc)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass
        else:
            try:
                loop.call_soon_threadsafe(settle, future.set_result, result)
            except RuntimeError:
                pass

    threading.Thread(target=target, name=f"agl-agent-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await future


class LitAgentRunner(Runner[T]):
    """Runs a `LitAgent`: claim a rollout, fetch its resources, run the agent in a trace, store spans and the result.

    Args:
        tracer: records the agent's spans into the store.
        max_rollouts: stop after this many rollouts (None: until stopped).
        poll_interval: longest wait between polls of an empty queue; polling starts fast and backs off up to this.
        heartbeat_interval: seconds between worker heartbeats (≤ 0 disables them).
        interval_jitter: random spread (±) applied to poll and heartbeat intervals.
        heartbeat_launch_mode: "thread" (own thread and loop) or "asyncio" (a task on the runner's loop).
        heartbeat_include_gpu: add GPU figures to heartbeats (needs gpustat).
        concurrency: rollouts this runner runs at once (for I/O-bound agents, e.g. waiting on an LLM server).
    """

    def __init__(
        self,
        tracer: Any,
        max_rollouts: int | None = None,
        poll_interval: float = 5.0,
        heartbeat_interval: float = 10.0,
        interval_jitter: float = 0.5,
        heartbeat_launch_mode: Literal["thread", "asyncio"] = "thread",
        heartbeat_include_gpu: bool = False,
        concurrency: int = 1,
    ) -> None:
        if max_rollouts is not None and max_rollouts < 0:
            raise ValueError(f"max_rollouts must be >= 0 or None, got {max_rollouts}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if interval_jitter < 0:
            raise ValueError(f"interval_jitter must be >= 0, got {interval_jitter}")
        if heartbeat_launch_mode not in ("thread", "asyncio"):
            raise ValueError(f"heartbeat_launch_mode must be 'thread' or 'asyncio', got {heartbeat_launch_mode!r}")
        self.tracer = tracer
        self.max_rollouts = max_rollouts
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.interval_jitter = interval_jitter
        self.heartbeat_launch_mode = heartbeat_launch_mode
        self.heartbeat_include_gpu = heartbeat_include_gpu
        self.concurrency = concurrency
        self._agent: LitAgent[T] | None = None
        self._hooks: list[Hook] = []
        self._store: LightningStore | None = None
        self.worker_id: int | None = None
        """The worker number given by `init_worker` (None before it and after `teardown_worker`)."""

    # -- lifecycle --------------------------------------------------------------------------------------------
    def init(self, agent: LitAgent[T], *, hooks: Sequence[Hook] | None = None, **kwargs: Any) -> None:
        """Attach the agent and hooks, and initialise the tracer."""
        self._agent = agent
        self._hooks = list(hooks or [])
        agent.set_runner(self)
        self.tracer.init()

    def init_worker(self, worker_id: int, store: LightningStore, **kwargs: Any) -> None:
        """Become worker `worker_id` of `store`."""
        self._store = store
        self.worker_id = worker_id
        self.tracer.init_worker(worker_id, store)

    def teardown_worker(self, worker_id: int, *args: Any, **kwargs: Any) -> None:
        """Release the tracer's worker state."""
        self.worker_id = None
        self.tracer.teardown_worker(worker_id)

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        """Release the tracer and forget the agent."""
        self.tracer.teardown()
        self._agent = None
        self._hooks = []

    def get_worker_id(self) -> str:
        """This worker's id in the store, `Worker-<n>` (after `AGL_WORKER_ID_PREFIX` when that is set)."""
        prefix = os.environ.get(LightningEnvVar.AGL_WORKER_ID_PREFIX.value, "")
        return f"{prefix}Worker-{self.worker_id if self.worker_id is not None else 0}"

    def get_agent(self) -> LitAgent[T]:
        """The agent (RuntimeError before `init`)."""
        if self._agent is None:
            raise RuntimeError("The runner has no agent: call init(agent) first")
        return self._agent

    def get_store(self) -> LightningStore:
        """The store (RuntimeError before `init_worker`)."""
        if self._store is None:
            raise RuntimeError("The runner has no store: call init_worker(worker_id, store) first")
        return self._store

    # -- the loop ---------------------------------------------------------------------------------------------
    def _jittered(self, interval: float) -> float:
        spread = min(self.interval_jitter, interval / 2)
        return max(0.01, interval + random.uniform(-spread, spread))

    async def iter(self, *, event: StopEvent | None = None) -> None:
        """Claim and run rollouts (up to `concurrency` at once) until `event` is set or `max_rollouts` are claimed.

        Rollouts in progress when the event is set are finished first (the event is cooperative); if `iter` itself
        is cancelled, they are interrupted and recorded as failed.
        """
        event = event if event is not None else _NeverSet()
        heartbeat = self._start_heartbeat()
        claimed_count = 0
        finished = 0
        in_flight: set[asyncio.Task[None]] = set()
        delay = min(_FIRST_POLL_DELAY, self.poll_interval)
        try:
            while not event.is_set():
                remaining = None if self.max_rollouts is None else self.max_rollouts - claimed_count
                if remaining == 0:
                    break
                room = self.concurrency - len(in_flight)
                claimed: list[AttemptedRollout] = []
                if room > 0:
                    claimed = await self._claim(room if remaining is None else min(room, remaining))
                for rollout in claimed:
                    in_flight.add(asyncio.create_task(self._run(rollout, raise_on_error=False)))
                claimed_count += len(claimed)
                if claimed:
                    delay = min(_FIRST_POLL_DELAY, self.poll_interval)
                    if len(in_flight) < self.concurrency:
                        continue  # there may be more waiting: claim again at once
                    wait = None  # full: wait for a slot
                else:
                    wait = self._jittered(delay)
                    delay = min(delay * 2, self.poll_interval)
                if in_flight:
                    done, in_flight = await asyncio.wait(in_flight, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                    finished += self._reap(done, finished)
                elif wait is not None and await sleep_until(wait, event, check_every=min(0.1, wait)):
                    break
            if in_flight:  # cooperative stop: let the rollouts in progress finish
                done, _ = await asyncio.wait(in_flight)
                finished += self._reap(done, finished)
                in_flight = set()
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            await heartbeat.stop()

    async def _claim(self, limit: int) -> list[AttemptedRollout]:
        store = self.get_store()
        worker_id = self.get_worker_id()
        try:
            if limit == 1:
                one = await store.dequeue_rollout(worker_id=worker_id)
                return [one] if one is not None else []
            return list(await store.dequeue_many_rollouts(limit=limit, worker_id=worker_id))
        except Exception as exc:
            logger.warning("%s: polling the store failed (%s); retrying", worker_id, exc)
            return []

    def _reap(self, done: set[asyncio.Task[None]], finished_before: int) -> int:
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("%s: a rollout task crashed", self.get_worker_id(), exc_info=task.exception())
        total = finished_before + len(done)
        if finished_before == 0 or total // 10 > finished_before // 10:
            logger.info("%s finished %d rollout(s)", self.get_worker_id(), total)
        return len(done)

    async def step(
        self,
        input: T,
        *,
        resources: NamedResources | None = None,
        mode: RolloutMode | None = None,
        event: StopEvent | None = None,
    ) -> Rollout:
        """Run one task now (publishing `resources` first if given) and return the finished rollout."""
        store = self.get_store()
        resources_id = None
        if resources is not None:
            resources_id = (await store.add_resources(resources)).resources_id
        attempted = await store.start_rollout(
            input, mode=mode, resources_id=resources_id, worker_id=self.get_worker_id()
        )
        await self._run(attempted, raise_on_error=True)
        finished = await store.get_rollout_by_id(attempted.rollout_id)
        if finished is None:
            raise RuntimeError(f"Rollout {attempted.rollout_id} disappeared from the store")
        return finished

    # -- one rollout ------------------------------------------------------------------------------------------
    async def _resources(self, rollout: Rollout) -> NamedResources:
        store = self.get_store()
        if rollout.resources_id is not None:
            update = await store.get_resources_by_id(rollout.resources_id)
            if update is None:
                raise LookupError(
                    f"Rollout {rollout.rollout_id} names resources {rollout.resources_id!r}, which are not in the "
                    "store: publish them with add_resources/update_resources before enqueueing"
                )
            return dict(update.resources)
        update = await store.get_latest_resources()
        return dict(update.resources) if update is not None else {}

    async def _call_agent(self, rollout: Rollout, resources: NamedResources) -> RolloutRawResult:
        agent = self.get_agent()
        training = rollout.mode == "train"
        if agent.is_async():
            method = agent.training_rollout_async if training else agent.validation_rollout_async
            return await method(rollout.input, resources, rollout)
        sync = agent.training_rollout if training else agent.validation_rollout
        return await _in_daemon_thread(sync, rollout.input, resources, rollout)

    async def _hook(self, name: str, **kwargs: Any) -> None:
        for hook in self._hooks:
            try:
                await getattr(hook, name)(agent=self._agent, runner=self, **kwargs)
            except Exception:
                logger.exception("Hook %s.%s failed (ignored)", type(hook).__name__, name)

    async def _run(self, rollout: AttemptedRollout, *, raise_on_error: bool) -> None:
        """Run the agent on a claimed attempt and write the attempt's final status (and error, if any)."""
        rollout_id, attempt_id = rollout.rollout_id, rollout.attempt.attempt_id
        spans: list[Span] = []
        error: BaseException | None = None
        try:
            await self._hook("on_rollout_start", rollout=rollout)
            resources = await self._resources(rollout)
            reward_queued = False
            async with self.tracer.trace_context(name=rollout_id, rollout_id=rollout_id, attempt_id=attempt_id):
                await self._hook("on_trace_start", tracer=self.tracer, rollout=rollout)
                result = await self._call_agent(rollout, resources)
                await self._hook("on_trace_end", tracer=self.tracer, rollout=rollout)
                reward_queued = self._queue_reward(result)
            spans = await self._store_result(result, rollout_id, attempt_id, reward_queued=reward_queued)
        except (asyncio.CancelledError, KeyboardInterrupt) as exc:
            error = RolloutInterrupted(f"the runner was stopped during the rollout ({type(exc).__name__})")
            raise
        except Exception as exc:
            error = exc
            logger.warning("Rollout %s attempt %s failed: %s: %s", rollout_id, attempt_id, type(exc).__name__, exc)
            if raise_on_error:
                raise
        finally:
            await self._hook("on_rollout_end", rollout=rollout, spans=spans)
            await self._finish(rollout_id, attempt_id, error)

    async def _finish(self, rollout_id: str, attempt_id: str, error: BaseException | None) -> None:
        store = self.get_store()
        try:
            if error is None:
                await store.update_attempt(rollout_id, attempt_id, status="succeeded")
            else:
                await store.update_attempt(
                    rollout_id,
                    attempt_id,
                    status="failed",
                    metadata={"error": {"type": type(error).__name__, "message": str(error)}},
                )
        except StaleAttemptError as exc:
            # The rollout moved on without this attempt (timed out, requeued, cancelled): leave it and take new work.
            logger.warning("Rollout %s moved on; abandoning attempt %s: %s", rollout_id, attempt_id, exc)
        except Exception:
            logger.exception("Could not record the end of rollout %s attempt %s", rollout_id, attempt_id)

    def _queue_reward(self, result: RolloutRawResult) -> bool:
        """For a numeric result, have the tracer store the reward span with its own last batch of spans.

        Saves a sequence-id call and an `add_span` call per rollout: the traced spans and the reward go to the store
        in one allocation and one `add_many_spans`, the reward last. False when the tracer cannot do it (then
        `_store_result` stores the reward itself).
        """
        if not isinstance(result, (bool, int, float)):
            return False
        queue = getattr(self.tracer, "store_with_trace", None)
        if queue is None:
            return False
        from agl.emitter import emit_reward

        return bool(queue(emit_reward(float(result), propagate=False)))

    async def _store_result(
        self, result: RolloutRawResult, rollout_id: str, attempt_id: str, *, reward_queued: bool = False
    ) -> list[Span]:
        """Turn what the agent returned into stored spans; returns the rollout's spans."""
        store = self.get_store()
        traced = list(self.tracer.get_last_trace())
        if result is None:
            return traced
        if isinstance(result, (bool, int, float)):
            if not isinstance(result, float):
                logger.warning(
                    "Rollout %s returned %s %r; using it as a float reward", rollout_id, type(result).__name__, result
                )
            if reward_queued:
                return traced  # stored by the tracer with its last batch; the reward span is the last of them
            from agl.emitter import emit_reward

            core = emit_reward(float(result), propagate=False)
            sequence_id = await store.get_next_span_sequence_id(rollout_id, attempt_id)
            reward = Span.from_core_fields(core, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=sequence_id)
            stored = await store.add_span(reward)
            return traced + ([stored] if stored is not None else [])
        if not isinstance(result, list):
            raise TypeError(f"A rollout must return None, a number or a list of spans; got {type(result).__name__}")
        if not result:
            logger.warning("Rollout %s returned an empty list of spans", rollout_id)
            return traced
        items: list[Any] = result
        if all(isinstance(s, Span) for s in items):
            return list(await retry_when_full(lambda: store.add_many_spans(items)))
        if all(isinstance(s, SpanCoreFields) for s in items):
            ids = await store.get_many_span_sequence_ids([(rollout_id, attempt_id)] * len(items))
            spans = [
                Span.from_core_fields(core, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq)
                for core, seq in zip(items, ids, strict=True)
            ]
            return list(await retry_when_full(lambda: store.add_many_spans(spans)))
        if all(_is_readable_span(s) for s in items):
            known = {s.span_id for s in traced}
            fresh = [s for s in items if format(s.get_span_context().span_id, "016x") not in known]
            if len(fresh) < len(items):
                logger.warning(
                    "Rollout %s returned spans the tracer already stored; storing only the others", rollout_id
                )
            if not fresh:
                return traced
            ids = await store.get_many_span_sequence_ids([(rollout_id, attempt_id)] * len(fresh))
            spans = [Span.from_opentelemetry(s, rollout_id, attempt_id, seq) for s, seq in zip(fresh, ids, strict=True)]
            return traced + list(await retry_when_full(lambda: store.add_many_spans(spans)))
        kinds = sorted({type(s).__name__ for s in items})
        raise ValueError(
            f"A rollout's list of spans must hold one kind (Span, SpanCoreFields or ReadableSpan); got {kinds}"
        )

    # -- heartbeats -------------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> _Heartbeat:
        beat = _Heartbeat(self)
        if self.heartbeat_interval > 0:
            beat.start()
        return beat


class _Heartbeat:
    """Sends `update_worker(worker_id, system_snapshot())` every interval, on its own thread or as a task."""

    def __init__(self, runner: LitAgentRunner[Any]) -> None:
        self.runner = runner
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.runner.heartbeat_launch_mode == "asyncio":
            self._task = asyncio.get_running_loop().create_task(self._loop())
        else:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="agl-heartbeat", daemon=True)
            self._thread.start()

    async def _loop(self) -> None:
        runner = self.runner
        store = runner.get_store()
        worker_id = runner.get_worker_id()
        interval = runner.heartbeat_interval
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                snapshot = await asyncio.to_thread(system_snapshot, runner.heartbeat_include_gpu)
                await asyncio.wait_for(store.update_worker(worker_id, snapshot), timeout=interval)
            except Exception as exc:
                logger.warning("%s: heartbeat failed: %s", worker_id, exc)
            wait = runner._jittered(interval) - (time.monotonic() - started)
            if await sleep_until(max(wait, 0.0), self._stop, check_every=0.1):
                break
            if self._stop.is_set():
                break

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
