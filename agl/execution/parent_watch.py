"""Ends a child process soon after the process that started it is gone (killed by the OOM killer, `kill -9`, ...).

A runner process started by a strategy has no one to report to once its parent has died: the store server lived
in the parent (or the parent supervised it), so it would retry a dead address forever. Likewise the algorithm
process started by a runner in the main process (`main_process="runner"`) would wait for rollouts nobody runs. The
watch polls `os.getppid()`, which changes when the parent dies and the child is re-parented (to init or a
subreaper) on Linux and macOS alike, without relying on Linux-only `prctl(PR_SET_PDEATHSIG)`.

The process watched is the one that started this one: multiprocessing's parent process, for every start method.
A child started through multiprocessing's fork server (`forkserver`, the default start method on Linux from Python
3.14) is the fork server's child, and the fork server outlives the process that asked for the child as long as any
child it made lives; a starter that is not (or no longer) this process's parent is watched by its existence instead
(a process that died counts as existing until its own parent has reaped it, as shells and supervisors do at once).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

__all__ = ["ORPHANED_EXIT_CODE", "ParentWatch", "watch_parent"]

logger = logging.getLogger(__name__)

ORPHANED_EXIT_CODE = 1
"""The exit code of a child that had to be ended hard after its parent died (nobody reads it: the parent is gone)."""


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    try:
        sys.stderr.flush()
    except Exception:
        pass


@dataclass(frozen=True)
class ParentWatch:
    """A running watch of this process's parent, started by `watch_parent`."""

    parent_pid: int
    """The pid of the process that started this one."""
    thread: threading.Thread
    """The daemon thread that stops this process once the parent has died."""
    by_existence: bool = False
    """Whether the parent is watched by its existence, not as this process's parent in the process tree (a fork
    server stands between them, or the parent had died already when the watch began)."""

    def parent_alive(self) -> bool:
        """Whether the process that started this one is still alive."""
        if self.by_existence:
            return _exists(self.parent_pid)
        return os.getppid() == self.parent_pid


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _starter() -> tuple[int, bool]:
    """The pid of the process that started this one, and whether it is to be watched by its existence (it is not
    this process's parent in the process tree)."""
    starter = multiprocessing.parent_process()
    if starter is not None and starter.pid is not None and starter.pid != os.getppid():
        return starter.pid, True
    return os.getppid(), False


def watch_parent(name: str, parent_pid: int | None = None, poll: float = 0.5, grace: float = 3.0) -> ParentWatch:
    """Start a daemon thread that stops this process once its parent has died, and return the watch.

    The stop is that of Ctrl+C (SIGINT to the main thread, so the work is cancelled and cleaned up); if the process
    is still alive `grace` seconds later, it exits at once with `ORPHANED_EXIT_CODE`.

    Args:
        name: how log lines name this process (e.g. `runner-0`).
        parent_pid: the pid of this process's parent, when known otherwise. None takes the process that started
            this one: multiprocessing's parent process (which also catches one that died before the watch began),
            else the parent at the time of the call.
        poll: seconds between checks.
        grace: seconds between the interrupt and the hard exit.
    """
    expected, by_existence = _starter() if parent_pid is None else (parent_pid, False)
    main = threading.main_thread().ident or 0

    def watch() -> None:
        while parent.parent_alive():
            time.sleep(poll)
        logger.error(
            "%s (pid %d): the process that started it (pid %d) has ended, killed or crashed; stopping, as nothing "
            "supervises this process any more",
            name, os.getpid(), expected,
        )  # fmt: skip
        _flush()
        # A real SIGINT to the main thread (not `_thread.interrupt_main`, which sets a flag only): it interrupts the
        # event loop's wait, so the handler runs at once rather than when the loop next wakes. With SIGINT ignored
        # (e.g. a background job of a shell) there is no cooperative stop to wait for.
        if not callable(signal.getsignal(signal.SIGINT)):
            logger.error("%s (pid %d) ignores SIGINT; exiting now", name, os.getpid())
            _flush()
            os._exit(ORPHANED_EXIT_CODE)
        try:
            signal.pthread_kill(main, signal.SIGINT)
        except (OSError, ValueError):  # the main thread is gone: the process is ending anyway
            pass
        time.sleep(grace)
        logger.error("%s (pid %d) did not stop within %gs of the interrupt; exiting now", name, os.getpid(), grace)
        _flush()
        os._exit(ORPHANED_EXIT_CODE)

    thread = threading.Thread(target=watch, name="agl-parent-watch", daemon=True)
    parent = ParentWatch(expected, thread, by_existence)
    parent.thread.start()
    return parent
