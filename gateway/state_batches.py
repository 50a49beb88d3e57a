"""The batch tables of the state database: part of :mod:`gateway.state` (import from there).

:class:`BatchTables` is mixed into :class:`gateway.state.StateStore`; it uses
the store's one connection and lock through ``_tx``. It also holds the
primitives both halves share: the :class:`StateError` family, the ``KEEP``
sentinel and the ISO 8601 time columns (naive datetimes are refused).

The ``batches`` table is the forwarding pipeline's durable queue. A batch's
state moves only by :meth:`BatchTables.transition` (checked against
:mod:`gateway.pipeline`), which in the same transaction appends the move to
``batch_events`` and sets the bookkeeping columns.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from gateway.errors import GatewayError
from gateway.pipeline import IN_PROGRESS, BatchState, event_between


class StateError(GatewayError):
    """The state database refused an operation (exit 1)."""


class DuplicateBatchError(StateError):
    """A batch with that id exists already (in any tenant)."""


class TransitionConflictError(StateError):
    """The batch is not in the state a transition expected (another worker moved it)."""


@dataclass(frozen=True)
class BatchRecord:
    """One batch as the gateway knows it."""

    batch_id: str
    tenant: str
    uploader: str
    file_name: str
    size: int
    sha256: str
    state: BatchState
    received_at: datetime
    updated_at: datetime
    reason: str | None = None
    attempts: int = 0
    """Delivery attempts started (FORWARDING entered)."""
    next_attempt_at: datetime | None = None
    """When the forwarder looks at the batch again (None: at once)."""
    cleared_at: datetime | None = None
    """When the gateway's inbox copy went (deleted, quarantined or moved to /outbox)."""
    status_seq: int = 0
    """The last event whose signed status record is in /receipts."""
    seq: int = 1
    """The number of the batch's latest event (its current state, ``updated_at``, ``reason``)."""


