"""`SpanSpill`: its files stay within the disk budget, a refused write loses nothing, stale spills are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agl.store.errors import StoreFullError
from agl.store.spill import LOCK_NAME, MIN_SPILL_BYTES, SPILL_PREFIX, SpanSpill, remove_stale_spills

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="spill locks are POSIX flocks")


def _disk_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def _spans(rollout: int, count: int, size: int) -> list[tuple[tuple[str, str], bytes]]:
    filler = bytes([97 + rollout % 26]) * size
    return [((f"at-{rollout % 3}", f"{rollout:06x}{i:010x}"), filler) for i in range(count)]


@pytest.mark.parametrize("span_size", [300, 1_000, 2_000, 5_000, 20_000])
def test_disk_use_stays_within_the_budget_and_every_stored_span_reads_back(tmp_path: Path, span_size: int) -> None:
    budget = 1024 * 1024
    spill = SpanSpill(str(tmp_path), budget)
    written: dict[int, list[tuple[tuple[str, str], bytes]]] = {}
    try:
        with pytest.raises(StoreFullError, match="span spill is full"):
            for rollout in range(10_000):
                spans = _spans(rollout, 10, span_size)
                spill.write(f"ro-{rollout}", spans, span_size * len(spans))
                written[rollout] = spans
                assert _disk_bytes(spill.directory) <= budget
        assert _disk_bytes(spill.directory) == spill.disk_bytes <= budget
        # Filled, not just refused early: the budget left is smaller than one more batch of these spans.
        assert spill.room() < 10 * span_size + 4096
        assert spill.spans == 10 * len(written) and spill.bytes == span_size * spill.spans
        for rollout, spans in written.items():
            got = sorted(spill.read(f"ro-{rollout}"))
            assert got == sorted(payload for _, payload in spans)
            assert spill.read(f"ro-{rollout}", f"at-{rollout % 3}") == got
            assert spill.read(f"ro-{rollout}", "at-other") == []
            assert all(spill.contains(f"ro-{rollout}", *key) for key, _ in spans)
    finally:
        spill.close()


def test_a_refused_write_writes_nothing(tmp_path: Path) -> None:
    spill = SpanSpill(str(tmp_path), MIN_SPILL_BYTES)
    try:
        spill.write("ro-a", _spans(0, 2, 1_000), 2_000)
        before = (spill.disk_bytes, spill.spans, spill.bytes, _disk_bytes(spill.directory))
        # 42 KB of JSON and ids passes the check before writing, but the written rows (and the key index) take
        # more than the 48 KiB left: found inside the transaction, which is rolled back.
        big = _spans(1, 140, 300)
        with pytest.raises(StoreFullError, match="these 140 spans take"):
            spill.write("ro-b", big, 42_000)
        assert (spill.disk_bytes, spill.spans, spill.bytes, _disk_bytes(spill.directory)) == before
        assert spill.read("ro-b") == [] and not spill.contains("ro-b", *big[0][0])
        assert len(spill.read("ro-a")) == 2
        spill.write("ro-c", _spans(2, 1, 1_000), 1_000)  # a smaller one still fits
        assert len(spill.read("ro-c")) == 1
    finally:
        spill.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget", [1, 1000, MIN_SPILL_BYTES - 1, -5])
def test_budget_below_an_empty_spill_is_refused(tmp_path: Path, budget: int) -> None:
    with pytest.raises(ValueError, match="at least 65536 bytes"):
        SpanSpill(str(tmp_path), budget)


_HOLDER = """
import sys, time
from agl.store.spill import SpanSpill
spill = SpanSpill(sys.argv[1], None)
spill.write("ro-1", [(("at-1", "s1"), b'{"a": 1}')], 8)
print(spill.directory, flush=True)
time.sleep(120)
"""


def _start_holder(parent: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise AssertionError(f"the spill holder did not start: {proc.communicate()[1]}")
    return proc, line


def test_a_spill_left_by_a_killed_process_is_removed_at_the_next_start_and_a_live_one_is_kept(
    tmp_path: Path,
) -> None:
    unrelated = tmp_path / f"{SPILL_PREFIX}not-a-spill"  # no lock file: not judged, kept
    unrelated.mkdir()
    holders: list[subprocess.Popen[str]] = []
    try:
        dead, dead_dir = _start_holder(tmp_path)
        holders.append(dead)
        alive, alive_dir = _start_holder(tmp_path)
        holders.append(alive)
        assert (Path(dead_dir) / LOCK_NAME).read_text().strip() == str(dead.pid)
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=10)
        assert os.path.isdir(dead_dir)  # kill -9 left it behind
        # The next start of a store that spills there removes it; it keeps the live process's spill.
        start = subprocess.run(
            [sys.executable, "-c", "import sys; from agl.store.memory import InMemoryLightningStore as S; "
             "S(spill_dir=sys.argv[1])", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert start.returncode == 0, start.stderr
        assert "left by a process that did not close it" in start.stderr
        assert not os.path.exists(dead_dir)
        assert os.path.isdir(alive_dir) and os.listdir(alive_dir)
        assert unrelated.is_dir()
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def test_a_live_spill_of_this_process_is_never_removed(tmp_path: Path) -> None:
    spill = SpanSpill(str(tmp_path), None)
    try:
        assert remove_stale_spills(str(tmp_path)) == []
        assert os.path.isdir(spill.directory)
    finally:
        spill.close()


def test_a_lock_file_still_being_written_is_left_alone(tmp_path: Path) -> None:
    creating = tmp_path / f"{SPILL_PREFIX}creating"
    creating.mkdir()
    (creating / LOCK_NAME).write_text("")  # created, not yet locked and filled by its owner
    assert remove_stale_spills(str(tmp_path)) == []
    assert creating.is_dir()
