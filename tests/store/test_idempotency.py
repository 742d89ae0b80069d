"""The idempotency rule's pieces in agl.store.idempotency: the keyed-request context and the retention walk."""

from __future__ import annotations

from agl.store import idempotency
from agl.store.idempotency import IdempotencyRetention, KeptAnswer, RetentionTracker


def test_answer_is_kept_once_and_only_for_a_keyed_request_with_an_encoder() -> None:
    assert idempotency.answer_to_keep("result") is None  # no keyed request
    with idempotency.keyed_request("k", 42) as pending:
        assert idempotency.current_write() is pending
        assert idempotency.answer_to_keep("result") is None  # the handler has not said how to answer
        pending.encode = lambda result: (201, f"[{result}]".encode(), b"application/json", ())
        kept = idempotency.answer_to_keep("r1")
        assert kept is pending
        assert pending.kept == KeptAnswer(42, 201, b"[r1]", b"application/json", ())
        assert idempotency.answer_to_keep("r2") is None  # a second write of the same request keeps nothing
    assert idempotency.current_write() is None


def test_replay_or_conflict() -> None:
    answer = KeptAnswer(7, 201, b"[]", b"application/json", ())
    assert idempotency.replays(answer, 7)
    assert not idempotency.replays(answer, 8)
    assert "already used for a different request" in idempotency.conflict_message("k")


def test_key_length_bound() -> None:
    assert idempotency.check_key(b"a" * 255) == "a" * 255
    assert idempotency.check_key(b"a" * 256) is None


def _walk(tracker: RetentionTracker, rows: list[tuple[float, int]], now: float) -> int:
    """Drop from the oldest row as a driver does; returns how many went."""
    tracker.start_prune()
    dropped = 0
    for created, size in rows:
        if not tracker.drop(created, size, now):
            break
        dropped += 1
    return dropped


def test_past_the_count_keys_go_down_to_ninety_percent() -> None:
    tracker = RetentionTracker(IdempotencyRetention(max_entries=10), 0, 0, None)
    rows = [(float(t), 100) for t in range(11)]
    for created, size in rows:
        tracker.added(size, created)
    assert tracker.prune_due(11.0)
    assert _walk(tracker, rows, 11.0) == 2
    assert (tracker.entries, tracker.bytes, tracker.oldest) == (9, 900, 2.0)
    assert not tracker.prune_due(11.0)


def test_past_the_bytes_keys_go_down_to_ninety_percent() -> None:
    tracker = RetentionTracker(IdempotencyRetention(max_bytes=1000), 0, 0, None)
    rows = [(float(t), 300) for t in range(4)]
    for created, size in rows:
        tracker.added(size, created)
    assert tracker.prune_due(4.0)
    assert _walk(tracker, rows, 4.0) == 1
    assert tracker.bytes == 900


def test_expiry_drops_only_expired_keys() -> None:
    retention = IdempotencyRetention(max_age_seconds=60, max_entries=100)
    tracker = RetentionTracker(retention, 95, 9500, 0.0)  # within the count bound, the oldest key long expired
    rows = [(0.0, 100), (10.0, 100), (100.0, 100), (110.0, 100)]
    assert not tracker.prune_due(61.0)  # a little slack: expiry deletes batches, not one key per write
    assert tracker.prune_due(150.0)
    assert _walk(tracker, rows, 150.0) == 2
    assert (tracker.entries, tracker.oldest) == (93, 100.0)
