"""The forwarder's delivery threads: several batches at once, never one batch twice.

A batch's steps are mostly waiting — fsyncs of the spool copy, the status
record and the state database, a remote print site — so one thread taking
batches one after another falls behind a ward uploading many small batches
quickly (the backlog grows with every upload, and so does the latency). The
forwarder's dispatcher (its own thread) hands each due batch to one of
:data:`WORKERS` threads here; a batch already being worked on is not handed
out again until its thread is done with it, so each batch is still processed
by one thread at a time, in the state machine's order. Destinations that
cannot be used by two threads at once serialise themselves
(:class:`gateway.relay_destination.SftpDestination` holds one link under a lock).
"""

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.state import BatchRecord

WORKERS = 4
"""Batches worked on at once."""

_Task = tuple[BatchRecord, threading.Event] | None
_T = TypeVar("_T")


class WakeQueue(Protocol):
    """Wakes the dispatcher (:class:`gateway.app.EventBatchQueue`); the ids are hints."""

    def notify(self, batch_id: str) -> None:
        """Wake a waiting dispatcher."""

    def wait(self, timeout: float | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds for a notification; return and forget the ids."""
        ...


def is_due(batch: BatchRecord, now: datetime) -> bool:
    """Whether the batch may be worked on now (no retry scheduled later)."""
    return batch.next_attempt_at is None or batch.next_attempt_at <= now


def next_wait(
    pending: Iterable[BatchRecord], handed: Iterable[BatchRecord], busy: set[str], now: datetime
) -> float:
    """Seconds the dispatcher may sleep after handing out ``handed`` (``inf``: until woken).

    Batches being worked on (``busy``) are left out: their thread wakes the
    dispatcher when it schedules one. A pending batch that was not handed out
    and has no retry time is new since the read: 0.
    """
    seen = {b.batch_id for b in handed} | busy
    waits = [
        0.0 if b.next_attempt_at is None else (b.next_attempt_at - now).total_seconds()
        for b in pending
        if b.batch_id not in busy and (b.next_attempt_at is not None or b.batch_id not in seen)
    ]
    return max(min(waits), 0.0) if waits else float("inf")


class Workers:
    """Threads running ``work(batch)``: :meth:`start`, :meth:`submit`, :meth:`stop`."""

    def __init__(
        self,
        work: Callable[[BatchRecord], None],
        after: Callable[[BatchRecord, bool], None],
        count: int = WORKERS,
    ) -> None:
        """``work(batch)`` on the threads; ``after(batch, failed)`` once the batch is free again."""
        self._work = work
        self._after = after
        self._count = count
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._again: set[str] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the threads (idempotent)."""
        if self._threads:
            return
        for number in range(self._count):
            thread = threading.Thread(
                target=self._loop, name=f"forwarder-{number + 1}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, batch: BatchRecord) -> threading.Event | None:
        """Queue ``batch``; the event is set once it was worked on.

        None when it is queued or being worked on already: then it is worked on once
        more when that turn ends (a completion's wake-up may have come meanwhile), so
        ``work`` must read the batch afresh.
        """
        with self._lock:
            if batch.batch_id in self._in_flight:
                self._again.add(batch.batch_id)  # worked on once more when its turn ends
                return None
            self._in_flight.add(batch.batch_id)
        done = threading.Event()
        self._tasks.put((batch, done))
        return done

    def busy(self) -> set[str]:
        """The batches queued or being worked on now."""
        with self._lock:
            return set(self._in_flight)

    def stop(self, timeout: float) -> None:
        """Let every thread finish its batch and end; wait up to ``timeout`` seconds in all."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            batch, done = task
            failed = False
            try:
                self._work(batch)
            except Exception:  # work() audits what it can; this thread must not die
                failed = True
            with self._lock:
                again = batch.batch_id in self._again
                self._again.discard(batch.batch_id)
                if not again:
                    self._in_flight.discard(batch.batch_id)
            if again:  # asked for while being worked on: what asked must not be lost
                self._tasks.put((batch, threading.Event()))
            else:  # only now: the dispatcher it wakes must not find it still busy
                with contextlib.suppress(Exception):
                    self._after(batch, failed)
            done.set()


class Turns:
    """Destinations that take one batch at a time (``one_at_a_time``, sftp://).

    A batch whose destination is busy is not sent and keeps no delivery thread
    waiting: it stays as it is, and the batch that had the turn wakes the dispatcher
    when it ends. So a batch's FORWARDING time is its transfer, and other tenants'
    batches are not stuck behind a backlog for one print site.
    """

    def __init__(self, destinations: Iterable[object]) -> None:
        self._locks = {
            id(d): threading.Lock() for d in destinations if getattr(d, "one_at_a_time", False)
        }

    def take(
        self, destination: object, work: Callable[[], _T], released: Callable[[], None]
    ) -> _T | None:
        """``work()`` in the destination's turn; None, at once, when another batch has it.

        ``released()`` runs when the turn ends (it wakes the dispatcher for the batches
        that found the destination busy).
        """
        lock = self._locks.get(id(destination))
        if lock is None:
            return work()
        if not lock.acquire(blocking=False):
            return None
        try:
            return work()
        finally:
            lock.release()
            released()
