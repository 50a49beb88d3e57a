"""gateway.forward_workers: batches in parallel, never one twice; the dispatcher's wait."""

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta

from gateway.forward_workers import WORKERS, Turns, Workers, is_due, next_wait
from gateway.pipeline import BatchState
from gateway.state import BatchRecord

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)


def _batch(number: int, next_attempt_at: datetime | None = None) -> BatchRecord:
    batch_id = f"20260715-KAIGO-{number:06d}"
    return BatchRecord(
        batch_id, "shinjuku", "ward-a", f"{batch_id}.age", 10, "ab" * 32, BatchState.RECEIVED,
        T0, T0, next_attempt_at=next_attempt_at,
    )  # fmt: skip


def _idle(workers: Workers) -> None:
    deadline = time.monotonic() + 5
    while workers.busy():
        assert time.monotonic() < deadline, workers.busy()
        time.sleep(0.01)


def test_batches_run_in_parallel_up_to_the_pool_and_never_twice() -> None:
    """WORKERS batches are worked on at once; the next waits; a batch in flight is not queued
    twice (one more turn after the current one); stop lets the threads finish and end."""
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()
    all_in = threading.Event()

    def work(batch: BatchRecord) -> None:
        with lock:
            started.append(batch.batch_id)
            if len(started) == WORKERS:
                all_in.set()
        release.wait(10)

    workers = Workers(work, lambda _batch, _failed: None)
    workers.start()
    batches = [_batch(n) for n in range(WORKERS + 1)]
    events = [workers.submit(b) for b in batches]
    assert all(e is not None for e in events)
    assert all_in.wait(5)
    assert len(started) == WORKERS  # the last one waits for a thread
    assert workers.submit(batches[0]) is None and workers.submit(batches[-1]) is None
    assert workers.busy() == {b.batch_id for b in batches}
    release.set()
    for event in events:
        assert event is not None and event.wait(5)
    _idle(workers)
    asked_again = [batches[0].batch_id, batches[-1].batch_id]  # one more turn each
    assert sorted(started) == sorted([b.batch_id for b in batches] + asked_again)
    again = workers.submit(batches[0])  # done: it may be queued again
    assert again is not None and again.wait(5)
    workers.stop(5)
    assert not any(t.name.startswith("forwarder-") for t in threading.enumerate())


def test_a_failing_batch_frees_its_slot() -> None:
    """An exception in work() still ends the batch's turn (the forwarder catches its own)."""

    def work(batch: BatchRecord) -> None:
        raise RuntimeError("boom")

    freed: list[tuple[str, bool]] = []
    workers = Workers(work, lambda batch, failed: freed.append((batch.batch_id, failed)), count=1)
    workers.start()
    first = workers.submit(_batch(1))
    assert first is not None and first.wait(5)
    assert workers.busy() == set()
    second = workers.submit(_batch(2))
    assert second is not None and second.wait(5)  # the thread survived
    workers.stop(5)
    assert [failed for _, failed in freed] == [True, True]  # the forwarder waits, then wakes


def test_next_wait_leaves_out_busy_batches_and_sees_new_ones() -> None:
    """Scheduled batches set the wait; busy ones are left out; a new unscheduled one is due now."""
    now = T0
    handed = [_batch(1), _batch(2)]
    later = _batch(3, next_attempt_at=now + timedelta(seconds=30))
    busy_later = _batch(4, next_attempt_at=now + timedelta(seconds=5))
    assert next_wait([*handed, later, busy_later], handed, {busy_later.batch_id}, now) == 30.0
    assert next_wait(handed, handed, set(), now) == float("inf")
    assert next_wait([*handed, _batch(9)], handed, set(), now) == 0.0
    overdue = dataclasses.replace(later, next_attempt_at=now - timedelta(seconds=1))
    assert next_wait([overdue], [], set(), now) == 0.0
    assert is_due(overdue, now) and not is_due(later, now) and is_due(_batch(5), now)


def test_a_batch_asked_for_while_worked_on_is_worked_on_once_more() -> None:
    """A wake-up for a batch being worked on is not lost: one more turn when it ends, not two."""
    first_turn = threading.Event()
    release = threading.Event()
    turns: list[str] = []

    def work(batch: BatchRecord) -> None:
        turns.append(batch.batch_id)
        first_turn.set()
        release.wait(10)

    workers = Workers(work, lambda _batch, _failed: None, count=2)
    workers.start()
    batch = _batch(1)
    done = workers.submit(batch)
    assert done is not None and first_turn.wait(5)
    assert workers.submit(batch) is None and workers.submit(batch) is None  # asked twice
    release.set()
    assert done.wait(5)
    _idle(workers)
    assert turns == [batch.batch_id, batch.batch_id]
    workers.stop(5)


def test_after_runs_once_the_batch_is_no_longer_busy() -> None:
    """The dispatcher woken by after() must not find the batch still busy (a lost wake-up:
    a retry scheduled in that moment would wait for the next rescan)."""
    seen_busy: list[set[str]] = []
    workers: Workers

    def after(batch: BatchRecord, failed: bool) -> None:
        seen_busy.append(workers.busy())

    workers = Workers(lambda _batch: None, after, count=1)
    workers.start()
    done = workers.submit(_batch(1))
    assert done is not None and done.wait(5)
    workers.stop(5)
    assert seen_busy == [set()]


class _Serial:
    one_at_a_time = True


def test_a_busy_one_at_a_time_destination_turns_batches_away_without_waiting() -> None:
    """While one batch has the turn, another gets None at once (no thread waits); the end of
    the turn calls released(); destinations without the flag run every batch at once."""
    serial, parallel = _Serial(), object()
    turns = Turns([serial, parallel])
    released: list[str] = []
    inside = threading.Event()
    leave = threading.Event()
    results: list[object] = []

    def long_work() -> str:
        inside.set()
        leave.wait(5)
        return "sent"

    holder = threading.Thread(
        target=lambda: results.append(turns.take(serial, long_work, lambda: released.append("x")))
    )
    holder.start()
    assert inside.wait(5)
    started = time.monotonic()
    assert turns.take(serial, lambda: "other", lambda: released.append("y")) is None
    assert time.monotonic() - started < 0.5 and released == []
    assert turns.take(parallel, lambda: "at once", lambda: released.append("z")) == "at once"
    leave.set()
    holder.join(5)
    assert results == ["sent"] and released == ["x"]
    assert turns.take(serial, lambda: "next", lambda: released.append("n")) == "next"
