"""The gateway's state: accounts and batches, behind one module with portable SQL.

The embedded default is SQLite (WAL journal, so the CLI and a running server
can share the file); callers see only :class:`StateStore` and plain dataclasses,
so a PostgreSQL store can later replace it without touching them. The SQL
avoids SQLite-only features (no ``INSERT OR …``, no ``PRAGMA`` outside
:meth:`StateStore.open`); the schema version lives in a ``meta`` table.

One connection per store, guarded by a :class:`threading.Lock`: the SFTP
server calls it from many threads. Read-modify-write steps (failed-login
counting) run in one transaction, so they are atomic across processes too.
Times are stored as ISO 8601 text with their offset; naive datetimes are refused.

The ``batches`` table is the forwarding pipeline's durable queue: a batch's
state moves only by :meth:`StateStore.transition` (checked against
:mod:`gateway.pipeline`), which in the same transaction appends the move to
``batch_events`` (per-batch ``seq`` 1, 2, …; ``seq`` 1 is RECEIVED, written
with the batch) and sets the bookkeeping columns (``attempts``,
``next_attempt_at``, ``cleared_at``). ``batch_incidents`` remembers which
incidents were raised for a batch, so each is raised once. The batch queries
live in :mod:`gateway.state_batches` (mixed into :class:`StateStore`); callers
import everything from here.

The print site's custody records (the staff roster, openings, the print log
and erasures) live in :mod:`gateway.state_custody` (mixed in the same way).

Schema history: version 1 (accounts, batches) was created by the drop service;
version 2 adds the pipeline's columns and tables; version 3 the custody tables.
:meth:`StateStore.open` migrates an older database in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from gateway.pipeline import BatchState
from gateway.state_batches import (
    KEEP,
    BatchEvent,
    BatchRecord,
    BatchTables,
    DuplicateBatchError,
    StateError,
    TransitionConflictError,
    _iso,
    _Keep,
    _when,
)
from gateway.state_custody import (
    CUSTODY_MIGRATION,
    ITEM_KINDS,
    OPEN_VIA,
    STAFF_ROLES,
    CustodyTables,
    DuplicateStaffError,
    ErasureFinishedError,
    ErasureItem,
    ErasureRecord,
    OpenRecord,
    PrintRecord,
    ReopenReasonRequiredError,
    ReprintReasonRequiredError,
    StaffMember,
    UnknownStaffError,
)

__all__ = [
    "ITEM_KINDS",
    "KEEP",
    "OPEN_VIA",
    "ROLES",
    "ROLE_CONTRACTOR",
    "ROLE_FORWARDER",
    "ROLE_WARD",
    "SCHEMA_VERSION",
    "STAFF_ROLES",
    "Account",
    "BatchEvent",
    "BatchRecord",
    "BatchState",
    "DuplicateAccountError",
    "DuplicateBatchError",
    "DuplicateKeyError",
    "DuplicateStaffError",
    "ErasureFinishedError",
    "ErasureItem",
    "ErasureRecord",
    "OpenRecord",
    "PrintRecord",
    "ReopenReasonRequiredError",
    "ReprintReasonRequiredError",
    "StaffMember",
    "StateError",
    "StateStore",
    "TransitionConflictError",
    "UnknownAccountError",
    "UnknownStaffError",
]

SCHEMA_VERSION = 3
BUSY_TIMEOUT_SECONDS = 10.0
"""How long a writer waits for another process's transaction before failing."""

ROLE_WARD = "ward"
"""A ward account uploads sealed batches for its tenant."""
ROLE_CONTRACTOR = "contractor"
"""A contractor account pulls its tenant's forwarded batches."""
ROLE_FORWARDER = "forwarder"
"""A forwarder account (at the print site) receives another gateway's batches: key-only login."""
ROLES = (ROLE_WARD, ROLE_CONTRACTOR, ROLE_FORWARDER)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        tenant TEXT NOT NULL,
        public_key TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        allow_cidrs TEXT NOT NULL,
        admin_locked INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        uploader TEXT NOT NULL,
        file_name TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        reason TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches (tenant)",
)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (  # -> 2: the forwarding pipeline
        "ALTER TABLE batches ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE batches ADD COLUMN next_attempt_at TEXT",
        "ALTER TABLE batches ADD COLUMN cleared_at TEXT",
        "ALTER TABLE batches ADD COLUMN status_seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE batches ADD COLUMN seq INTEGER NOT NULL DEFAULT 1",
        """CREATE TABLE batch_events (
            batch_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            at TEXT NOT NULL,
            reason TEXT,
            PRIMARY KEY (batch_id, seq)
        )""",
        """CREATE TABLE batch_incidents (
            batch_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            detail TEXT,
            PRIMARY KEY (batch_id, kind)
        )""",
        "INSERT INTO batch_events (batch_id, seq, state, at, reason) "
        "SELECT batch_id, 1, state, updated_at, reason FROM batches",
        "CREATE INDEX batches_by_state ON batches (state)",
    ),
    2: CUSTODY_MIGRATION,  # -> 3: the print site's custody records
}
"""Statements taking a database from version N to N+1."""
_ACCOUNT_COLUMNS = (
    "name, role, tenant, public_key, key_fingerprint, password_hash, allow_cidrs, "
    "admin_locked, locked_until, failed_logins, created_at, updated_at"
)


