"""The storage-driver interface: what a store backend provides so that `agl.store.engine.StoreEngine` runs on it.

A driver is storage only: it reads and writes rows of rollouts, attempts, spans, resources and workers, keeps the
queue and the counters, and answers the indexed queries, all inside transactions it provides. Every rule (state
machines, retries, the health scan, dequeue order, fencing, sequence ids, filters and pages, events, waiting) lives
in the engine, which calls the driver from any thread and event loop and never nests two transactions.

The engine hands each transaction's work to the driver as a synchronous closure (`run_read` / `run_write`), and the
driver decides where it runs: the in-memory driver runs it at once on the caller (no thread hop), the SQLite driver
on its writer thread or a reader connection's thread, a pooled database driver on a thread of its pool. A closure
runs in a copy of the caller's `contextvars` context (the idempotency key of an HTTP request travels that way) and
never awaits; it may run on any thread, so it touches only the transaction and values it was given.

Objects a transaction returns are the engine's to change: it changes them and hands them back with a `put_*` call
in the same write transaction. A driver that holds live objects (the in-memory one) returns them directly and
gives the caller copies through `detach`; a driver that reads rows returns fresh objects and `detach` is identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from agl.store.events import StoreEvent
from agl.store.inputs import INT64_MAX, INT64_MIN
from agl.store.query import RolloutFilter
from agl.types.core import Attempt, Rollout, Worker
from agl.types.resources import ResourcesUpdate
from agl.types.tracer import Span

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "CommitHook",
    "EncodedSpan",
    "ReadTransaction",
    "StorageDriver",
    "WriteTransaction",
]

EncodedSpan = tuple[Span, bytes, int]
"""A span ready to store: the span, the JSON kept for it, and the bytes it counts against a memory budget."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


CommitHook = Callable[[list[StoreEvent], list[str]], None]
"""Called by a driver after a write transaction committed, in commit order and before that write's `run_write`
returns: the events the transaction collected and the rollouts it finished. It may be called on any thread."""


