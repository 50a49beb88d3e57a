"""The print-site custody tables of the state database: part of :mod:`gateway.state`.

:class:`CustodyTables` is mixed into :class:`gateway.state.StateStore` (like
:class:`gateway.state_batches.BatchTables`) and uses the store's one connection
and lock through ``_tx``. Schema version 3 adds its four tables
(:data:`CUSTODY_MIGRATION`):

- ``staff`` — the roster of 取扱責任者 (``manager``) and 取扱者 (``handler``):
  each with an argon2id password hash of their own; staff are disabled, never deleted,
  so the roster keeps everyone who ever handled a batch;
- ``custody_opens`` — who opened which batch, when, how the passphrase
  arrived, the notice serial and (for a second or later opening) why;
- ``custody_prints`` — the print log; ``occurrence`` counts the prints of one
  (batch, file) from 1 and is computed in the inserting transaction, so two
  processes printing at once cannot both record a "first" print, and a reprint
  without a reason is refused there (:class:`ReprintReasonRequiredError`);
- ``custody_erasures`` — one erasure per batch, started (its items with the
  sizes and SHA-256 values taken *before* anything was erased, and the
  overwrite method) and then finished (with the certificate's path). Starting
  again while one is unfinished returns the recorded one unchanged, so an
  interrupted ``erase`` resumes with the original hashes and method. The
  ``items`` column holds ``{"method": …, "items": [...]}`` (a bare list of
  items, as the first version wrote, has no method). Once an erasure of a batch
  is recorded, no opening of it is (:class:`BatchErasedError`).

Each read-then-write (counting occurrences, checking for an erasure) runs in
one writer transaction. Records come back oldest first: by their time, then in
the order recorded. Times are stored as ISO 8601 text with their offset;
naive datetimes are refused.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from custody.erasure_certificate import ITEM_KINDS as ITEM_KINDS  # re-exported: what an item was
from gateway.i18n import _
from gateway.state_batches import StateError, _iso, _when
from gateway.state_custody_errors import BatchErasedError as BatchErasedError
from gateway.state_custody_errors import DuplicateStaffError as DuplicateStaffError
from gateway.state_custody_errors import ErasureFinishedError as ErasureFinishedError
from gateway.state_custody_errors import ReopenReasonRequiredError as ReopenReasonRequiredError
from gateway.state_custody_errors import ReprintReasonRequiredError as ReprintReasonRequiredError
from gateway.state_custody_errors import UnknownStaffError as UnknownStaffError

STAFF_ROLES = ("manager", "handler")
"""取扱責任者 (may approve an erasure) and 取扱者."""

OPEN_VIA = ("hand", "registered-mail", "phone")
"""How the passphrase notice reached the print site."""

_R = TypeVar("_R")

CUSTODY_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE staff (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        full_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        active INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE custody_opens (
        batch_id TEXT NOT NULL,
        occurrence INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        handler TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        via TEXT NOT NULL,
        notice_serial TEXT NOT NULL,
        reason TEXT,
        directory TEXT NOT NULL,
        files TEXT NOT NULL,
        recorded INTEGER NOT NULL UNIQUE,
        PRIMARY KEY (batch_id, occurrence)
    )""",
    """CREATE TABLE custody_prints (
        batch_id TEXT NOT NULL,
        file_name TEXT NOT NULL,
        occurrence INTEGER NOT NULL,
        printer TEXT NOT NULL,
        sheets INTEGER NOT NULL,
        computer TEXT NOT NULL,
        printed_at TEXT NOT NULL,
        handler TEXT NOT NULL,
        reason TEXT,
        recorded INTEGER NOT NULL UNIQUE,
        PRIMARY KEY (batch_id, file_name, occurrence)
    )""",
    """CREATE TABLE custody_erasures (
        batch_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        channel TEXT NOT NULL,
        handler TEXT NOT NULL,
        approver TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        items TEXT NOT NULL,
        certificate TEXT
    )""",
)
"""Statements taking a version-2 database to version 3 (run in the migration's transaction)."""


@dataclass(frozen=True)
class StaffMember:
    """One person on the roster. ``password_hash`` is an argon2id PHC string, kept out of repr."""

    name: str
    role: str
    full_name: str
    password_hash: str = field(repr=False)
    active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class OpenRecord:
    """One opening of a batch at the print site (the first has ``reason`` None)."""

    batch_id: str
    tenant: str
    handler: str
    opened_at: datetime
    via: str
    """How the passphrase arrived: one of :data:`OPEN_VIA`."""
    notice_serial: str
    reason: str | None
    directory: str
    files: tuple[str, ...]
    """The manifest's file names, as released into ``directory``."""