@dataclass(frozen=True)
class BatchEvent:
    """One state a batch entered: ``seq`` counts from 1 (RECEIVED) per batch."""

    batch_id: str
    seq: int
    state: BatchState
    at: datetime
    reason: str | None = None


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""Sentinel for :meth:`StateStore.update_account`: leave this column as it is."""


_BATCH_COLUMNS = (
    "batch_id, tenant, uploader, file_name, size, sha256, state, received_at, updated_at, reason, "
    "attempts, next_attempt_at, cleared_at, status_seq, seq"
)


class BatchTables:
    """Batch queries of :class:`gateway.state.StateStore` (it provides ``_tx``)."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StateStore

    def insert_batch(self, batch: BatchRecord) -> None:
        """Record a new batch.

        Raises:
            DuplicateBatchError: a batch with this id exists, in any tenant.
        """
        with self._tx() as conn:
            if conn.execute(
                "SELECT 1 FROM batches WHERE batch_id = ?", (batch.batch_id,)
            ).fetchone():
                raise DuplicateBatchError(f"batch {batch.batch_id} already exists")
            try:
                conn.execute(
                    f"INSERT INTO batches ({_BATCH_COLUMNS}) "  # noqa: S608 -- constant columns
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _batch_row(batch),
                )
                conn.execute(
                    "INSERT INTO batch_events (batch_id, seq, state, at, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        batch.batch_id,
                        batch.seq,
                        batch.state.value,
                        _iso(batch.updated_at),
                        batch.reason,
                    ),
                )
            except sqlite3.IntegrityError:  # lost a race with another process
                raise DuplicateBatchError(f"batch {batch.batch_id} already exists") from None

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with this id, or None."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
        return _batch(row) if row else None

    def list_batches(
        self, tenant: str | None = None, *, states: Collection[BatchState] | None = None
    ) -> list[BatchRecord]:
        """Batches (of one tenant, or all; in ``states`` only when given), oldest first."""
        query = f"SELECT {_BATCH_COLUMNS} FROM batches"  # noqa: S608
        where: list[str] = []
        params: tuple[str, ...] = ()
        if tenant is not None:
            where.append("tenant = ?")
            params = (tenant,)
        if states is not None:
            if not states:
                return []
            values = sorted({s.value for s in states})
            where.append(f"state IN ({', '.join('?' for _ in values)})")
            params += tuple(values)
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._tx() as conn:
            rows = conn.execute(query + " ORDER BY received_at, batch_id", params).fetchall()
        return [_batch(row) for row in rows]

    def set_batch_state(
        self, batch_id: str, state: BatchState, now: datetime, reason: str | None = None
    ) -> BatchRecord:
        """Set a batch's state without the pipeline's checks (administrative repair).

        The change is recorded in ``batch_events`` like any other; the pipeline
        itself moves batches only with :meth:`transition`.

        Raises:
            StateError: no such batch.
        """
        with self._tx() as conn:
            cursor = conn.execute(
                "UPDATE batches SET state = ?, reason = ?, updated_at = ?, seq = seq + 1 "
                "WHERE batch_id = ?",
                (state.value, reason, _iso(now), batch_id),
            )
            if cursor.rowcount != 1:
                raise StateError(f"no batch {batch_id}")
            conn.execute(
                "INSERT INTO batch_events (batch_id, seq, state, at, reason) "
                "SELECT batch_id, seq, state, updated_at, reason FROM batches WHERE batch_id = ?",
                (batch_id,),
            )
            row = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
        return _batch(row)

    # -- the pipeline ----------------------------------------------------------------------

    def transition(
        self,
        batch_id: str,
        expected_from: BatchState,
        to: BatchState,
        reason: str | None,
        now: datetime,
        *,
        attempts: int | _Keep = KEEP,
        next_attempt_at: datetime | _Keep | None = KEEP,
        cleared_at: datetime | _Keep | None = KEEP,
    ) -> tuple[BatchRecord, BatchEvent]:
        """Move a batch from ``expected_from`` to ``to``, with its bookkeeping, in one transaction.

        Appends the move to ``batch_events`` (the next ``seq``) and sets the given
        bookkeeping columns (``KEEP`` leaves one as it is).

        Returns:
            The batch as stored afterwards and the event just recorded.

        Raises:
            IllegalTransitionError: gateway.pipeline allows no such move.
            TransitionConflictError: the batch is not in ``expected_from``.
            StateError: no such batch.
        """
        event_between(expected_from, to)
        changes: dict[str, object] = {"state": to.value, "reason": reason, "updated_at": _iso(now)}
        changes.update(_bookkeeping(attempts, next_attempt_at, cleared_at))
        with self._tx() as conn:
            current = conn.execute(
                "SELECT state, seq FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if current is None:
                raise StateError(f"no batch {batch_id}")
            if current[0] != expected_from.value:
                raise TransitionConflictError(
                    f"batch {batch_id} is {current[0]}, not {expected_from.value}"
                )
            event = BatchEvent(batch_id, int(current[1]) + 1, to, now, reason)
            changes["seq"] = event.seq
            assignments = ", ".join(f"{column} = ?" for column in changes)
            conn.execute(
                f"UPDATE batches SET {assignments} WHERE batch_id = ?",  # noqa: S608 -- fixed
                (*changes.values(), batch_id),
            )
            conn.execute(
                "INSERT INTO batch_events (batch_id, seq, state, at, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, event.seq, to.value, _iso(now), reason),
            )
            row = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
        return _batch(row), event

    def update_batch(
        self,
        batch_id: str,
        *,
        attempts: int | _Keep = KEEP,
        next_attempt_at: datetime | _Keep | None = KEEP,
        cleared_at: datetime | _Keep | None = KEEP,
        status_seq: int | _Keep = KEEP,
    ) -> None:
        """Set bookkeeping columns without a state change (``status_seq`` only grows).

        Raises:
            StateError: no such batch.
        """
        changes = _bookkeeping(attempts, next_attempt_at, cleared_at)
        guard = ""
        params: tuple[object, ...] = ()
        if status_seq is not KEEP:
            changes["status_seq"] = status_seq
            guard, params = " AND status_seq <= ?", (status_seq,)
        if not changes:
            return
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._tx() as conn:
            if not conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone():
                raise StateError(f"no batch {batch_id}")
            conn.execute(
                f"UPDATE batches SET {assignments} WHERE batch_id = ?{guard}",  # noqa: S608
                (*changes.values(), batch_id, *params),
            )

    def events(self, batch_id: str) -> list[BatchEvent]:
        """Every state the batch entered, in order (``seq`` 1 first)."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT batch_id, seq, state, at, reason FROM batch_events "
                "WHERE batch_id = ? ORDER BY seq",
                (batch_id,),
            ).fetchall()
        return [
            BatchEvent(str(b), int(q), BatchState(s), datetime.fromisoformat(str(a)), r)
            for b, q, s, a, r in rows
        ]

    def pending_batches(self) -> list[BatchRecord]:
        """Batches the forwarder has work for: in progress, or done with an inbox copy left.

        Ordered by received time; the caller orders by ``next_attempt_at``.
        """
        marks = ", ".join("?" for _ in IN_PROGRESS)
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches "  # noqa: S608 -- constant columns
                f"WHERE state IN ({marks}) OR cleared_at IS NULL OR status_seq < seq "
                "ORDER BY received_at, batch_id",
                tuple(sorted(s.value for s in IN_PROGRESS)),
            ).fetchall()
        return [_batch(row) for row in rows]

    def add_incident(self, batch_id: str, kind: str, now: datetime, detail: str = "") -> bool:
        """Remember that incident ``kind`` was raised for a batch.

        Returns:
            True the first time for this (batch, kind); False when it was raised before.
        """
        with self._tx() as conn:
            if conn.execute(
                "SELECT 1 FROM batch_incidents WHERE batch_id = ? AND kind = ?", (batch_id, kind)
            ).fetchone():
                return False
            try:
                conn.execute(
                    "INSERT INTO batch_incidents (batch_id, kind, at, detail) VALUES (?, ?, ?, ?)",
                    (batch_id, kind, _iso(now), detail),
                )
            except sqlite3.IntegrityError:  # another process raised it just now
                return False
        return True

    def incidents(self, batch_id: str) -> list[str]:
        """The kinds of incident raised for a batch, in the order raised."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT kind FROM batch_incidents WHERE batch_id = ? ORDER BY at, kind",
                (batch_id,),
            ).fetchall()
        return [str(kind) for (kind,) in rows]


