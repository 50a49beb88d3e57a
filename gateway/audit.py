"""The gateway's tamper-evident audit log: writing it (reading: :mod:`gateway.audit_query`).

One JSON-lines file hash-chained by :mod:`custody.chain` (``seq``, ``prev``,
``hash``); each line is ``{"event": …, "time": …, …fields…}``, ``time`` in
milliseconds with a UTC offset. Signed checkpoints (:func:`custody.make_checkpoint`
with the gateway signing key) go, one record per line, to a separate file.
Field rules (snake_case, never a secret) are in :mod:`gateway.audit_fields`.
Write with :meth:`AuditLog.emit` or a structlog logger from :func:`bind_audit`.

Checkpoints: at least every ``every_records`` records and every ``every_seconds``
seconds. The count and the clock are checked on every emit, and a timer thread
(``timer=True``) checks the clock while the log is idle; :meth:`AuditLog.close`
writes a final one; at open, records no checkpoint covers yet get one.

Durability (fsync policy): each event is one ``write()`` to an ``O_APPEND``
descriptor, so a crashed *process* loses nothing emit() returned from. The log
is fsynced before every checkpoint (a checkpoint only ever covers records
already on disk; its own file is fsynced after it), on close, and about every
``sync_every_ms`` while events arrive (default 1000, checked on emit and by the
timer; None: only at checkpoints and close). A power cut loses at most that
unsynced tail, which no checkpoint covers, so it is never taken for tampering;
cutting records that a checkpoint covers is (``audit verify`` exits 1).

Several processes may append (``serve`` and an operator's ``user add``): each
append holds an exclusive ``flock`` on the log and first reads, and checks the
chain of, what other processes appended. A torn last line (a crash mid-write)
is cut at open or when found, and an ``audit_repaired`` event records the bytes
dropped and their SHA-256. A log broken before its end, shrinking while open,
or not matching its last checkpoint is refused with :class:`AuditError`: the
gateway never appends to a tampered log.
"""

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Self, cast

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.typing import EventDict, FilteringBoundLogger

from custody import (
    ChainError,
    ChainHead,
    CustodyError,
    dumps_record,
    make_checkpoint,
    make_entry,
    parse_entry,
)
from gateway.audit_fields import check_event_name, clean_fields
from gateway.audit_files import (
    AuditError,
    describe,
    flocked,
    link,
    open_append,
    recover,
    repair_fields,
)

DEFAULT_SYNC_EVERY_MS = 1000
_MIN_TICK_SECONDS = 0.05

Clock = Callable[[], datetime]


def local_now() -> datetime:
    """The current time, timezone-aware, in the local zone."""
    return datetime.now().astimezone()