@dataclass(frozen=True)
class PrintRecord:
    """One print-log entry; ``occurrence`` 1 is the first print of (batch, file)."""

    batch_id: str
    file_name: str
    printer: str
    sheets: int
    computer: str
    printed_at: datetime
    handler: str
    reason: str | None
    occurrence: int


@dataclass(frozen=True)
class ErasureItem:
    """One copy an erasure removes, measured before it was touched."""

    kind: str
    """One of :data:`ITEM_KINDS`."""
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ErasureRecord:
    """One batch's erasure: started, then finished with a certificate."""

    batch_id: str
    tenant: str
    channel: str
    handler: str
    approver: str
    started_at: datetime
    finished_at: datetime | None
    items: tuple[ErasureItem, ...]
    certificate: str | None
    """The path of the issued certificate (JSON) once finished."""
    method: str | None = None
    """The certificate's ``method`` (overwrite passes), fixed when the erasure started;
    None for an erasure recorded before the method was."""


_STAFF_COLUMNS = "name, role, full_name, password_hash, active, created_at, updated_at"
_OPEN_COLUMNS = "batch_id, tenant, handler, opened_at, via, notice_serial, reason, directory, files"
_PRINT_COLUMNS = (
    "batch_id, file_name, printer, sheets, computer, printed_at, handler, reason, occurrence"
)
_ERASURE_COLUMNS = (
    "batch_id, tenant, channel, handler, approver, started_at, finished_at, items, certificate"
)