def _bookkeeping(
    attempts: int | _Keep,
    next_attempt_at: datetime | _Keep | None,
    cleared_at: datetime | _Keep | None,
) -> dict[str, object]:
    changes: dict[str, object] = {}
    if attempts is not KEEP:
        changes["attempts"] = attempts
    if next_attempt_at is not KEEP:
        changes["next_attempt_at"] = None if next_attempt_at is None else _iso(next_attempt_at)
    if cleared_at is not KEEP:
        changes["cleared_at"] = None if cleared_at is None else _iso(cleared_at)
    return changes


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.isoformat()


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _batch_row(batch: BatchRecord) -> tuple[object, ...]:
    return (
        batch.batch_id,
        batch.tenant,
        batch.uploader,
        batch.file_name,
        batch.size,
        batch.sha256,
        batch.state.value,
        _iso(batch.received_at),
        _iso(batch.updated_at),
        batch.reason,
        batch.attempts,
        None if batch.next_attempt_at is None else _iso(batch.next_attempt_at),
        None if batch.cleared_at is None else _iso(batch.cleared_at),
        batch.status_seq,
        batch.seq,
    )


def _batch(row: tuple[object, ...]) -> BatchRecord:
    (batch_id, tenant, uploader, file_name, size, sha256, state, received, updated, reason) = row[
        :10
    ]
    attempts, next_attempt, cleared, status_seq, seq = row[10:]
    return BatchRecord(
        batch_id=str(batch_id),
        tenant=str(tenant),
        uploader=str(uploader),
        file_name=str(file_name),
        size=int(str(size)),
        sha256=str(sha256),
        state=BatchState(state),
        received_at=datetime.fromisoformat(str(received)),
        updated_at=datetime.fromisoformat(str(updated)),
        reason=None if reason is None else str(reason),
        attempts=int(str(attempts)),
        next_attempt_at=_when(None if next_attempt is None else str(next_attempt)),
        cleared_at=_when(None if cleared is None else str(cleared)),
        status_seq=int(str(status_seq)),
        seq=int(str(seq)),
    )