class DuplicateAccountError(StateError):
    """An account of that name already exists."""


class DuplicateKeyError(StateError):
    """Another account already has that public key (a key identifies one account)."""


class UnknownAccountError(StateError):
    """No account of that name."""


@dataclass(frozen=True)
class Account:
    """One login account. ``password_hash`` is an argon2id PHC string, kept out of repr."""

    name: str
    role: str
    tenant: str
    public_key: str
    key_fingerprint: str
    password_hash: str = field(repr=False)
    allow_cidrs: tuple[str, ...]
    admin_locked: bool
    locked_until: datetime | None
    failed_logins: int
    created_at: datetime
    updated_at: datetime

    def locked_at(self, now: datetime) -> bool:
        """Whether a failed-login lockout is in force at ``now``."""
        return self.locked_until is not None and now < self.locked_until


class StateStore(BatchTables, CustodyTables):
    """Accounts, batches and custody records in one database; safe to share between threads.

    The batch and pipeline queries (``insert_batch``, ``transition``, …) come
    from :class:`gateway.state_batches.BatchTables`; the roster, openings, print
    log and erasures (``add_staff``, ``add_print``, …) from
    :class:`gateway.state_custody.CustodyTables`.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wrap an open connection; use :meth:`open` instead."""
        self._conn = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path, *, create: bool = True) -> StateStore:
        """Open (and with ``create``, create) the database at ``path`` with its schema.

        A new database file is created mode 0600: it holds password hashes.

        Raises:
            StateError: the file is missing and ``create`` is false, it is not a
                database of this schema, or it cannot be opened.
        """
        if not path.exists():
            if not create:
                raise StateError(f"no state database at {path}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from None
        store = cls(conn, path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            store._migrate()
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"{path} is not a usable state database: {exc}") from None
        return store

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the store lock: committed on success, rolled back on error.

        Raises:
            StateError: the database failed (locked by another process for longer
                than BUSY_TIMEOUT_SECONDS, disk full, corrupt …).
        """
        with self._lock:
            try:
                with self._conn:
                    yield self._conn
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from None

    def _migrate(self) -> None:
        """Create the version-1 schema if missing, then apply every later migration.

        One ``BEGIN IMMEDIATE`` transaction: two processes opening an old database
        at once migrate it once (the second waits, then finds it current).
        """
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
                    row = ("1",)
                version = int(row[0]) if str(row[0]).isdigit() else -1
                if not 1 <= version <= SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {row[0]}, expected {SCHEMA_VERSION}"
                    )
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    # -- accounts ---------------------------------------------------------------------------

    def add_account(self, account: Account) -> None:
        """Insert a new account.

        Raises:
            DuplicateAccountError: the name is taken.
            DuplicateKeyError: another account has the same public key.
        """
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE name = ?", (account.name,)).fetchone():
                raise DuplicateAccountError(f"account {account.name!r} already exists")
            holder = conn.execute(
                "SELECT name FROM accounts WHERE key_fingerprint = ?", (account.key_fingerprint,)
            ).fetchone()
            if holder:
                raise DuplicateKeyError(
                    f"public key {account.key_fingerprint} already belongs to account {holder[0]!r}"
                )
            try:
                conn.execute(
                    f"INSERT INTO accounts ({_ACCOUNT_COLUMNS}) "  # noqa: S608 -- constant columns
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _account_row(account),
                )
            except sqlite3.IntegrityError:  # lost a race with another process
                raise DuplicateAccountError(
                    f"account {account.name!r} or its public key already exists"
                ) from None

    def get_account(self, name: str) -> Account | None:
        """The account called ``name``, or None."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _account(row) if row else None

    def find_account_by_fingerprint(self, key_fingerprint: str) -> Account | None:
        """The account whose public key has this ``SHA256:`` fingerprint, or None."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE key_fingerprint = ?",  # noqa: S608
                (key_fingerprint,),
            ).fetchone()
        return _account(row) if row else None

    def list_accounts(self) -> list[Account]:
        """Every account, ordered by name."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY name"  # noqa: S608
            ).fetchall()
        return [_account(row) for row in rows]

    def update_account(
        self,
        name: str,
        now: datetime,
        *,
        password_hash: str | _Keep = KEEP,
        admin_locked: bool | _Keep = KEEP,
        locked_until: datetime | _Keep | None = KEEP,
        failed_logins: int | _Keep = KEEP,
    ) -> Account:
        """Change the given columns of an account (``KEEP`` leaves one as it is).

        Returns:
            The account as stored afterwards.

        Raises:
            UnknownAccountError: no such account.
        """
        changes: dict[str, object] = {"updated_at": _iso(now)}
        if password_hash is not KEEP:
            changes["password_hash"] = password_hash
        if admin_locked is not KEEP:
            changes["admin_locked"] = int(admin_locked)
        if locked_until is not KEEP:
            changes["locked_until"] = None if locked_until is None else _iso(locked_until)
        if failed_logins is not KEEP:
            changes["failed_logins"] = failed_logins
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._tx() as conn:
            cursor = conn.execute(
                f"UPDATE accounts SET {assignments} WHERE name = ?",  # noqa: S608 -- fixed columns
                (*changes.values(), name),
            )
            if cursor.rowcount != 1:
                raise UnknownAccountError(f"no account {name!r}")
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
        return _account(row)

    def remove_account(self, name: str) -> Account:
        """Delete an account and return what it was.

        Raises:
            UnknownAccountError: no such account.
        """
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name = ?",  # noqa: S608
                (name,),
            ).fetchone()
            if row is None:
                raise UnknownAccountError(f"no account {name!r}")
            conn.execute("DELETE FROM accounts WHERE name = ?", (name,))
        return _account(row)

    def record_failure(
        self, name: str, now: datetime, max_failures: int, lockout: timedelta
    ) -> datetime | None:
        """Count one failed login; at ``max_failures`` lock the account until ``now + lockout``.

        Locking resets the counter, so after the lock expires the account again
        has ``max_failures`` attempts. The count and the lock are one transaction.

        Returns:
            The new lock-until time when this failure locked the account, else None
            (also None for an unknown name).
        """
        with self._tx() as conn:
            cursor = conn.execute(
                "UPDATE accounts SET failed_logins = failed_logins + 1, updated_at = ? "
                "WHERE name = ?",
                (_iso(now), name),
            )
            if cursor.rowcount != 1:
                return None
            (count,) = conn.execute(
                "SELECT failed_logins FROM accounts WHERE name = ?", (name,)
            ).fetchone()
            if count < max_failures:
                return None
            until = now + lockout
            conn.execute(
                "UPDATE accounts SET failed_logins = 0, locked_until = ? WHERE name = ?",
                (_iso(until), name),
            )
        return until

    def reset_failures(self, name: str, now: datetime | None = None) -> None:
        """Clear the failed-login count and any lockout (not an admin lock); ``now`` stamps it."""
        stamp = _iso(now or datetime.now().astimezone())
        with self._tx() as conn:
            conn.execute(
                "UPDATE accounts SET failed_logins = 0, locked_until = NULL, updated_at = ? "
                "WHERE name = ?",
                (stamp, name),
            )


def _account_row(account: Account) -> tuple[object, ...]:
    return (
        account.name,
        account.role,
        account.tenant,
        account.public_key,
        account.key_fingerprint,
        account.password_hash,
        json.dumps(list(account.allow_cidrs)),
        int(account.admin_locked),
        None if account.locked_until is None else _iso(account.locked_until),
        account.failed_logins,
        _iso(account.created_at),
        _iso(account.updated_at),
    )


def _account(row: tuple[object, ...]) -> Account:
    (name, role, tenant, public_key, fp, pw_hash, allow, admin, until, failed, created, updated) = (
        row
    )
    return Account(
        name=str(name),
        role=str(role),
        tenant=str(tenant),
        public_key=str(public_key),
        key_fingerprint=str(fp),
        password_hash=str(pw_hash),
        allow_cidrs=tuple(json.loads(str(allow))),
        admin_locked=bool(admin),
        locked_until=_when(None if until is None else str(until)),
        failed_logins=int(str(failed)),
        created_at=datetime.fromisoformat(str(created)),
        updated_at=datetime.fromisoformat(str(updated)),
    )