class AuditLog:
    """Appends events to the audit log; thread-safe; use :meth:`open`."""

    def __init__(
        self,
        paths: tuple[Path, Path],
        fds: tuple[int, int],
        key: Ed25519PrivateKey,
        recovered: tuple[ChainHead, int, int],
        cadence: tuple[int, float, int | None],
        clock: Clock,
    ) -> None:
        """Internal: :meth:`open` builds instances."""
        self.path, self.checkpoints_path = paths
        self._fd, self._cp_fd = fds
        self._key, self._clock = key, clock
        self._head, self._size, self._cp_seq = recovered
        self._every_records, self._every_seconds, sync_ms = cadence
        self._sync_every = None if sync_ms is None else sync_ms / 1000
        self._cp_time = clock()
        self._last_sync = time.monotonic()
        self._unsynced = False
        self._lock = threading.Lock()
        self._closed = self._broken = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        log: Path,
        checkpoints: Path,
        signing_key: Ed25519PrivateKey,
        *,
        every_records: int = 1000,
        every_seconds: float = 300,
        clock: Clock = local_now,
        sync_every_ms: int | None = DEFAULT_SYNC_EVERY_MS,
        timer: bool = True,
    ) -> Self:
        """Open (creating if missing) the log and its checkpoint file for appending.

        Args:
            log: The JSON-lines audit log.
            checkpoints: The file of signed checkpoints.
            signing_key: The gateway signing key (config ``[keys] signing_key``).
            every_records: Checkpoint after at most this many records.
            every_seconds: Checkpoint at most this long after the last one.
            clock: Returns the current timezone-aware time.
            sync_every_ms: fsync the log at most this long after an event; None
                to fsync only at checkpoints and close.
            timer: Run a daemon thread that checkpoints and fsyncs while idle.

        Returns:
            The open log. Events from a repair at open are already in it.

        Raises:
            AuditError: A file cannot be opened, the log is broken before its
                end or behind its last checkpoint, or the last checkpoint does
                not verify with the signing key's public key.
            ValueError: every_records below 1 or every_seconds not above 0.
        """
        if every_records < 1 or every_seconds <= 0:
            raise ValueError("checkpoint cadence must be at least 1 record and above 0 seconds")
        fd = open_append(log)
        try:
            cp_fd = open_append(checkpoints)
        except BaseException:
            os.close(fd)
            raise
        try:
            with flocked(fd):
                head, size, cp_seq, repairs = recover(log, fd, checkpoints, cp_fd, signing_key)
        except OSError as exc:
            os.close(fd)
            os.close(cp_fd)
            raise AuditError(f"cannot recover the audit log {log}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(fd)
            os.close(cp_fd)
            raise
        cadence = (every_records, every_seconds, sync_every_ms)
        recovered = (head, size, cp_seq)
        self = cls((log, checkpoints), (fd, cp_fd), signing_key, recovered, cadence, clock)
        try:
            with self._locked():
                now = self._now()
                for which, dropped in repairs:
                    self._append("audit_repaired", repair_fields(which, dropped), now)
                if self._head.seq > self._cp_seq:
                    self._checkpoint_locked(now)
        except BaseException:
            self._closed = True
            os.close(fd)
            os.close(cp_fd)
            raise
        if timer:
            self._timer = threading.Thread(target=self._run_timer, name="audit-timer", daemon=True)
            self._timer.start()
        return self

    @property
    def head(self) -> ChainHead:
        """The head after the last record this process wrote or read."""
        return self._head

    def emit(self, event: str, /, **fields: object) -> None:
        """Append one event (one line, one write, flushed to the kernel).

        Args:
            event: A snake_case past-tense event name, e.g. ``login_failed``.
            **fields: JSON fields (see :mod:`gateway.audit_fields`); ``time``
                is added here.

        Raises:
            ValueError: A secret or reserved field, a bad name or value (a
                programming error: nothing is written).
            TypeError: A value with no JSON form.
            AuditError: The log is closed, was changed by someone else, or the
                write failed (the partial line is removed when possible).
        """
        name = check_event_name(event)
        cleaned = clean_fields(fields)
        with self._locked():
            now = self._now()
            self._append(name, cleaned, now)
            if self._checkpoint_due(now):
                self._checkpoint_locked(now)
            elif self._sync_due():
                self._sync()

    def checkpoint(self) -> None:
        """Sign the current head now (after an fsync), unless it is already signed."""
        with self._locked():
            self._checkpoint_locked(self._now())

    def tick(self) -> None:
        """Checkpoint or fsync if due by the clock; the timer thread calls this."""
        with self._locked():
            now = self._now()
            if self._checkpoint_due(now):
                self._checkpoint_locked(now)
            elif self._sync_due():
                self._sync()

    def close(self) -> None:
        """Write a final checkpoint, fsync and close; further emits raise AuditError."""
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        with self._lock:
            if self._closed:
                return
            try:
                if not self._broken:
                    with flocked(self._fd):
                        self._catch_up()
                        self._checkpoint_locked(self._now())
            finally:
                self._closed = True
                os.close(self._fd)
                os.close(self._cp_fd)

    def __enter__(self) -> Self:
        """Use as a context manager that closes the log."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the log."""
        self.close()

    def __repr__(self) -> str:
        """Show the file and head, never the key."""
        return f"AuditLog({str(self.path)!r}, head seq {self._head.seq})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the thread lock and the file lock, caught up with other writers."""
        with self._lock:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            if self._broken:
                raise AuditError(f"audit log {self.path} is unusable after an earlier failure")
            try:
                with flocked(self._fd):
                    self._catch_up()
                    yield
            except OSError as exc:
                raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from None

    def _now(self) -> datetime:
        now = self._clock()
        if now.utcoffset() is None:
            raise ValueError("the audit clock must return timezone-aware datetimes")
        return now

    def _append(self, event: str, fields: dict[str, object], now: datetime) -> None:
        stamp = now.isoformat(timespec="milliseconds")
        try:
            line, head = make_entry(self._head, {"event": event, **fields}, stamp)
        except CustodyError as exc:
            raise ValueError(f"audit event {event!r} cannot be written: {exc}") from None
        self._write(self._fd, line, self._size, self.path)
        self._head, self._size, self._unsynced = head, self._size + len(line), True

    def _write(self, fd: int, data: bytes, size_before: int, path: Path) -> None:
        """One write of a whole line; on failure cut what was written and raise."""
        try:
            written = os.write(fd, data)
            problem = None if written == len(data) else f"short write ({written} of {len(data)})"
        except OSError as exc:
            problem = exc.strerror or str(exc)
        if problem is None:
            return
        try:
            os.ftruncate(fd, size_before)
        except OSError:
            self._broken = True
        raise AuditError(f"cannot write {path}: {problem}")

    def _checkpoint_due(self, now: datetime) -> bool:
        pending = self._head.seq - self._cp_seq
        if pending >= self._every_records:
            return True
        return pending > 0 and (now - self._cp_time).total_seconds() >= self._every_seconds

    def _sync_due(self) -> bool:
        if self._sync_every is None or not self._unsynced:
            return False
        return time.monotonic() - self._last_sync >= self._sync_every

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise AuditError(f"cannot fsync {self.path}: {exc.strerror or exc}") from None
        self._last_sync, self._unsynced = time.monotonic(), False

    def _checkpoint_locked(self, now: datetime) -> None:
        if self._head.seq <= self._cp_seq:
            self._cp_time = now
            return
        self._sync()  # the records first: a checkpoint never covers unsynced lines
        doc = make_checkpoint(self._head, now.isoformat(timespec="milliseconds"), self._key)
        size = os.fstat(self._cp_fd).st_size
        self._write(self._cp_fd, dumps_record(doc), size, self.checkpoints_path)
        try:
            os.fsync(self._cp_fd)
        except OSError as exc:
            raise AuditError(f"cannot fsync {self.checkpoints_path}: {exc.strerror}") from None
        self._cp_seq, self._cp_time = self._head.seq, now

    def _catch_up(self) -> None:
        """Read and check what other processes appended since our last write."""
        size = os.fstat(self._fd).st_size
        if size == self._size:
            return
        if size < self._size:
            self._broken = True
            raise AuditError(f"audit log {self.path} shrank from {self._size} to {size} bytes")
        data = os.pread(self._fd, size - self._size, self._size)
        *lines, torn = data.split(b"\n")
        head, offset = self._head, self._size
        for line in lines:
            try:
                head = link(parse_entry(line + b"\n"), head)
            except ChainError as exc:
                self._broken = True
                raise AuditError(f"audit log {self.path} at byte {offset}: {exc}") from None
            offset += len(line) + 1
        self._head, self._size = head, offset
        if torn:  # a writer in another process died mid-line (we hold the lock)
            os.ftruncate(self._fd, offset)
            self._append("audit_repaired", repair_fields("log", torn), self._now())

    def _run_timer(self) -> None:
        intervals = [self._every_seconds]
        if self._sync_every is not None:
            intervals.append(self._sync_every)
        period = max(_MIN_TICK_SECONDS, min(intervals))
        while not self._stop.wait(period):
            # A failure here reappears on the next emit or on close, which raise it.
            with contextlib.suppress(AuditError, OSError, ValueError):
                self.tick()


def bind_audit(log: AuditLog, **context: object) -> FilteringBoundLogger:
    """A structlog logger whose events land in ``log`` (no global configuration).

    ``bind_audit(log).info("login_failed", user="x", reason="bad_password")``
    is ``log.emit("login_failed", user="x", reason="bad_password")``; bound
    context becomes fields. The level is not recorded; ``exc_info`` and
    ``stack_info`` are dropped (tracebacks never go to the audit log).

    Args:
        log: The open audit log.
        **context: Fields bound to every event, e.g. ``session=…``.

    Returns:
        A bound logger; its calls raise as :meth:`AuditLog.emit` does.
    """
    logger = structlog.wrap_logger(
        log,
        processors=[_route_to_audit],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    return cast(FilteringBoundLogger, logger.bind(**context))


def _route_to_audit(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    """Final structlog processor: emit the event, then drop it from structlog."""
    if not isinstance(logger, AuditLog):
        raise TypeError("bind_audit() loggers wrap an AuditLog")
    fields = {k: v for k, v in event_dict.items() if k not in ("exc_info", "stack_info")}
    event = fields.pop("event", None)
    logger.emit(cast(str, event), **fields)
    raise structlog.DropEvent


__all__ = ["AuditError", "AuditLog", "bind_audit", "describe", "local_now"]