class ReadTransaction(Protocol):
    """Reads that see one consistent state (a snapshot, or the data under the driver's lock)."""

    def detach(self, model: M) -> M:
        """`model` as the caller may keep it: a copy when the driver holds it live, else `model` itself."""

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        """A rollout by id, without its attempt."""

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
        """The known rollouts among `rollout_ids` (string ids only), by id."""

    def rollout_statuses(self, rollout_ids: Sequence[str]) -> dict[str, str]:
        """The statuses of the known rollouts among `rollout_ids` (string ids only), by id."""

    def select_rollouts(
        self, query: RolloutFilter, sort_by: str | None, sort_order: str, limit: int, offset: int
    ) -> tuple[list[Rollout], int]:
        """One page of the rollouts matching `query` in the requested order (ties in insertion order), and how many
        match; arguments are already checked. Each condition means what `agl.store.query.Condition` says."""

    def latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The rollout's attempt with the highest sequence id."""

    def latest_attempts(self, rollout_ids: Sequence[str]) -> dict[str, Attempt]:
        """The latest attempt of each rollout among `rollout_ids` that has one, by rollout id (one read for a
        whole page, not one per rollout)."""

    def latest_sequence_id(self, rollout_id: str) -> int:
        """The highest attempt sequence id of the rollout (0 without attempts)."""

    def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt | None:
        """An attempt by id."""

    def attempts(self, rollout_id: str) -> list[Attempt]:
        """The rollout's attempts by sequence id (empty for an unknown rollout)."""

    def span_payloads(self, rollout_id: str, attempt_id: str | None) -> list[bytes]:
        """The JSON of the rollout's spans (of one attempt, or of all when `attempt_id` is None)."""

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id."""

    def all_resources(self) -> list[ResourcesUpdate]:
        """Every resources snapshot in insertion order."""

    def latest_resources_id(self) -> str | None:
        """The id of the snapshot most recently added or updated."""

    def get_worker(self, worker_id: str) -> Worker | None:
        """A worker by id."""

    def all_workers(self) -> list[Worker]:
        """Every worker in insertion order."""

    def any_watched(self) -> bool:
        """Whether any rollout is marked for the health scan."""

    def watched_rollouts(self, rollout_ids: Sequence[str] | None = None) -> list[Rollout]:
        """The rollouts marked for the health scan (all, or those among `rollout_ids`) in insertion order."""


class WriteTransaction(ReadTransaction, Protocol):
    """Reads and writes that commit together (or, on an exception, not at all where the driver can roll back).

    `events` and `finished` collect what the engine reports once the transaction has committed.
    """

    events: list[StoreEvent]
    finished: list[str]

    def insert_rollout(self, rollout: Rollout, watched: bool) -> None:
        """Store a new rollout (and its span sequence counter at 0)."""

    def put_rollout(self, rollout: Rollout, watched: bool, old_status: str, old_mode: str | None) -> None:
        """Store a changed rollout; `old_status` / `old_mode` are what it held before this change."""

    def enqueue(self, rollout_id: str) -> None:
        """Put the rollout at the tail of the queue unless it is already in it."""

    def claim_next(self) -> Rollout | None:
        """Take the rollout at the head of the queue out of it and return it, skipping entries whose rollout is no
        longer queuing; None when the queue is empty. One primitive, so a shared database can claim with row
        locks (`SELECT ... FOR UPDATE SKIP LOCKED`)."""

    def insert_attempt(self, attempt: Attempt) -> None:
        """Store a new attempt."""

    def put_attempt(self, attempt: Attempt) -> None:
        """Store a changed attempt."""

    def raise_span_counter(self, rollout_id: str, sequence_id: int) -> None:
        """Raise the rollout's span sequence counter to `sequence_id` if it is lower (unknown rollouts: nothing)."""

    def allocate_span_sequence_ids(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance each rollout's span counter by its count; returns each rollout's first new id. An unknown
        rollout raises ValueError, and so does a counter that would pass `INT64_MAX`; either advances nothing."""

    def reserve_span_bytes(self, size: int) -> None:
        """Make room for `size` more span bytes, or raise `StoreFullError` (drivers without a budget: nothing)."""

    def insert_spans(self, spans: Iterable[EncodedSpan]) -> list[Span]:
        """Store spans of one attempt; returns those stored (a span whose id the attempt already has is skipped)."""

    def put_resources(self, update: ResourcesUpdate) -> None:
        """Store a resources snapshot (an existing id keeps its insertion position) and make it the latest."""

    def put_worker(self, worker: Worker) -> None:
        """Store a worker, new or changed."""

    def replay_kept(self, now: float) -> None:
        """First step of a write that may carry an idempotency key: raise `AnswerAlreadyKept` when the key already
        has a live answer (drivers that keep no keys: nothing)."""

    def keep_answer(self, result: Any, now: float) -> None:
        """Last step of such a write: keep the key's answer with the write (drivers that keep no keys: nothing)."""


class StorageDriver(Protocol):
    """A backend's storage: transactions over its rows, and how it encodes spans."""

    poll_seconds: float | None
    """How often waiters re-read statuses, for changes made by other processes (None: only this process writes)."""

    def bind(self, on_commit: CommitHook) -> None:
        """Set what to call after each committed write transaction."""

    async def run_read(self, body: Callable[[ReadTransaction], T]) -> T:
        """`body(tx)` in a read transaction that sees one consistent state; its result or exception.

        Where it runs is the driver's choice (inline, or a reader thread so a long read never holds up the caller's
        event loop); it runs in a copy of the caller's context.
        """

    async def run_write(self, body: Callable[[WriteTransaction], T]) -> T:
        """`body(tx)` in a write transaction; its result once the write has committed (and the commit hook ran),
        or its exception, with the write's changes rolled back where the driver can roll back.

        A driver may commit several callers' writes together, but each one's changes stand or fall alone: one
        body's exception rolls back only that body's changes. Where it runs is the driver's choice; it runs in a
        copy of the caller's context.
        """

    def encode_span(self, span: Span, payload: bytes | None) -> EncodedSpan:
        """`span` ready to store (`payload`: JSON `span` was just validated from, which may be kept as it is)."""

    def close(self) -> None:
        """Release what the driver holds (writes already handed to it are finished first)."""
