"""Process supervision for the client-server strategy: spawn runners, notice deaths at once, stop in four steps.

`ProcessSupervisor` owns the runner processes. A monitor thread waits on their sentinels, so a runner that dies is
reported (name, pid, exit code) the moment the kernel reaps it, and is restarted if the restart budget allows.
`stop_processes` is the four-step stop: cooperative event, SIGINT, SIGTERM, SIGKILL, each bounded by a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_sentinels
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal

from agl.execution.events import ExecutionEvent

if TYPE_CHECKING:
    from agl.execution.metrics import LauncherMetrics

__all__ = ["ProcessRecord", "ProcessSupervisor", "StopStep", "describe_process", "stop_processes"]

logger = logging.getLogger(__name__)

StopStep = Literal["event", "SIGINT", "SIGTERM", "SIGKILL"]
"""The step of the four-step stop at which a process ended ("event" = it stopped cooperatively)."""


def describe_process(process: BaseProcess) -> str:
    """`name (pid N, exitcode=C)`, the way every exit-code message names a process."""
    return f"{process.name} (pid {process.pid}, exitcode={process.exitcode})"


def _wait_for_exit(processes: Iterable[BaseProcess], timeout: float) -> list[BaseProcess]:
    """Wait up to `timeout` seconds for the processes to end; returns those still alive."""
    deadline = time.monotonic() + max(0.0, timeout)
    alive = [p for p in processes if p.is_alive()]
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait_sentinels([p.sentinel for p in alive], timeout=remaining)
        alive = [p for p in alive if p.is_alive()]
    return alive


def stop_processes(
    processes: Sequence[BaseProcess],
    event: ExecutionEvent | None,
    graceful_timeout: float,
    terminate_timeout: float,
    on_step: Callable[[StopStep, float], None] | None = None,
) -> dict[int, StopStep]:
    """Stop `processes` in four bounded steps; returns, per pid, the step that ended each process.

    1. set `event` (if given and not set) and wait up to `graceful_timeout`;
    2. send SIGINT to those still alive and wait up to `terminate_timeout`;
    3. SIGTERM (`terminate()`), wait up to `terminate_timeout`;
    4. SIGKILL (`kill()`), wait up to `terminate_timeout`; a process alive after that is logged as an error.
    Processes that had already ended are not in the result. `on_step(step, seconds)` is told how long each step
    that had processes to stop waited for them.
    """
    steps: dict[int, StopStep] = {}
    alive = [p for p in processes if p.pid is not None and p.is_alive()]
    for p in alive:
        assert p.pid is not None
        steps[p.pid] = "event"
    if event is not None and not event.is_set():
        event.set()
    started = time.monotonic()
    had_alive = bool(alive)
    alive = _wait_for_exit(alive, graceful_timeout)
    if on_step is not None and had_alive:
        on_step("event", time.monotonic() - started)

    def escalate(step: StopStep, send: Callable[[BaseProcess], None]) -> None:
        nonlocal alive
        if not alive:
            return
        logger.warning(
            "%s still running %s; sending %s",
            ", ".join(f"{p.name} (pid {p.pid})" for p in alive),
            "after the stop event" if step == "SIGINT" else "after the previous signal",
            step,
        )
        started = time.monotonic()
        for p in alive:
            assert p.pid is not None
            steps[p.pid] = step
            try:
                send(p)
            except (ProcessLookupError, OSError):  # ended in the meantime
                pass
        alive = _wait_for_exit(alive, terminate_timeout)
        if on_step is not None:
            on_step(step, time.monotonic() - started)

    escalate("SIGINT", lambda p: os.kill(p.pid or 0, signal.SIGINT))
    escalate("SIGTERM", lambda p: p.terminate())
    escalate("SIGKILL", lambda p: p.kill())
    for p in alive:
        logger.error("%s (pid %s) is still alive after SIGKILL", p.name, p.pid)
    for p in processes:
        if not p.is_alive():
            p.join(0)
    return steps


@dataclass
class ProcessRecord:
    """One process that ran for a slot: its outcome and how it ended."""

    name: str
    pid: int | None
    exitcode: int | None = None
    crashed: bool = False
    """It ended with a code outside the allowed ones before any stop was asked."""
    restarted: bool = False
    """A replacement was started for it, or would have been had the run not been ending."""
    stop_step: StopStep | None = None
    """The step of the four-step stop that ended it (None: it ended by itself)."""

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exitcode={self.exitcode})"


@dataclass
class _Slot:
    worker_id: int
    name: str
    process: BaseProcess
    restarts: int = 0
    records: list[ProcessRecord] = field(default_factory=list)
    done: bool = False


class ProcessSupervisor:
    """Start one process per worker id, watch them, restart failed ones, and stop them all on request.

    Args:
        ctx: the multiprocessing context that creates the processes.
        target: the process entry point, called as `target(*make_args(worker_id))`; picklable for spawn.
        make_args: the arguments for a worker id.
        worker_ids: one process per id, named `runner-<id>`.
        event: the shared stop event.
        allowed_exit_codes: exit codes that are not failures.
        restart_failed_runners: how many times each worker may be restarted after a failure.
        stop_on_failure: set `event` when a worker fails and cannot be restarted (the run cannot complete).
        metrics: where spawn latencies, exits, restarts and stop step times are recorded (None: nowhere).
    """

    def __init__(
        self,
        ctx: BaseContext,
        target: Callable[..., Any],
        make_args: Callable[[int], tuple[Any, ...]],
        worker_ids: Sequence[int],
        event: ExecutionEvent,
        *,
        allowed_exit_codes: Sequence[int] = (0, -15),
        restart_failed_runners: int = 0,
        stop_on_failure: bool = True,
        name_prefix: str = "runner",
        metrics: LauncherMetrics | None = None,
    ) -> None:
        self.ctx = ctx
        self.target = target
        self.make_args = make_args
        self.worker_ids = list(worker_ids)
        self.event = event
        self.allowed_exit_codes = tuple(allowed_exit_codes)
        self.restart_failed_runners = restart_failed_runners
        self.stop_on_failure = stop_on_failure
        self.name_prefix = name_prefix
        self.metrics = metrics
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._closed = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._monitor: threading.Thread | None = None

    # -- start and watch ---------------------------------------------------------------------------------------

    def _spawn(self, worker_id: int) -> BaseProcess:
        process: BaseProcess = self.ctx.Process(  # type: ignore[attr-defined]
            target=self.target, args=self.make_args(worker_id), name=f"{self.name_prefix}-{worker_id}", daemon=False
        )
        started = time.perf_counter()
        process.start()
        if self.metrics is not None:
            self.metrics.spawned(time.perf_counter() - started)
        return process

    def start(self) -> None:
        """Start every worker process and the monitor thread."""
        with self._lock:
            try:
                for worker_id in self.worker_ids:
                    process = self._spawn(worker_id)
                    self._slots.append(_Slot(worker_id, process.name, process))
                    logger.debug("started %s (pid %s)", process.name, process.pid)
            except BaseException as exc:
                # Leave nothing running behind a failed start (e.g. a bundle that cannot be pickled for spawn).
                for slot in self._slots:
                    slot.process.kill()
                    slot.process.join(5)
                    slot.done = True
                if isinstance(exc, (TypeError, AttributeError)) or type(exc).__name__ == "PicklingError":
                    logger.error(
                        "could not start %s processes with the %r start method: the bundles and the store must be "
                        "picklable (module-level functions, not lambdas or local functions)",
                        self.name_prefix, self.ctx.get_start_method(),
                    )  # fmt: skip
                raise
        self._monitor = threading.Thread(target=self._watch, name="agl-runner-supervisor", daemon=True)
        self._monitor.start()

    @property
    def processes(self) -> list[BaseProcess]:
        """The current process of each worker."""
        with self._lock:
            return [slot.process for slot in self._slots]

    def _watch(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                running = [slot.process for slot in self._slots if not slot.done]
            if not running:
                self._closed.wait(0.05)
                continue
            wait_sentinels([p.sentinel for p in running], timeout=0.2)
            with self._lock:
                if self._stopping:
                    continue
                for slot in self._slots:
                    if not slot.done and not slot.process.is_alive():
                        self._on_exit(slot)
                self._changed.notify_all()

    def _on_exit(self, slot: _Slot) -> None:
        """Called with the lock held when a worker process ended by itself (no stop was asked)."""
        process = slot.process
        process.join(0)
        code = process.exitcode
        record = ProcessRecord(process.name or slot.name, process.pid, code)
        slot.records.append(record)
        if self.metrics is not None:
            self.metrics.exited(code)
        if code in self.allowed_exit_codes:
            logger.info("%s (pid %s) finished with exit code %s", slot.name, process.pid, code)
            slot.done = True
            return
        record.crashed = True
        if self.event.is_set():
            # The run is ending: no restart. Within the restart budget the crash is forgiven (it is logged); beyond
            # it, it is a failure.
            record.restarted = slot.restarts < self.restart_failed_runners
            logger.error("%s (pid %s) died with exit code %s while the run was stopping", slot.name, process.pid, code)
            slot.done = True
            return
        if slot.restarts < self.restart_failed_runners:
            slot.restarts += 1
            record.restarted = True
            if self.metrics is not None:
                self.metrics.restarted()
            logger.error(
                "%s (pid %s) died with exit code %s; restarting it (restart %d of %d)",
                slot.name, process.pid, code, slot.restarts, self.restart_failed_runners,
            )  # fmt: skip
            slot.process = self._spawn(slot.worker_id)
            return
        slot.done = True
        if self.stop_on_failure:
            logger.error("%s (pid %s) died with exit code %s; stopping the run", slot.name, process.pid, code)
            self.event.set()
        else:
            logger.error("%s (pid %s) died with exit code %s", slot.name, process.pid, code)

    def wait(self, poll_interval: float = 0.1) -> None:
        """Block until every worker has ended for good (restarts included) or the stop event is set."""
        while not self.event.is_set():
            with self._lock:
                if all(slot.done for slot in self._slots):
                    return
                self._changed.wait(poll_interval)

    # -- stop and report ---------------------------------------------------------------------------------------

    def stop(self, graceful_timeout: float, terminate_timeout: float) -> list[ProcessRecord]:
        """Stop every worker in four steps; returns the records of all processes that ran, in start order."""
        with self._lock:
            # Deaths the monitor has not handled yet happened before this stop: report them as such.
            for slot in self._slots:
                if not slot.done and not slot.process.is_alive():
                    self._on_exit(slot)
            self._stopping = True
            slots = list(self._slots)
        steps = stop_processes(
            [s.process for s in slots if not s.done],
            self.event,
            graceful_timeout,
            terminate_timeout,
            on_step=self.metrics.stop_step if self.metrics is not None else None,
        )
        self._closed.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(1.0)
        with self._lock:
            for slot in slots:
                if slot.done:
                    continue
                process = slot.process
                process.join(0)
                record = ProcessRecord(process.name or slot.name, process.pid, process.exitcode)
                record.stop_step = steps.get(process.pid or -1, "event")
                slot.records.append(record)
                if self.metrics is not None:
                    self.metrics.exited(process.exitcode)
                slot.done = True
            return [record for slot in slots for record in slot.records]

    def failures(self, records: Sequence[ProcessRecord]) -> list[ProcessRecord]:
        """Records that count as failures: crashes that were not made good by a restart, and processes that ended
        the cooperative stop with a code outside the allowed ones. Processes the stop had to escalate to a signal
        are not failures (see `escalated`)."""
        bad: list[ProcessRecord] = []
        for record in records:
            if record.crashed and not record.restarted:
                bad.append(record)
            elif (
                record.stop_step in (None, "event")
                and not record.crashed
                and record.exitcode not in self.allowed_exit_codes
            ):
                bad.append(record)
        return bad

    @staticmethod
    def escalated(records: Sequence[ProcessRecord]) -> list[ProcessRecord]:
        """Records of processes that ignored the stop event and were ended by a signal."""
        return [r for r in records if r.stop_step in ("SIGINT", "SIGTERM", "SIGKILL")]