class CustodyTables:
    """Custody queries of :class:`gateway.state.StateStore` (it provides ``_tx``)."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # provided by StateStore

    # -- staff ------------------------------------------------------------------------------

    def add_staff(self, member: StaffMember) -> None:
        """Insert a new staff member.

        Raises:
            DuplicateStaffError: the name is taken (also by a disabled member).
        """
        with self._tx() as conn:
            _write_lock(conn)
            if conn.execute("SELECT 1 FROM staff WHERE name = ?", (member.name,)).fetchone():
                raise DuplicateStaffError(
                    _("staff member {name} already exists").format(name=repr(member.name))
                )
            try:
                conn.execute(
                    f"INSERT INTO staff ({_STAFF_COLUMNS}) "  # noqa: S608 -- constant columns
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        member.name, member.role, member.full_name, member.password_hash,
                        int(member.active), _iso(member.created_at), _iso(member.updated_at),
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError:  # lost a race with another process
                raise DuplicateStaffError(
                    _("staff member {name} already exists").format(name=repr(member.name))
                ) from None

    def get_staff(self, name: str) -> StaffMember | None:
        """The staff member called ``name``, or None."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_STAFF_COLUMNS} FROM staff WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _staff(row) if row else None

    def list_staff(self) -> builtins.list[StaffMember]:
        """Every staff member, active or not, ordered by name."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_STAFF_COLUMNS} FROM staff ORDER BY name"  # noqa: S608
            ).fetchall()
        return [_staff(row) for row in rows]

    def set_staff_active(self, name: str, active: bool, now: datetime) -> StaffMember:
        """Enable or disable a staff member.

        Returns:
            The member as stored afterwards.

        Raises:
            UnknownStaffError: no such member.
        """
        return self._update_staff(name, now, "active", int(active))

    def set_staff_password_hash(self, name: str, password_hash: str, now: datetime) -> None:
        """Replace a staff member's password hash.

        Raises:
            UnknownStaffError: no such member.
        """
        self._update_staff(name, now, "password_hash", password_hash)

    def _update_staff(self, name: str, now: datetime, column: str, value: object) -> StaffMember:
        with self._tx() as conn:
            cursor = conn.execute(
                f"UPDATE staff SET {column} = ?, updated_at = ? WHERE name = ?",  # noqa: S608
                (value, _iso(now), name),
            )
            if cursor.rowcount != 1:
                raise UnknownStaffError(_("no staff member {name}").format(name=repr(name)))
            row = conn.execute(
                f"SELECT {_STAFF_COLUMNS} FROM staff WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _staff(row)

    # -- openings ---------------------------------------------------------------------------

    def add_open(self, record: OpenRecord) -> int:
        """Record an opening of a batch.

        Returns:
            Its occurrence: 1 for the batch's first opening, 2 for the next, …

        Raises:
            ReopenReasonRequiredError: the batch was opened before and
                ``record.reason`` is empty (nothing is recorded).
            BatchErasedError: an erasure of the batch is recorded (nothing is recorded).
        """
        with self._tx() as conn:
            _write_lock(conn)
            erasing = conn.execute(
                "SELECT 1 FROM custody_erasures WHERE batch_id = ?", (record.batch_id,)
            ).fetchone()
            if erasing is not None:
                raise BatchErasedError(record.batch_id)
            (previous,) = conn.execute(
                "SELECT COUNT(*) FROM custody_opens WHERE batch_id = ?", (record.batch_id,)
            ).fetchone()
            previous = int(previous)
            if previous and not _given(record.reason):
                raise ReopenReasonRequiredError(record.batch_id, previous)
            conn.execute(
                f"INSERT INTO custody_opens ({_OPEN_COLUMNS}, occurrence, recorded) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.batch_id, record.tenant, record.handler, _iso(record.opened_at),
                    record.via, record.notice_serial, record.reason, record.directory,
                    json.dumps(list(record.files), ensure_ascii=False),
                    previous + 1, _next_recorded(conn, "custody_opens"),
                ),
            )  # fmt: skip
        return previous + 1

    def opens(self, batch_id: str | None = None) -> builtins.list[OpenRecord]:
        """Openings (of one batch, or all), oldest first."""
        rows = self._select("custody_opens", _OPEN_COLUMNS, batch_id)
        return _oldest_first([_open(row) for row in rows], lambda r: r.opened_at)

    # -- the print log ----------------------------------------------------------------------

    def add_print(
        self,
        batch_id: str,
        file_name: str,
        printer: str,
        sheets: int,
        computer: str,
        printed_at: datetime,
        handler: str,
        reason: str | None,
    ) -> PrintRecord:
        """Append a print-log entry; its occurrence is counted in the same transaction.

        Returns:
            The entry as recorded (``occurrence`` 1 for the first print of the file).

        Raises:
            ReprintReasonRequiredError: the file was printed before and ``reason``
                is empty (nothing is recorded).
        """
        with self._tx() as conn:
            _write_lock(conn)
            (previous,) = conn.execute(
                "SELECT COUNT(*) FROM custody_prints WHERE batch_id = ? AND file_name = ?",
                (batch_id, file_name),
            ).fetchone()
            previous = int(previous)
            if previous and not _given(reason):
                raise ReprintReasonRequiredError(batch_id, file_name, previous)
            record = PrintRecord(
                batch_id, file_name, printer, sheets, computer, printed_at, handler, reason,
                previous + 1,
            )  # fmt: skip
            conn.execute(
                f"INSERT INTO custody_prints ({_PRINT_COLUMNS}, recorded) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id, file_name, printer, sheets, computer, _iso(printed_at), handler,
                    reason, record.occurrence, _next_recorded(conn, "custody_prints"),
                ),
            )  # fmt: skip
        return record

    def prints(self, batch_id: str | None = None) -> builtins.list[PrintRecord]:
        """Print-log entries (of one batch, or all), oldest first."""
        rows = self._select("custody_prints", _PRINT_COLUMNS, batch_id)
        return _oldest_first([_print(row) for row in rows], lambda r: r.printed_at)

    # -- erasures ---------------------------------------------------------------------------

    def start_erasure(self, record: ErasureRecord) -> ErasureRecord:
        """Record that a batch's erasure started, with every item measured beforehand.

        Returns:
            ``record`` as stored; if an unfinished erasure of the batch exists,
            that one, unchanged (the caller resumes it with its original items).

        Raises:
            ErasureFinishedError: the batch's erasure has finished already.
        """
        with self._tx() as conn:
            _write_lock(conn)
            row = conn.execute(
                f"SELECT {_ERASURE_COLUMNS} FROM custody_erasures WHERE batch_id = ?",  # noqa: S608
                (record.batch_id,),
            ).fetchone()
            if row is not None:
                existing = _erasure(row)
                if existing.finished_at is not None:
                    raise ErasureFinishedError(existing)
                return existing
            conn.execute(
                f"INSERT INTO custody_erasures ({_ERASURE_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, NULL)",
                (
                    record.batch_id, record.tenant, record.channel, record.handler,
                    record.approver, _iso(record.started_at),
                    _items_json(record.items, record.method),
                ),
            )  # fmt: skip
        return ErasureRecord(
            record.batch_id, record.tenant, record.channel, record.handler, record.approver,
            record.started_at, None, record.items, None, record.method,
        )  # fmt: skip

    def finish_erasure(
        self, batch_id: str, finished_at: datetime, certificate: str
    ) -> ErasureRecord:
        """Mark a started erasure finished, with the path of its certificate.

        Finishing again with the same certificate returns the record unchanged.

        Returns:
            The erasure as stored afterwards.

        Raises:
            StateError: no erasure of the batch was started.
            ErasureFinishedError: it finished already with another certificate.
        """
        with self._tx() as conn:
            _write_lock(conn)
            row = conn.execute(
                f"SELECT {_ERASURE_COLUMNS} FROM custody_erasures WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
            if row is None:
                raise StateError(
                    _("no erasure of batch {batch} was started").format(batch=batch_id)
                )
            existing = _erasure(row)
            if existing.finished_at is not None:
                if existing.certificate == certificate:
                    return existing
                raise ErasureFinishedError(existing)
            conn.execute(
                "UPDATE custody_erasures SET finished_at = ?, certificate = ? WHERE batch_id = ?",
                (_iso(finished_at), certificate, batch_id),
            )
            row = conn.execute(
                f"SELECT {_ERASURE_COLUMNS} FROM custody_erasures WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
        return _erasure(row)

    def get_erasure(self, batch_id: str) -> ErasureRecord | None:
        """The batch's erasure (started or finished), or None."""
        rows = self._select("custody_erasures", _ERASURE_COLUMNS, batch_id)
        return _erasure(rows[0]) if rows else None

    def erasures(self) -> builtins.list[ErasureRecord]:
        """Every erasure, oldest start first."""
        rows = self._select("custody_erasures", _ERASURE_COLUMNS, None)
        return _oldest_first([_erasure(row) for row in rows], lambda r: r.started_at)

    # -- internals --------------------------------------------------------------------------

    def _select(
        self, table: str, columns: str, batch_id: str | None
    ) -> builtins.list[tuple[object, ...]]:
        query = f"SELECT {columns} FROM {table}"  # noqa: S608 -- constant names
        params: tuple[str, ...] = ()
        if batch_id is not None:
            query += " WHERE batch_id = ?"
            params = (batch_id,)
        order = " ORDER BY batch_id" if table == "custody_erasures" else " ORDER BY recorded"
        with self._tx() as conn:
            rows: builtins.list[tuple[object, ...]] = conn.execute(query + order, params).fetchall()
        return rows


