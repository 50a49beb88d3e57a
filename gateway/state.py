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
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from gateway.errors import GatewayError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 10.0
"""How long a writer waits for another process's transaction before failing."""

ROLE_WARD = "ward"
"""A ward account uploads sealed batches for its tenant."""
ROLE_CONTRACTOR = "contractor"
"""A contractor account pulls its tenant's forwarded batches."""
ROLES = (ROLE_WARD, ROLE_CONTRACTOR)

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
_ACCOUNT_COLUMNS = (
    "name, role, tenant, public_key, key_fingerprint, password_hash, allow_cidrs, "
    "admin_locked, locked_until, failed_logins, created_at, updated_at"
)
_BATCH_COLUMNS = (
    "batch_id, tenant, uploader, file_name, size, sha256, state, received_at, updated_at, reason"
)


class BatchState(enum.Enum):
    """What is true of a batch at the gateway (the pipeline adds later states)."""

    RECEIVED = "received"
    """Completely uploaded, hashed and receipted."""


class StateError(GatewayError):
    """The state database refused an operation (exit 1)."""


class DuplicateAccountError(StateError):
    """An account of that name already exists."""


class DuplicateKeyError(StateError):
    """Another account already has that public key (a key identifies one account)."""


class UnknownAccountError(StateError):
    """No account of that name."""


class DuplicateBatchError(StateError):
    """A batch with that id exists already (in any tenant)."""


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


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""Sentinel for :meth:`StateStore.update_account`: leave this column as it is."""


class StateStore:
    """Accounts and batches in one database; safe to share between threads."""

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
        with self._tx() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")

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

    # -- batches ----------------------------------------------------------------------------

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
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _batch_row(batch),
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

    def list_batches(self, tenant: str | None = None) -> list[BatchRecord]:
        """Batches (of one tenant, or all), oldest first."""
        query = f"SELECT {_BATCH_COLUMNS} FROM batches"  # noqa: S608
        params: tuple[str, ...] = ()
        if tenant is not None:
            query += " WHERE tenant = ?"
            params = (tenant,)
        with self._tx() as conn:
            rows = conn.execute(query + " ORDER BY received_at, batch_id", params).fetchall()
        return [_batch(row) for row in rows]

    def set_batch_state(
        self, batch_id: str, state: BatchState, now: datetime, reason: str | None = None
    ) -> BatchRecord:
        """Move a batch to ``state`` (with an optional reason).

        Raises:
            StateError: no such batch.
        """
        with self._tx() as conn:
            cursor = conn.execute(
                "UPDATE batches SET state = ?, reason = ?, updated_at = ? WHERE batch_id = ?",
                (state.value, reason, _iso(now), batch_id),
            )
            if cursor.rowcount != 1:
                raise StateError(f"no batch {batch_id}")
            row = conn.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_id = ?",  # noqa: S608
                (batch_id,),
            ).fetchone()
        return _batch(row)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.isoformat()


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


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


def _batch(row: tuple[object, ...]) -> BatchRecord:
    (batch_id, tenant, uploader, file_name, size, sha256, state, received, updated, reason) = row
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
    )
