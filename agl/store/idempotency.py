"""Idempotency keys: a retried write gets the answer of its first run instead of running twice.

The rule is written here once. A request carrying an `Idempotency-Key` is answered, for as long as the key is
retained, with the first answer given to that key; the same key on a different request is a conflict (409). The HTTP
app applies the rule over its in-memory cache of recent answers. A durable store (SQLite) also keeps each key with
its answer *in the transaction of the write itself*, so the rule holds across a crash between the commit and the
answer: the retry after a restart finds the key and gets the first answer. A driver provides only the storage
(`keep` a row, find a row by key, delete the oldest rows); what is replayed, what conflicts and what is dropped when
is decided by the functions and classes below.

How a keyed request reaches the store: the app opens `keyed_request(key, fingerprint)` around its handler; the
handler says how a store result becomes its answer (`PendingWrite.encode`); the durable store, inside its write
transaction, calls `answer_to_keep(result)` and stores what it returns. When the key is already there (the retry),
the store raises `AnswerAlreadyKept` instead, its transaction rolls back, and the app replays or refuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

__all__ = [
    "MAX_KEY_BYTES",
    "AnswerAlreadyKept",
    "IdempotencyRetention",
    "KeptAnswer",
    "PendingWrite",
    "RetentionTracker",
    "answer_to_keep",
    "check_key",
    "conflict_message",
    "current_write",
    "keyed_request",
    "replays",
]

MAX_KEY_BYTES = 255
"""The longest Idempotency-Key accepted (clients send ~30 bytes; a longer key is refused, not stored)."""


class KeptAnswer(NamedTuple):
    """A kept answer: the request's fingerprint, then the HTTP status, body, content type and extra headers."""

    fingerprint: int
    status: int
    body: bytes
    content_type: bytes
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class IdempotencyRetention:
    """How long and how many kept answers are retained (the oldest go first once any bound is passed).

    Every key counts, authenticated or not, so keys can never grow memory or disk beyond these bounds.
    """

    max_age_seconds: float = 600.0
    """A key older than this is forgotten: the same key then runs the request anew."""
    max_entries: int = 100_000
    """At most this many keys (each with its answer) are kept."""
    max_bytes: int = 256 * 1024 * 1024
    """At most this many bytes of answer bodies are kept."""

    def __post_init__(self) -> None:
        if not (isinstance(self.max_age_seconds, (int, float)) and math.isfinite(self.max_age_seconds)) or (
            self.max_age_seconds <= 0
        ):
            raise ValueError(f"max_age_seconds must be a positive number of seconds, got {self.max_age_seconds!r}")
        for name in ("max_entries", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class AnswerAlreadyKept(Exception):
    """Raised by a durable store inside a keyed write whose key is already retained; the write is rolled back."""

    def __init__(self, key: str, answer: KeptAnswer) -> None:
        super().__init__(f"Idempotency-Key {key!r} already has an answer")
        self.key = key
        self.answer = answer


def check_key(key: bytes) -> str | None:
    """The key as text, or None when it is too long (the caller refuses the request with 400)."""
    if len(key) > MAX_KEY_BYTES:
        return None
    return key.decode("latin-1")


def conflict_message(key: str) -> str:
    """The 409 detail for a key reused on a different request."""
    return f"Idempotency-Key {key!r} was already used for a different request; send a new key for a new request"


def replays(answer: KeptAnswer, fingerprint: int) -> bool:
    """Whether a request with `fingerprint` is the one `answer` was given to (else its key is a conflict)."""
    return answer.fingerprint == fingerprint


# -- a keyed request on its way to a durable store ----------------------------------------------------------------


class PendingWrite:
    """A keyed request being handled: its key, fingerprint, how a store result becomes its answer, and the answer a
    durable store kept with the write (None until then)."""

    __slots__ = ("encode", "fingerprint", "kept", "key")

    def __init__(self, key: str, fingerprint: int) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.encode: Callable[[Any], tuple[int, bytes, bytes, Sequence[tuple[bytes, bytes]]]] | None = None
        """Set by the handler: (status, body, content type, headers) of the answer to a store result."""
        self.kept: KeptAnswer | None = None


_CURRENT: ContextVar[PendingWrite | None] = ContextVar("agl_idempotent_write", default=None)


class keyed_request:  # lower case: used as the function it was, `with keyed_request(key, fingerprint) as pending:`
    """Mark the store calls made inside this block (in this task) as made for the keyed request.

    A class rather than a generator-based context manager: it is entered for every keyed request the server
    answers, and a generator costs about three times as much to enter and leave.
    """

    __slots__ = ("_pending", "_token")

    def __init__(self, key: str, fingerprint: int) -> None:
        self._pending = PendingWrite(key, fingerprint)

    def __enter__(self) -> PendingWrite:
        self._token = _CURRENT.set(self._pending)
        return self._pending

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _CURRENT.reset(self._token)


def current_write() -> PendingWrite | None:
    """The keyed request the current store call is made for, if any."""
    return _CURRENT.get()


def answer_to_keep(result: Any) -> PendingWrite | None:
    """For a durable store inside its write transaction: the keyed request whose answer (`kept`, just encoded from
    `result`) it must store with this write, or None (no key, no encoder, or already kept by an earlier write)."""
    pending = _CURRENT.get()
    if pending is None or pending.encode is None or pending.kept is not None:
        return None
    status, body, content_type, headers = pending.encode(result)
    pending.kept = KeptAnswer(pending.fingerprint, status, body, content_type, tuple(headers))
    return pending


# -- retention of a durable store's keys --------------------------------------------------------------------------


class RetentionTracker:
    """Counts a durable store's kept keys and decides when and which to drop, so every driver prunes alike.

    The counts are this process's view (read from the table at open, then kept up to date by `added`/`dropped`);
    several processes writing one database each prune by their own view, which only makes pruning earlier.
    """

    def __init__(self, retention: IdempotencyRetention, entries: int, total_bytes: int, oldest: float | None) -> None:
        self.retention = retention
        self.entries = entries
        self.bytes = total_bytes
        self.oldest = oldest
        """When the oldest kept key was stored (None: none kept)."""
        self._keep_entries = retention.max_entries
        self._keep_bytes = retention.max_bytes

    def added(self, body_bytes: int, now: float) -> None:
        """Count a key just kept."""
        self.entries += 1
        self.bytes += body_bytes
        if self.oldest is None:
            self.oldest = now

    def prune_due(self, now: float) -> bool:
        """Whether some keys must go now (then the driver calls `start_prune` and walks from the oldest key):
        too many, too many bytes, or the oldest past its age (with a little slack, so expiry deletes batches
        instead of one row per write)."""
        r = self.retention
        if self.entries > r.max_entries or self.bytes > r.max_bytes:
            return True
        return self.oldest is not None and now - self.oldest > r.max_age_seconds * 1.01 + 1.0

    def start_prune(self) -> None:
        """Set what this prune brings the counts down to: past a bound, 90 % of it, so a full table is not pruned
        again on the very next write; within it, the bound itself (only expired keys go)."""
        r = self.retention
        self._keep_entries = int(r.max_entries * 0.9) if self.entries > r.max_entries else r.max_entries
        self._keep_bytes = int(r.max_bytes * 0.9) if self.bytes > r.max_bytes else r.max_bytes

    def drop(self, created: float, body_bytes: int, now: float) -> bool:
        """Walking from the oldest key: whether this one goes (then it is counted out). Once one stays, every
        younger key stays too, and the walk ends."""
        if (
            now - created > self.retention.max_age_seconds
            or self.entries > self._keep_entries
            or self.bytes > self._keep_bytes
        ):
            self.entries -= 1
            self.bytes -= body_bytes
            return True
        self.oldest = created
        return False

    def emptied(self) -> None:
        """Note that no key is left."""
        self.entries = 0
        self.bytes = 0
        self.oldest = None