def _write_lock(conn: sqlite3.Connection) -> None:
    """Begin the transaction as a writer, so what it reads stays true until it commits.

    SQLite would otherwise read outside the transaction and begin it only at the
    INSERT (a PostgreSQL store would lock the rows it counts instead).
    """
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")


def _given(reason: str | None) -> bool:
    return reason is not None and bool(reason.strip())


def _next_recorded(conn: sqlite3.Connection, table: str) -> int:
    """The next value of a table's ``recorded`` column (its insertion order), in the caller's tx."""
    (last,) = conn.execute(f"SELECT MAX(recorded) FROM {table}").fetchone()  # noqa: S608
    return 1 if last is None else int(last) + 1


def _oldest_first(records: builtins.list[_R], when: Callable[[_R], datetime]) -> builtins.list[_R]:
    """Sort by the instant (offsets may differ), keeping insertion order for equal times."""
    return sorted(records, key=when)


def _items_json(items: tuple[ErasureItem, ...], method: str | None) -> str:
    listed = [{"kind": i.kind, "path": i.path, "size": i.size, "sha256": i.sha256} for i in items]
    return json.dumps({"method": method, "items": listed}, ensure_ascii=False)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _time(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def _staff(row: tuple[object, ...]) -> StaffMember:
    name, role, full_name, pw_hash, active, created, updated = row
    return StaffMember(
        str(name), str(role), str(full_name), str(pw_hash), bool(active), _time(created),
        _time(updated),
    )  # fmt: skip


def _open(row: tuple[object, ...]) -> OpenRecord:
    batch_id, tenant, handler, opened_at, via, serial, reason, directory, files = row
    return OpenRecord(
        str(batch_id), str(tenant), str(handler), _time(opened_at), str(via), str(serial),
        _text(reason), str(directory), tuple(str(f) for f in json.loads(str(files))),
    )  # fmt: skip


def _print(row: tuple[object, ...]) -> PrintRecord:
    batch_id, file_name, printer, sheets, computer, printed_at, handler, reason, occurrence = row
    return PrintRecord(
        str(batch_id), str(file_name), str(printer), int(str(sheets)), str(computer),
        _time(printed_at), str(handler), _text(reason), int(str(occurrence)),
    )  # fmt: skip


def _erasure(row: tuple[object, ...]) -> ErasureRecord:
    batch_id, tenant, channel, handler, approver, started, finished, items, certificate = row
    stored = json.loads(str(items))
    method, listed = (
        (None, stored) if isinstance(stored, list) else (stored["method"], stored["items"])
    )
    parsed = tuple(
        ErasureItem(str(i["kind"]), str(i["path"]), int(i["size"]), str(i["sha256"]))
        for i in listed
    )
    return ErasureRecord(
        str(batch_id), str(tenant), str(channel), str(handler), str(approver), _time(started),
        _when(_text(finished)), parsed, _text(certificate), _text(method),
    )  # fmt: skip
